"""Generator and discriminator families. A generator maps (z, labels) to samples; a
discriminator maps (samples, labels) to raw scores of shape (N,), never through a sigmoid."""
