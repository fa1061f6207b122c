"""CelebA (Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015): 202,599 aligned 178x218
face images with 40 binary attributes, for the 64px β-VAE, DCGAN (the guide's 64x64 stack) and DDPM.

Faces are center-cropped to 148 and resized to 64, the usual protocol. torchvision's md5 check is replaced by the
datamodule's (with its opt-out for partial copies), the bbox/landmark lists are optional (only attributes are used),
and every JPEG's start and end markers are checked before training, so a truncated image names itself.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import CelebA
from torchvision.datasets.celeba import CSV

from compat import CelebAHooks, celeba_placeholder_list
from torchvision.transforms import v2

from datamodules.augment import ShiftFlip
from datamodules.base import ImageDataModule, unreadable_file

_OPTIONAL_LISTS = {"list_bbox_celeba.txt": 4, "list_landmarks_align_celeba.txt": 10}  # file -> columns
IMAGE_FOLDER = "img_align_celeba"
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"  # SOI and EOI markers
TAIL_BYTES = 1024  # where the EOI marker is looked for (a JPEG may carry a little padding after it)


def check_jpeg(path: Path) -> None:
    """A cheap check that ``path`` is a whole JPEG: not empty, starts with SOI, and its tail holds the EOI marker.

    A file cut short (an interrupted copy or extraction) ends inside the compressed data, where 0xFF bytes are
    always followed by 0x00, so the EOI marker is missing. Decoding every image would take much longer.
    """
    size = path.stat().st_size
    if size == 0:
        raise unreadable_file("CelebA", path, "is empty (0 bytes)")
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(max(0, size - TAIL_BYTES))
        tail = f.read()
    if head != JPEG_START:
        raise unreadable_file("CelebA", path, f"does not start like a JPEG (first bytes {head.hex()}, not ffd8)")
    if JPEG_END not in tail:
        raise unreadable_file("CelebA", path, f"is truncated: its {size} bytes end without the JPEG end marker")


class _CelebA(CelebAHooks):
    """torchvision's CelebA with its md5 check left to the datamodule, and the bbox/landmark lists optional.

    Targets are the 40 attributes; a copy without the bbox/landmark lists gets zero placeholders for them.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not ((self.attr == 0) | (self.attr == 1)).all():  # torchvision maps the file's -1/1 to 0/1
            path = Path(self.root) / self.base_folder / "list_attr_celeba.txt"
            raise unreadable_file("CelebA", path, "has attribute values other than -1 and 1")

    def files_intact(self) -> bool:
        return True

    def __getitem__(self, index: int):
        try:
            return super().__getitem__(index)
        except OSError as err:  # PIL's errors for a truncated or undecodable image (UnidentifiedImageError included)
            path = Path(self.root) / self.base_folder / IMAGE_FOLDER / self.filename[index]
            raise unreadable_file("CelebA", path, f"cannot be decoded ({err})") from err

    def read_list(self, filename: str, header: int | None = None) -> CSV:
        if filename in _OPTIONAL_LISTS and not os.path.exists(os.path.join(self.root, self.base_folder, filename)):
            n = len(super().read_list("list_eval_partition.txt").index)
            return celeba_placeholder_list(n, _OPTIONAL_LISTS[filename])
        return super().read_list(filename, header)


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
        files = {f"celeba/{IMAGE_FOLDER}": None}
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

    def check_contents(self) -> None:
        """Every image in the image folder passes ``check_jpeg``: a corrupt one fails here, not mid-epoch."""
        with os.scandir(self.data_dir / "celeba" / IMAGE_FOLDER) as entries:
            for entry in entries:
                if entry.name.endswith(".jpg"):
                    check_jpeg(Path(entry.path))

    def download_dataset(self) -> None:
        CelebA(self.data_dir, download=True)  # needs gdown, and Google Drive quotas often refuse it

    def make_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        return _CelebA(self.data_dir, split="train" if train else "test", target_type="attr", transform=transform)

    def geometry_transforms(self) -> list[v2.Transform]:
        return [v2.CenterCrop(self.crop_size), v2.Resize(self.image_size, antialias=True)]

    def basic_augmentation(self) -> ShiftFlip:
        return ShiftFlip(padding=0, flip=True)
