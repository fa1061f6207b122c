"""MNIST: 60k/10k grayscale 28x28 digits."""

from __future__ import annotations

from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from datamodules.base import ImageDataModule


class MNISTDataModule(ImageDataModule):
    """MNIST digits; ``image_size: 32`` zero-pads to 32x32 (the size DCGAN/DDPM-style networks expect)."""

    dataset_name = "MNIST"
    channels = 1
    native_size = 28
    mean = (0.1307,)
    std = (0.3081,)
    full_sizes = {"train": 60000, "test": 10000}

    @property
    def num_classes(self) -> int:
        return 10

    def required_files(self) -> dict[str, str | None]:
        # torchvision publishes md5s only for the .gz archives; the extracted files are checked for presence.
        names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
        return {f"MNIST/raw/{name}": None for name in names}

    def download_dataset(self) -> None:
        MNIST(self.data_dir, train=True, download=True)
        MNIST(self.data_dir, train=False, download=True)

    def make_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return MNIST(self.data_dir, train=train, transform=transform, download=False)

    def uint8_images(self, dataset: MNIST) -> tuple[Tensor, Tensor]:
        return dataset.data.unsqueeze(1), dataset.targets  # torchvision keeps MNIST in memory as one tensor

    def geometry_transforms(self) -> list[v2.Transform]:
        extra = self.image_size - self.native_size
        if extra > 0 and extra % 2 == 0:  # pad with background: the digit keeps its pixels
            return [v2.Pad(extra // 2)]
        return super().geometry_transforms()

    def basic_augmentations(self) -> list[v2.Transform]:
        # No flips: a mirrored digit is another symbol.
        return [v2.RandomCrop(self.image_size, padding=2)]
