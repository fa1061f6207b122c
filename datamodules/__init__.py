"""LightningDataModules for MNIST, CIFAR-10 and CelebA, sharing one base class."""

from datamodules.base import (
    DATA_DIR_ENV,
    VALUE_RANGES,
    DatasetIntegrityError,
    DatasetNotFoundError,
    ImageDataModule,
    UnreadableDataError,
    default_data_dir,
)
from datamodules.celeba import CelebADataModule
from datamodules.cifar10 import CIFAR10DataModule
from datamodules.mnist import MNISTDataModule

__all__ = [
    "DATA_DIR_ENV",
    "CIFAR10DataModule",
    "CelebADataModule",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "ImageDataModule",
    "MNISTDataModule",
    "UnreadableDataError",
    "VALUE_RANGES",
    "default_data_dir",
]
