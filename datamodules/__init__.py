"""LightningDataModules for MNIST, CIFAR-10 and CelebA, sharing one base class (``base.ImageDataModule``).

Each serves train/val/test/predict loaders from torchvision's on-disk layout in the value range its model needs, and
refuses missing, altered or corrupt files before training with an error naming the file and the fix. Why the data
path is built this way (integrity, restricted unpickling, in-memory splits, exact resume): docs/design_data_networks.md.
"""

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
