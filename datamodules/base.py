"""One base class for the three image datasets: data root, integrity policy, splits, transforms and loaders.

A subclass names its torchvision dataset, the files it needs on disk (with torchvision's md5 where torchvision has
one), its native geometry and its augmentations; everything else lives here, so the three datasets fail, split, scale
and resume alike. The value range follows the model (standardised for classifiers, [0, 1] for Bernoulli VAEs, [-1, 1]
for GANs and diffusion, whose generators end in Tanh: docs/guide_notes.md); splits are seeded and independent of the
training seed; the training loader is a ``StatefulDataLoader`` so a run resumed mid-epoch sees the same batches.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler
from torchvision.transforms import v2

from datamodules.augment import ShiftFlip
from training.rng import seeded_generator

DATA_DIR_ENV = "MODULE14_DATA_DIR"

# What the pixels are scaled to, per use: classifiers want standardised inputs, Bernoulli VAEs [0, 1],
# GANs (Tanh generators) and diffusion [-1, 1].
Normalization = Literal["mean_std", "zero_one", "minus_one_one"]
# The interval the served pixels lie in; standardised (mean_std) pixels have none common to every channel.
VALUE_RANGES: dict[str, tuple[float, float]] = {"zero_one": (0.0, 1.0), "minus_one_one": (-1.0, 1.0)}
Augment = Literal["none", "basic", "strong"]


class DatasetNotFoundError(FileNotFoundError):
    """The data root does not hold the dataset and it could not be downloaded."""


class DatasetIntegrityError(RuntimeError):
    """The files are present but differ from the checksums torchvision publishes."""


class UnreadableDataError(DatasetIntegrityError):
    """A data file or folder is present but unusable: no read permission, truncated, or not in its format."""


REPLACE_FILE = ("Replace it with an intact copy: delete it and run once with --data.init_args.download=true, or copy it "
                "again from where the data came from.")


def unreadable_file(dataset_name: str, path: str | Path, problem: str, fix: str = REPLACE_FILE) -> UnreadableDataError:
    """The one error for a bad data file: which dataset, which file, what is wrong with it, and the fix."""
    return UnreadableDataError(f"{dataset_name}: data file '{path}' {problem}. {fix}")


def default_data_dir() -> str:
    """The data root when ``data.data_dir`` is not set: ``$MODULE14_DATA_DIR``, else ``./data``."""
    return os.environ.get(DATA_DIR_ENV, "./data")


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """The file's md5, read a chunk at a time (torchvision publishes md5s)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class InMemoryImages(Dataset):
    """A split held as one uint8 tensor (N, C, H, W) with its labels, its deterministic transform applied per batch.

    Serves the items of the torchvision dataset it was made from (the same transform on the same pixels), but a batch
    costs one indexing and one transform call instead of a PIL image and a Python transform pipeline per item. The
    tensors may live on a GPU (``data.on_device``): a batch is then indexed and transformed there.
    """

    def __init__(self, images: Tensor, labels: Tensor, transform: v2.Transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[Tensor, int | Tensor]:
        image, label = self.__getitems__([index])[0]
        return image, label.item() if label.dim() == 0 else label

    def __getitems__(self, indices: list[int]) -> list[tuple[Tensor, Tensor]]:
        """The DataLoader's batched fetch (``Subset`` passes it through): (image, label) items for the collate, views
        of one indexed and transformed batch. On a GPU nothing here waits for the queued training step: the index
        goes over from pinned memory and the labels stay tensors (a ``.tolist()`` would wait)."""
        index = torch.as_tensor(indices)
        if self.images.is_cuda:
            index = index.pin_memory()
        index = index.to(self.images.device, non_blocking=True)
        images = self.transform(self.images[index]).as_subclass(Tensor)
        return list(zip(images, self.labels[index]))  # labels (B,) classes or (B, K) attributes


class ImageDataModule(L.LightningDataModule):
    """Train/val/test/predict loaders for an image dataset in torchvision's on-disk layout.

    Args:
        data_dir: data root holding the dataset in torchvision's layout. Default: ``$MODULE14_DATA_DIR``, else ``./data``.
        download: download the dataset when its files are missing (needs a network).
        verify_integrity: refuse files whose md5 differs from torchvision's. Set ``false`` to load a partial or
            manually assembled copy anyway (a warning says which files differ).
        image_size: side of the square images served; ``None`` keeps the dataset's native size.
        normalization: ``mean_std`` (standardised, for classifiers), ``zero_one`` ([0, 1], Bernoulli VAEs) or
            ``minus_one_one`` ([-1, 1], GANs and diffusion).
        augment: training augmentation: ``none``, ``basic`` (the dataset's random shift and flip, drawn per image for
            the whole batch at once on the device it was moved to: ``datamodules/augment.py``) or ``strong`` (the same
            shift and flip, then TrivialAugment, per image in the loader's workers: TrivialAugment has no batched
            form). Validation, test and predict data are never augmented.
        val_size: images held out of the training split for validation: a count, or a fraction if < 1.
        seed: seed of the train/val split (independent of the training seed).
        predict_size: how many test images the ``predict`` split serves (``None``: all of them).
        on_device: hold every split as one uint8 tensor on the model's device (a GPU) and index and transform each
            batch there: no loader workers (``num_workers`` is not used) and no copy per batch from the host, for
            models whose GPU step outruns a CPU loader (``benchmarks/input_pipeline.py``). Needs the splits in
            memory: ``augment`` ``none`` or ``basic``, and no resize but CelebA's cached one. Device memory: MNIST
            55 MB, CIFAR-10 184 MB, CelebA at 64 px 2.2 GB (uint8, all splits).
    """

    # Set by subclasses.
    dataset_name: str = ""
    channels: int = 0
    native_size: int = 0
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    full_sizes: dict[str, int] = {}  # split sizes of the complete dataset, to say when a copy is partial
    geometry_cached = False  # uint8_images serves images already at image_size (decoded and resized once, by PIL)

    def __init__(
        self,
        data_dir: str | None = None,
        download: bool = True,
        verify_integrity: bool = True,
        image_size: int | None = None,
        normalization: Normalization = "mean_std",
        augment: Augment = "none",
        val_size: int | float = 0.1,
        seed: int = 42,
        batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        predict_size: int | None = None,
        on_device: bool = False,
    ) -> None:
        super().__init__()
        if persistent_workers and num_workers == 0:
            raise ValueError("persistent_workers=true needs num_workers > 0; set data.num_workers or turn it off.")
        if val_size < 0 or (isinstance(val_size, float) and val_size >= 1):
            raise ValueError(f"val_size={val_size}: give a count of images or a fraction in [0, 1).")
        if image_size is not None and image_size <= 0:
            raise ValueError(f"image_size={image_size} must be positive (or null for the native size).")
        if predict_size is not None and predict_size <= 0:
            raise ValueError(
                f"data.predict_size={predict_size} would predict no image: give a positive count of test images, or "
                f"null for all of them."
            )
        self.save_hyperparameters()
        self.data_dir = Path(data_dir if data_dir is not None else default_data_dir()).expanduser()
        self.download = download
        self.verify_integrity = verify_integrity
        self.image_size = image_size or self.native_size
        self.normalization = normalization
        self.augment = augment
        self.val_size = val_size
        self.seed = seed
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.predict_size = predict_size
        self.on_device = on_device
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None
        self.augmented_batches = 0  # training batches augmented so far: the key of the next one's draw

    # ----------------------------------------------------------------------------------------- what a model needs
    @property
    def dims(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images served."""
        return (self.channels, self.image_size, self.image_size)

    @property
    def value_range(self) -> tuple[float, float] | None:
        """The interval the served pixels lie in: (0, 1), (-1, 1), or ``None`` for ``mean_std`` (standardised)."""
        return VALUE_RANGES.get(self.normalization)

    @property
    def normalization_mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel (mean, std) with which a pixel p in [0, 1] is served as (p - mean) / std."""
        if self.normalization == "mean_std":
            return tuple(self.mean), tuple(self.std)
        low, high = VALUE_RANGES[self.normalization]
        return ((0 - low) / (high - low),) * self.channels, (1 / (high - low),) * self.channels

    @property
    def num_classes(self) -> int | None:
        """Number of classes for single-label classification, ``None`` where the dataset has no such labels."""
        return None

    # --------------------------------------------------------------------------------------- subclass interface
    def required_files(self) -> dict[str, str | None]:
        """Paths (relative to ``data_dir``) the dataset needs, each with torchvision's md5 or ``None``."""
        raise NotImplementedError

    def download_dataset(self) -> None:
        """Fetch the dataset into ``data_dir`` with torchvision's own download code."""
        raise NotImplementedError

    def make_dataset(self, train: bool, transform: v2.Transform) -> Dataset:
        """The torchvision dataset for the training (``train=True``) or test split."""
        raise NotImplementedError

    def uint8_images(self, dataset: Dataset) -> tuple[Tensor, Tensor] | None:
        """The whole split as (N, C, H, W) uint8 images and (N, ...) labels where the dataset holds it in memory
        (MNIST, CIFAR-10) or caches it decoded (CelebA, ``geometry_cached``); ``None`` (images read per item)
        otherwise."""
        return None

    def geometry_transforms(self) -> list[v2.Transform]:
        """Crop/pad/resize from the native images to ``image_size``."""
        if self.image_size == self.native_size:
            return []
        return [v2.Resize(self.image_size, antialias=True)]

    def basic_augmentation(self) -> ShiftFlip:
        """``augment: basic``: random shifts of up to 1/8 of the side (subclasses add flips where they keep the
        label)."""
        return ShiftFlip(padding=self.image_size // 8, flip=False)

    # ------------------------------------------------------------------------------------------- file checks
    def check_contents(self) -> None:
        """Cheap checks of the files' sizes, headers and labels (in subclasses), so that a corrupt file fails in
        ``setup`` naming itself, not mid-epoch. Runs after ``check_files``."""

    def _exists(self, rel: str) -> bool:
        """Whether ``data_dir/rel`` exists; a folder on the way that cannot be entered is an ``UnreadableDataError``."""
        path = self.data_dir / rel
        try:
            return path.exists()
        except PermissionError as err:
            raise self._no_permission(Path(err.filename or path)) from err

    def _no_permission(self, path: Path) -> UnreadableDataError:
        return unreadable_file(
            self.dataset_name, path, "cannot be read (permission denied)",
            fix=f"Give your user read access (chmod -R u+rX '{path}') or point --data.init_args.data_dir (or the "
                f"{DATA_DIR_ENV} environment variable) at a readable copy.",
        )

    def missing_files(self) -> list[str]:
        """Required paths that do not exist under ``data_dir``."""
        return [rel for rel in self.required_files() if not self._exists(rel)]

    def check_readable(self) -> None:
        """Every required file can be read and every required folder listed, else an ``UnreadableDataError``."""
        for rel in self.required_files():
            path = self.data_dir / rel
            mode = os.R_OK | os.X_OK if path.is_dir() else os.R_OK
            if not os.access(path, mode):
                raise self._no_permission(path)

    def mismatched_files(self) -> list[str]:
        """Required files whose md5 differs from torchvision's."""
        return [
            rel
            for rel, md5 in self.required_files().items()
            if md5 is not None and (self.data_dir / rel).is_file() and md5sum(self.data_dir / rel) != md5
        ]

    def _not_found_error(self, missing: list[str], cause: BaseException | None) -> DatasetNotFoundError:
        how = (
            f"the download failed ({type(cause).__name__}: {cause})"
            if cause is not None
            else "download is off (data.download=false)"
        )
        return DatasetNotFoundError(
            f"{self.dataset_name} not found under data root '{self.data_dir.resolve()}' and {how}.\n"
            f"Missing: {', '.join(missing)}.\n"
            f"Fix: point data.data_dir (or the {DATA_DIR_ENV} environment variable) at a folder holding these files "
            f"in torchvision's layout, or run once with data.download=true on a machine with a network."
        )

    def prepare_data(self) -> None:
        """Download on one process per node when files are missing; turn network errors into a clear message."""
        missing = self.missing_files()
        if not missing:
            return
        if not self.download:
            raise self._not_found_error(missing, None)
        try:
            self.download_dataset()
        except Exception as err:  # urllib/HTTP/SSL/checksum errors all mean the same thing to the user
            raise self._not_found_error(missing, err) from err

    def check_files(self) -> None:
        """All required files present and readable, and (unless ``verify_integrity`` is off) torchvision's md5."""
        missing = self.missing_files()
        if missing:
            raise self._not_found_error(missing, None)
        self.check_readable()
        mismatched = self.mismatched_files()
        if not mismatched:
            return
        what = f"{len(mismatched)} file(s) under '{self.data_dir}' differ from torchvision's md5: {', '.join(mismatched)}"
        if self.verify_integrity:
            raise DatasetIntegrityError(
                f"{self.dataset_name}: {what}. They are not the files of the published dataset: a partial copy (a "
                f"subset, such as the one in shared/data), a copy assembled by hand, or corrupted files. To train on "
                f"this copy as it is, opt in with --data.init_args.verify_integrity=false (in a config: data: "
                f"init_args: verify_integrity: false); its split sizes then differ from the published ones. To get the "
                f"original files, delete these and run once with --data.init_args.download=true."
            )
        warnings.warn(
            f"{self.dataset_name}: {what}; loading them anyway (verify_integrity=false). Results are not comparable "
            f"with published numbers on the full dataset.",
            stacklevel=2,
        )

    # -------------------------------------------------------------------------------------------- transforms
    def _to_range(self) -> list[v2.Transform]:
        """uint8 images to float tensors in the ``normalization`` range."""
        to_float = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
        if self.normalization == "zero_one":
            return to_float
        return to_float + [v2.Normalize(*self.normalization_mean_std)]

    def train_transform(self) -> v2.Transform:
        """Geometry, then (``augment: strong``) the random augmentations per image, then the value range. ``basic``
        augments whole batches after they reach the device (``on_after_batch_transfer``)."""
        augment: list[v2.Transform] = []
        if self.augment == "strong":
            augment = [*self.basic_augmentation().per_image(self.image_size), v2.TrivialAugmentWide()]
        return v2.Compose(self.geometry_transforms() + augment + self._to_range())

    def eval_transform(self) -> v2.Transform:
        """Geometry and value range only: validation, test and predict images are never augmented."""
        return v2.Compose(self.geometry_transforms() + self._to_range())

    # ---------------------------------------------------------------------------------------------- splits
    def _num_val(self, n_train: int) -> int:
        n_val = round(self.val_size * n_train) if isinstance(self.val_size, float) else self.val_size
        if n_val >= n_train:
            raise ValueError(
                f"val_size={self.val_size} leaves no training images: the training split has {n_train}. Lower data.val_size."
            )
        return n_val

    def setup(self, stage: str | None = None) -> None:
        """Check the files once, then build the splits the stage needs: a seeded train/val split of the training
        set, the official test split, and the first ``predict_size`` test images for ``predict``."""
        if self.train_set is None and self.test_set is None:  # once, before the first dataset is built
            self.check_files()
            self.check_contents()
        if stage in (None, "fit", "validate") and self.train_set is None:
            train_full = self._split(train=True, transform=self.train_transform(), random=self.augment == "strong")
            # In memory the training transform is the evaluation one (basic augments batches later): one copy serves both.
            val_full = train_full if isinstance(train_full, InMemoryImages) else self._split(
                train=True, transform=self.eval_transform(), random=False)
            self._warn_if_partial("train", len(train_full))
            n_val = self._num_val(len(train_full))
            order = torch.randperm(len(train_full), generator=torch.Generator().manual_seed(self.seed)).tolist()
            self.train_set = Subset(train_full, order[n_val:])
            self.val_set = Subset(val_full, order[:n_val])
        if stage in (None, "test", "predict") and self.test_set is None:
            self.test_set = self._split(train=False, transform=self.eval_transform(), random=False)
            self._warn_if_partial("test", len(self.test_set))
            n_predict = len(self.test_set) if self.predict_size is None else min(self.predict_size, len(self.test_set))
            self.predict_set = Subset(self.test_set, range(n_predict))

    def _split(self, train: bool, transform: v2.Transform, random: bool) -> Dataset:
        """The split as ``InMemoryImages`` where that serves the same items: the dataset is in memory and the transform
        is deterministic (no augmentation) and exact on tensors (no resize: PIL's and torch's interpolations differ).
        Random augmentations keep the per-item PIL path, so their semantics are untouched. With ``on_device`` the
        tensors move to the trainer's device."""
        dataset = self.make_dataset(train=train, transform=transform)
        resizes = any(isinstance(t, v2.Resize) for t in self.geometry_transforms()) and not self.geometry_cached
        arrays = None if random or resizes else self.uint8_images(dataset)
        if arrays is None:
            if self.on_device:
                why = ("augment: strong transforms each image in the loader's workers (TrivialAugment has no batched "
                       "form)" if random else f"image_size={self.image_size} resizes each image with PIL as it is read")
                raise ValueError(
                    f"data.on_device=true holds each split as one tensor on the device, but {self.dataset_name}'s "
                    f"{'training' if train else 'test'} split is read an image at a time: {why}. Use augment: basic "
                    f"or none{'' if random else ' and the native image size'}, or set data.on_device=false.")
            return dataset
        if self.on_device and self.trainer is not None:
            arrays = [array.to(self.trainer.strategy.root_device) for array in arrays]
        return InMemoryImages(*arrays, v2.Compose(self._to_range()) if self.geometry_cached else transform)

    def _warn_if_partial(self, split: str, n: int) -> None:
        full = self.full_sizes.get(split)
        if full is not None and n != full:
            warnings.warn(f"{self.dataset_name} {split} split has {n} images (the full dataset has {full}).", stacklevel=2)

    # ------------------------------------------------------------------------------- batched augmentation
    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """``augment: basic`` on a training batch (images, labels), now on the model's device. Its draw is keyed by (the run's seed,
        the rank, the count of batches augmented before): DDP ranks draw differently, and a resumed run, whose
        checkpoint holds the count (``state_dict``), draws what the uninterrupted run would have."""
        if self.augment != "basic" or self.trainer is None or not self.trainer.training:
            return batch
        if not isinstance(batch, (list, tuple)):  # the model summary's example input, not a batch of the loader
            return batch
        images, *rest = batch
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
        generator = seeded_generator(images.device, seed, self.trainer.global_rank, self.augmented_batches)
        self.augmented_batches += 1
        fill = torch.tensor([-m / s for m, s in zip(*self.normalization_mean_std)])  # a black pixel, as served
        return type(batch)([self.basic_augmentation()(images, fill, generator), *rest])

    def state_dict(self) -> dict[str, Any]:
        return {"augmented_batches": self.augmented_batches} if self.augment == "basic" else {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.augmented_batches = state_dict.get("augmented_batches", 0)

    # --------------------------------------------------------------------------------------------- loaders
    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        """Training uses a StatefulDataLoader: Lightning stores its position (and shuffling state) in checkpoints, so
        a run resumed mid-epoch sees exactly the batches an uninterrupted run would."""
        if dataset is None:
            raise RuntimeError("call setup() before asking for a dataloader")
        loader_class = StatefulDataLoader if shuffle else DataLoader
        sampler = self._distributed_shuffle(dataset) if shuffle else None
        workers = 0 if self.on_device else self.num_workers  # on the device a batch is one indexing: no worker helps
        return loader_class(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else None,
            sampler=sampler,
            num_workers=workers,
            pin_memory=self.pin_memory and not self.on_device,
            persistent_workers=self.persistent_workers and workers > 0,
            drop_last=False,
        )

    @staticmethod
    def _distributed_shuffle(dataset: Dataset) -> StatefulDistributedSampler | None:
        """Under DDP, the training sampler: this rank's share of one shuffle per epoch, seeded from the run's seed,
        whose position checkpoints record (torchdata's ``StatefulDistributedSampler``); None in one process.

        Lightning would wrap the loader's own random sampler instead and draw its permutation again when a resumed run
        restores the position: the rest of that epoch would then follow another order than the uninterrupted run's
        (some images twice, others not at all).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return None
        return StatefulDistributedSampler(dataset, num_replicas=dist.get_world_size(), rank=dist.get_rank(),
                                          shuffle=True, seed=int(os.environ.get("PL_GLOBAL_SEED", 0)))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.predict_set, shuffle=False)
