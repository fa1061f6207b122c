"""MNIST (LeCun, Bottou, Bengio & Haffner, "Gradient-Based Learning Applied to Document Recognition", Proc. IEEE 1998):
60k/10k grayscale 28x28 handwritten digits, the CPU-sized dataset of every model family here.

torchvision keeps it in memory as one uint8 tensor, so splits without random augmentation are served a batch at a
time. ``image_size: 32`` zero-pads to the power-of-two side that DCGAN and U-Net stages halve (the guide's DCGAN
assumed 64x64). Before training, each idx file's header, size and labels are checked, so a truncated file names itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import MNIST
from torchvision.transforms import v2

from datamodules.augment import ShiftFlip
from datamodules.base import ImageDataModule, unreadable_file

SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
IMAGE_MAGIC, LABEL_MAGIC = 2051, 2049  # idx files of uint8: 0x0803 (3 dims), 0x0801 (1 dim)
NUM_CLASSES = 10


def read_idx_header(path: Path, magic: int, dims: int) -> tuple[int, ...]:
    """The shape an idx file announces, after checking its magic number and that its size matches the shape."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * dims)
    if len(header) < 4 + 4 * dims:
        raise unreadable_file("MNIST", path, f"is {size} bytes, shorter than an idx header: it is truncated or empty")
    found, *shape = np.frombuffer(header, dtype=">u4").tolist()
    if found != magic:
        raise unreadable_file(
            "MNIST", path, f"starts with magic number {found}, not {magic} (an idx file of {dims}-d uint8 data): it "
                           f"is not this MNIST file or its header is corrupt")
    expected = len(header) + int(np.prod(shape))
    if size != expected:
        raise unreadable_file(
            "MNIST", path, f"is {size} bytes but its header announces {'x'.join(map(str, shape))} values "
                           f"({expected} bytes): it is {'truncated' if size < expected else 'longer than its header says'}")
    return tuple(shape)


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
        return NUM_CLASSES

    def required_files(self) -> dict[str, str | None]:
        # torchvision publishes md5s only for the .gz archives; the extracted files are checked for presence.
        return {f"MNIST/raw/{name}": None for names in SPLIT_FILES.values() for name in names}

    def check_contents(self) -> None:
        """Each idx file's magic number and size, images and labels agreeing in count, and labels in 0..9."""
        raw = self.data_dir / "MNIST" / "raw"
        for images_name, labels_name in SPLIT_FILES.values():
            count, *image_shape = read_idx_header(raw / images_name, IMAGE_MAGIC, 3)
            (num_labels,) = read_idx_header(raw / labels_name, LABEL_MAGIC, 1)
            if tuple(image_shape) != (self.native_size, self.native_size) or count != num_labels:
                raise unreadable_file(
                    "MNIST", raw / images_name, f"holds {count} images of {image_shape}, but MNIST images are "
                    f"{self.native_size}x{self.native_size} with one label each ({labels_name} has {num_labels})")
            labels = np.fromfile(raw / labels_name, dtype=np.uint8, offset=8)
            bad = sorted(set(labels[labels >= NUM_CLASSES].tolist()))
            if bad:
                raise unreadable_file("MNIST", raw / labels_name, f"has labels outside 0..{NUM_CLASSES - 1}: {bad[:5]}")

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

    def basic_augmentation(self) -> ShiftFlip:
        return ShiftFlip(padding=2, flip=False)  # no flips: a mirrored digit is another symbol
