"""Loss terms of either player beside the adversarial objective (AC-GAN's classes, InfoGAN's
mutual information, feature matching, historical averaging...): one class and one YAML each."""
