"""Data sources (toy 2D, embedded digits, torchvision sets, image folders) and the data module."""

from gan_runner.data.module import GANDataModule, TensorData

__all__ = ["GANDataModule", "TensorData"]
