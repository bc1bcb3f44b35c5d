"""Games: one file per GAN family, each saying what its phases compute (ARCHITECTURE.md)."""
