"""CelebA (Liu, Luo, Wang & Tang, "Deep Learning Face Attributes in the Wild", ICCV 2015): 202,599 aligned 178x218
face images with 40 binary attributes, for the 64px β-VAE, DCGAN (the guide's 64x64 stack) and DDPM.

Faces are center-cropped to 148 and resized to 64, the usual protocol. torchvision's md5 check is replaced by the
datamodule's (with its opt-out for partial copies), the bbox/landmark lists are optional (only attributes are used),
and every JPEG's start and end markers are checked before training, so a truncated image names itself. Each split is
decoded once into a cached uint8 tensor file (``uint8_images``), so an epoch decodes no JPEG.
"""

from __future__ import annotations

import hashlib
import os
import sys
import warnings
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import CelebA
from torchvision.datasets.celeba import CSV

from compat import CelebAHooks, celeba_placeholder_list
from torchvision.transforms import v2

from datamodules.augment import ShiftFlip
from datamodules.base import ImageDataModule, unreadable_file
from training.checkpointing import atomic_file

_OPTIONAL_LISTS = {"list_bbox_celeba.txt": 4, "list_landmarks_align_celeba.txt": 10}  # file -> columns
IMAGE_FOLDER = "img_align_celeba"
JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"  # SOI and EOI markers
TAIL_BYTES = 1024  # where the EOI marker is looked for (a JPEG may carry a little padding after it)
CACHE_FOLDER = "module14_cache"  # beside the images: the decoded splits


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


def _pixels_sha256(images: Tensor) -> str:
    return hashlib.sha256(images.contiguous().numpy().tobytes()).hexdigest()


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

    def source_digest(self) -> str:
        """sha256 of the split's image files as listed here: names, sizes and modification times."""
        folder = Path(self.root) / self.base_folder / IMAGE_FOLDER
        digest = hashlib.sha256()
        for name in self.filename:
            stat = (folder / name).stat()
            digest.update(f"{name} {stat.st_size} {stat.st_mtime_ns}\n".encode())
        return digest.hexdigest()

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
    geometry_cached = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._decoded: dict[str, tuple[Tensor, Tensor]] = {}  # cache file name -> its images and attributes

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

    # ------------------------------------------------------------------------------ the decoded split, cached
    def uint8_images(self, dataset: _CelebA) -> tuple[Tensor, Tensor]:
        """The split's faces decoded, cropped and resized once, by the per-item path (PIL), and kept as one uint8
        tensor file in ``celeba/module14_cache/`` (or ``~/.cache/module14/celeba/`` where the data folder is
        read-only): an epoch decodes no JPEG. The file records the image files it was made from (names, sizes,
        times), so a changed copy is decoded again, saying so, and its pixels' sha256, so a damaged file is refused
        naming itself."""
        name = f"{dataset.split}_{self.crop_size}_{self.image_size}.pt"
        if name not in self._decoded:
            source = dataset.source_digest()
            self._decoded[name] = self._cached(name, source) or self._decode(name, dataset, source)
        return self._decoded[name]

    def _cache_files(self, name: str) -> list[Path]:
        home = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "module14" / "celeba"
        return [self.data_dir / "celeba" / CACHE_FOLDER / name, home / name]

    def _cached(self, name: str, source: str) -> tuple[Tensor, Tensor] | None:
        for path in self._cache_files(name):
            if not path.is_file():
                continue
            cached = torch.load(path, weights_only=True)
            if cached["source"] != source:
                print(f"module14: CelebA: {path} was decoded from other image files; decoding them again",
                      file=sys.stderr)
                continue
            if _pixels_sha256(cached["images"]) != cached["sha256"]:
                raise unreadable_file("CelebA", path, "fails its checksum (a damaged copy of the decoded images)",
                                      fix="Delete it: the next run decodes the images again.")
            return cached["images"], cached["labels"]
        return None

    def _decode(self, name: str, dataset: _CelebA, source: str) -> tuple[Tensor, Tensor]:
        decoded = self.make_dataset(train=dataset.split == "train",
                                    transform=v2.Compose(self.geometry_transforms() + [v2.PILToTensor()]))
        print(f"module14: CelebA: decoding the {len(decoded)} {dataset.split} images once (an epoch then decodes "
              "none)", file=sys.stderr)
        batches = list(DataLoader(decoded, batch_size=256, num_workers=self.num_workers))
        images, labels = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
        record = {"images": images, "labels": labels, "source": source,
                  "sha256": _pixels_sha256(images)}
        for path in self._cache_files(name):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(path) as temporary:
                    torch.save(record, temporary)
                break
            except OSError:  # a read-only data folder: the next place
                continue
        return images, labels

    def basic_augmentation(self) -> ShiftFlip:
        return ShiftFlip(padding=0, flip=True)
