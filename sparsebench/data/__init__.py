"""LightningDataModules; each dataset yaml in conf/dataset/ targets one of these classes."""

from sparsebench.data.arrays import DigitsDataModule, MNIST1DDataModule, SyntheticDataModule
from sparsebench.data.base import SparseBenchDataModule, TensorDataModule
from sparsebench.data.vision import ImageFolderDataModule, TorchvisionDataModule

__all__ = [
    "DigitsDataModule",
    "ImageFolderDataModule",
    "MNIST1DDataModule",
    "SparseBenchDataModule",
    "SyntheticDataModule",
    "TensorDataModule",
    "TorchvisionDataModule",
]
