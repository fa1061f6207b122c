"""CIFAR-10 (Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009): 50k/10k colour 32x32 images
in 10 classes, for the CIFAR-sized ViT, conv VAE, DCGAN and the DDPM paper's model.

The batches are Python pickles. They are read with ``_BatchUnpickler``, which builds only what the format holds
(dicts, lists, str/bytes, ints, uint8 numpy arrays), so a tampered file cannot run code: torchvision's plain
``pickle.load`` would run whatever ``__reduce__`` payload the file carries.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10
from torchvision.transforms import v2

from compat import fill_cifar10
from datamodules.augment import ShiftFlip
from datamodules.base import ImageDataModule, unreadable_file

DATASET_NAME = "CIFAR-10"
NUM_CLASSES = 10
IMAGE_BYTES = 3 * 32 * 32

_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array reconstructor, wherever this numpy version keeps it
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # the protocol-5 one
# The only globals a CIFAR-10 pickle names: numpy's array/dtype reconstruction (under numpy 1's and numpy 2's module
# names), and _codecs.encode (the same function as codecs.encode), which Python 3 uses for bytes in protocol-2 pickles.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("_codecs", "encode"): codecs.encode,
}


class _ForbiddenGlobal(pickle.UnpicklingError):
    """The pickle names a function or class outside ``_ALLOWED_GLOBALS``."""


class _BatchUnpickler(pickle.Unpickler):
    """An unpickler that looks up only ``_ALLOWED_GLOBALS``: any other name (``os.system``, ``builtins.eval``, ...)
    is refused before it is imported or called."""

    def find_class(self, module: str, name: str) -> Any:
        allowed = _ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise _ForbiddenGlobal(f"{module}.{name}")
        return allowed


def unpickle(path: Path) -> Any:
    """The object pickled in ``path``, built by ``_BatchUnpickler`` (latin1 strings, as torchvision reads them)."""
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobal as err:
        raise unreadable_file(
            DATASET_NAME, path,
            f"asks to call or import '{err}', which a CIFAR-10 file never holds: it was tampered with or is not a "
            f"CIFAR-10 file (it was refused; nothing in it ran)",
            fix="Do not use this copy: delete it and download the dataset again from the official source "
                "(--data.init_args.download=true).",
        ) from None
    except Exception as err:  # truncated, garbled or not a pickle: the file is unusable whatever the cause
        raise unreadable_file(
            DATASET_NAME, path, f"is truncated or not a CIFAR-10 pickle ({type(err).__name__}: {err})"
        ) from err


def read_batch(path: Path) -> tuple[np.ndarray, list[int]]:
    """A batch file's images (uint8, N x 3072) and labels (N ints in [0, 10)), checked against the format."""
    batch = unpickle(path)
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == IMAGE_BYTES):
        raise unreadable_file(DATASET_NAME, path, f"has no 'data' array of uint8 images (N x {IMAGE_BYTES})")
    if not (isinstance(labels, list) and len(labels) == len(data) and all(type(y) is int for y in labels)):
        raise unreadable_file(DATASET_NAME, path, f"has no 'labels' list of {len(data)} ints (one per image)")
    bad = sorted({y for y in labels if not 0 <= y < NUM_CLASSES})
    if bad:
        raise unreadable_file(DATASET_NAME, path, f"has labels outside 0..{NUM_CLASSES - 1}: {bad[:5]}")
    return data, labels


def read_class_names(path: Path) -> list[str]:
    """The 10 class names in CIFAR-10's ``batches.meta``, checked against the format."""
    meta = unpickle(path)
    names = meta.get(CIFAR10.meta["key"]) if isinstance(meta, dict) else None
    if not (isinstance(names, list) and len(names) == NUM_CLASSES and all(isinstance(n, str) for n in names)):
        raise unreadable_file(DATASET_NAME, path, f"has no '{CIFAR10.meta['key']}' list of {NUM_CLASSES} class names")
    return names


class _CIFAR10(CIFAR10):
    """torchvision's CIFAR10 (folder layout, file lists, metadata, ``__getitem__``) whose files are read with
    ``read_batch`` / ``unpickle`` instead of ``pickle.load``. The md5 check is left to the datamodule."""

    def __init__(self, root: str | Path, train: bool, transform: v2.Transform) -> None:
        self.train = train
        folder = Path(root) / self.base_folder
        batches = [read_batch(folder / name) for name, _ in (self.train_list if train else self.test_list)]
        data = np.vstack([data for data, _ in batches]).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        targets = [label for _, labels in batches for label in labels]
        fill_cifar10(self, root, transform, data, targets, read_class_names(folder / self.meta["filename"]))


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10; ``augment: basic`` is the standard random crop (padding 4) + horizontal flip."""

    dataset_name = DATASET_NAME
    channels = 3
    native_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    full_sizes = {"train": 50000, "test": 10000}

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def required_files(self) -> dict[str, str | None]:
        files = CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
        return {f"{CIFAR10.base_folder}/{name}": md5 for name, md5 in files}

    def download_dataset(self) -> None:
        CIFAR10(self.data_dir, download=True)

    def make_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return _CIFAR10(self.data_dir, train=train, transform=transform)

    def uint8_images(self, dataset: CIFAR10) -> tuple[Tensor, Tensor]:
        # torchvision keeps CIFAR-10 in memory as one (N, H, W, C) uint8 array
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2), torch.tensor(dataset.targets)

    def basic_augmentation(self) -> ShiftFlip:
        return ShiftFlip(padding=self.image_size // 8, flip=True)
