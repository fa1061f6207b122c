"""CelebA: 202,599 aligned 178x218 face images with 40 binary attributes."""

from __future__ import annotations

import os
import warnings

import torch
from torch.utils.data import Dataset
from torchvision.datasets import CelebA
from torchvision.datasets.celeba import CSV
from torchvision.transforms import v2

from datamodules.base import ImageDataModule

_OPTIONAL_LISTS = {"list_bbox_celeba.txt": 4, "list_landmarks_align_celeba.txt": 10}  # file -> columns


class _CelebA(CelebA):
    """torchvision's CelebA with its md5 check left to the datamodule, and the bbox/landmark lists optional.

    Targets are the 40 attributes; a copy without the bbox/landmark lists gets zero placeholders for them.
    """

    def _check_integrity(self) -> bool:
        return True

    def _load_csv(self, filename: str, header: int | None = None) -> CSV:
        if filename in _OPTIONAL_LISTS and not os.path.exists(os.path.join(self.root, self.base_folder, filename)):
            n = len(super()._load_csv("list_eval_partition.txt").index)
            return CSV([], [], torch.zeros((n, _OPTIONAL_LISTS[filename]), dtype=torch.long))
        return super()._load_csv(filename, header)


class CelebADataModule(ImageDataModule):
    """Aligned CelebA faces, center-cropped to 148x148 then resized to ``image_size`` (64 by default).

    The training split is CelebA's official train partition (validation is held out of it with ``val_size``);
    the test split is the official test partition. Targets are the 40 binary attributes.
    """

    dataset_name = "CelebA"
    channels = 3
    native_size = 64  # after the standard 148 center crop + resize
    crop_size = 148
    mean = (0.5063, 0.4258, 0.3832)
    std = (0.3107, 0.2904, 0.2897)
    full_sizes = {"train": 162770, "test": 19962}

    def required_files(self) -> dict[str, str | None]:
        files = {f"celeba/img_align_celeba": None}
        for _, md5, name in CelebA.file_list:
            if name.endswith(".zip"):
                continue  # the extracted folder is what is read
            if name in _OPTIONAL_LISTS and not self.verify_integrity:
                continue  # only attributes are used as targets; placeholders stand in for these
            files[f"celeba/{name}"] = md5
        return files

    def check_files(self) -> None:
        super().check_files()
        absent = [name for name in _OPTIONAL_LISTS if not (self.data_dir / "celeba" / name).exists()]
        if absent:
            warnings.warn(f"CelebA: {', '.join(absent)} absent; bbox/landmark targets are zero placeholders.", stacklevel=2)

    def download_dataset(self) -> None:
        CelebA(self.data_dir, download=True)  # needs gdown, and Google Drive quotas often refuse it

    def make_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return _CelebA(self.data_dir, split="train" if train else "test", target_type="attr", transform=transform)

    def geometry_transforms(self) -> list[v2.Transform]:
        return [v2.CenterCrop(self.crop_size), v2.Resize(self.image_size, antialias=True)]

    def basic_augmentations(self) -> list[v2.Transform]:
        return [v2.RandomHorizontalFlip()]
