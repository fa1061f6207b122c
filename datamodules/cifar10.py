"""CIFAR-10: 50k/10k colour 32x32 images in 10 classes."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from datamodules.base import ImageDataModule


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10 with its md5 check left to the datamodule, which may allow partial copies."""

    def _check_integrity(self) -> bool:
        return True


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10; ``augment: basic`` is the standard random crop (padding 4) + horizontal flip."""

    dataset_name = "CIFAR-10"
    channels = 3
    native_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    full_sizes = {"train": 50000, "test": 10000}

    @property
    def num_classes(self) -> int:
        return 10

    def required_files(self) -> dict[str, str | None]:
        files = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
        return {f"{CIFAR10.base_folder}/{name}": md5 for name, md5 in files}

    def download_dataset(self) -> None:
        CIFAR10(self.data_dir, download=True)

    def make_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return _CIFAR10(self.data_dir, train=train, transform=transform, download=False)

    def uint8_images(self, dataset: CIFAR10) -> tuple[Tensor, Tensor]:
        # torchvision keeps CIFAR-10 in memory as one (N, H, W, C) uint8 array
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2), torch.tensor(dataset.targets)

    def basic_augmentations(self) -> list[v2.Transform]:
        return [v2.RandomCrop(self.image_size, padding=self.image_size // 8), v2.RandomHorizontalFlip()]
