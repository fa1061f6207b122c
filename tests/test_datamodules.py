"""DataModules on the real data in the data root: shapes, ranges, split sizes, integrity policy, clear errors."""

import urllib.error

import pytest
import torch
from conftest import on_trainer

from datamodules import (
    CelebADataModule,
    CIFAR10DataModule,
    DatasetIntegrityError,
    DatasetNotFoundError,
    MNISTDataModule,
)


def first_batch(dm, split="train"):
    return next(iter(getattr(dm, f"{split}_dataloader")()))


def test_mnist_shapes_ranges_and_splits(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), normalization="zero_one", val_size=5000, batch_size=16, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    assert dm.dims == (1, 28, 28) and dm.num_classes == 10
    x, y = first_batch(dm)
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and y.shape == (16,)
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.99


def test_mnist_padded_to_32_in_minus_one_one(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), image_size=32, normalization="minus_one_one", batch_size=8,
                         num_workers=0)
    dm.setup("fit")
    x, _ = first_batch(dm, "val")
    assert dm.dims == (1, 32, 32) and x.shape == (8, 1, 32, 32)
    assert x.min() == -1 and x.max() == 1
    assert torch.all(x[..., :2, :] == -1) and torch.all(x[..., :, -2:] == -1)  # zero padding = background


def test_mnist_mean_std_is_standardised(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), batch_size=2000, num_workers=0)
    dm.setup("fit")
    x, _ = first_batch(dm, "val")
    assert abs(x.mean()) < 0.05 and abs(x.std() - 1) < 0.05


def test_split_is_seeded(data_dir):
    def val_indices(seed):
        dm = MNISTDataModule(data_dir=str(data_dir), seed=seed, val_size=0.1, num_workers=0)
        dm.setup("fit")
        return dm.val_set.indices[:20]

    assert val_indices(1) == val_indices(1)
    assert val_indices(1) != val_indices(2)


def test_predict_split_size(data_dir):
    dm = MNISTDataModule(data_dir=str(data_dir), predict_size=37, num_workers=0)
    dm.setup("predict")
    assert len(dm.predict_set) == 37


def test_cifar10_subset_needs_permission_and_warns(data_dir):
    with pytest.raises(DatasetIntegrityError, match="verify_integrity=false"):
        CIFAR10DataModule(data_dir=str(data_dir)).setup("fit")
    dm = CIFAR10DataModule(data_dir=str(data_dir), verify_integrity=False, augment="basic", batch_size=8,
                           num_workers=0)
    with pytest.warns(UserWarning, match="differ from torchvision's md5: cifar-10-batches-py/data_batch_1"):
        dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set) + len(dm.val_set), len(dm.test_set)) == (8068, 1017)
    assert len(dm.val_set) == round(0.1 * 8068)
    x, y = first_batch(dm)
    assert x.shape == (8, 3, 32, 32) and dm.num_classes == 10 and y.max() < 10


def test_celeba_subset_center_crop_64(data_dir):
    dm = CelebADataModule(data_dir=str(data_dir), verify_integrity=False, normalization="minus_one_one",
                          batch_size=4, num_workers=0)
    with pytest.warns(UserWarning, match="list_bbox_celeba.txt, list_landmarks_align_celeba.txt absent"):
        dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set) + len(dm.val_set), len(dm.test_set)) == (3450, 480)
    x, attrs = first_batch(dm)
    assert dm.dims == (3, 64, 64) and x.shape == (4, 3, 64, 64)
    assert x.min() >= -1 and x.max() <= 1 and attrs.shape == (4, 40)
    assert dm.num_classes is None


def test_missing_data_root_without_download(tmp_path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(DatasetNotFoundError) as err:
        dm.prepare_data()
    message = str(err.value)
    assert str(tmp_path / "nowhere") in message and "MNIST/raw/train-images-idx3-ubyte" in message
    assert "data.data_dir" in message and "MODULE14_DATA_DIR" in message


def test_failed_download_is_a_clear_error_not_a_urllib_traceback(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=True)
    with pytest.raises(DatasetNotFoundError, match="the download failed") as err:
        dm.prepare_data()
    assert "Missing: MNIST/raw/" in str(err.value)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"val_size": 1.5}, "fraction"), ({"persistent_workers": True, "num_workers": 0}, "num_workers > 0"),
     ({"image_size": 0}, "positive")],
)
def test_bad_settings_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(**kwargs)


def test_val_size_larger_than_train_is_a_clear_error(data_dir):
    dm = CelebADataModule(data_dir=str(data_dir), verify_integrity=False, val_size=5000)
    with pytest.raises(ValueError, match="leaves no training images"):
        dm.setup("fit")


@pytest.mark.parametrize("make", [
    lambda d: MNISTDataModule(data_dir=d, normalization="zero_one"),
    lambda d: MNISTDataModule(data_dir=d, image_size=32, normalization="minus_one_one"),
    lambda d: MNISTDataModule(data_dir=d),
    lambda d: CIFAR10DataModule(data_dir=d, verify_integrity=False),
    lambda d: CelebADataModule(data_dir=d, verify_integrity=False, normalization="minus_one_one", val_size=100,
                               batch_size=64),
], ids=["mnist_zero_one", "mnist_32_minus_one_one", "mnist_mean_std", "cifar10_mean_std", "celeba_decoded_once"])
def test_in_memory_splits_serve_exactly_the_per_item_pil_images(data_dir, make):
    """Without random augmentation MNIST and CIFAR-10 are served from one in-memory tensor, a batch at a time; the
    items (pixels, dtype, labels) and batches are those of the torchvision dataset with its per-item PIL transform."""
    from datamodules.base import InMemoryImages

    dm = make(str(data_dir))
    dm.setup("fit")  # the CIFAR-10 copy is partial: a warning says so
    dm.setup("test")
    for split, train in (("train", True), ("val", True), ("test", False)):
        dataset = getattr(dm, f"{split}_set")
        in_memory = dataset.dataset if split != "test" else dataset
        assert isinstance(in_memory, InMemoryImages)
        pil = dm.make_dataset(train=train, transform=dm.eval_transform())
        indices = dataset.indices[:64] if split != "test" else list(range(64))
        for (x, y), i in zip(dataset.__getitems__(list(range(64))), indices):
            x_pil, y_pil = pil[i]
            assert torch.equal(x, x_pil) and x.dtype == x_pil.dtype == torch.float32
            assert torch.equal(torch.as_tensor(y), torch.as_tensor(y_pil))
        x, y = first_batch(dm, split)
        assert x.shape == (dm.batch_size, *dm.dims) and y.dtype == torch.int64


def test_strong_augmentation_keeps_the_per_item_pil_path(data_dir):
    """TrivialAugment has no batched form: ``strong`` shifts, flips and augments per image in the workers."""
    from datamodules.base import InMemoryImages

    dm = MNISTDataModule(data_dir=str(data_dir), augment="strong", num_workers=0)
    dm.setup("fit")
    assert not isinstance(dm.train_set.dataset, InMemoryImages)
    assert [type(t).__name__ for t in dm.train_transform().transforms][:2] == ["RandomCrop", "TrivialAugmentWide"]
    assert isinstance(dm.val_set.dataset, InMemoryImages)


def test_on_device_holds_the_splits_on_the_trainers_device_and_loads_in_process(data_dir):
    """``data.on_device``: one tensor per split on the trainer's device (``meta`` stands in for a GPU here), the
    training and validation splits sharing it, batches indexed there, and no workers whatever ``num_workers`` says."""
    dm = on_trainer(MNISTDataModule(data_dir=str(data_dir), image_size=32, augment="basic", num_workers=2,
                                    persistent_workers=True, pin_memory=True, on_device=True), device="meta")
    dm.setup("fit")
    dm.setup("test")
    assert dm.val_set.dataset is dm.train_set.dataset and dm.train_set.dataset.images.device.type == "meta"
    for split in ("train", "val", "test", "predict"):
        loader = getattr(dm, f"{split}_dataloader")()
        assert (loader.num_workers, loader.pin_memory) == (0, False)
        x, y = next(iter(loader))
        assert (x.device.type, y.device.type, x.shape, x.dtype) == ("meta", "meta", (128, 1, 32, 32), torch.float32)


def test_on_device_serves_the_batches_of_the_host_loader_and_resumes_mid_epoch(data_dir):
    """On the trainer's device (this CPU) the same images, labels and order as the in-memory host loader; a loader
    restored from the position after two batches serves the third."""
    def made(**on_device) -> MNISTDataModule:
        dm = on_trainer(MNISTDataModule(data_dir=str(data_dir), val_size=100, batch_size=500, num_workers=0,
                                        **on_device), device="cpu")
        dm.setup("fit")
        torch.manual_seed(0)  # the training loader's shuffle
        return dm

    host = made()
    host_batches = [*zip(range(3), host.train_dataloader())], next(iter(host.val_dataloader()))
    dm = made(on_device=True)
    loader = dm.train_dataloader()
    batches = iter(loader)
    first, second = next(batches), next(batches)
    restored = dm.train_dataloader()
    restored.load_state_dict(loader.state_dict())
    third = next(iter(restored))
    for (x, y), (x_host, y_host) in zip([first, second, third, next(iter(dm.val_dataloader()))],
                                        [b for _, b in host_batches[0]] + [host_batches[1]]):
        assert torch.equal(x, x_host) and torch.equal(y, y_host)


@pytest.mark.parametrize("settings, why", [({"augment": "strong"}, "augment: strong transforms each image"),
                                           ({"image_size": 29}, "image_size=29 resizes each image")])
def test_on_device_refuses_a_split_read_an_image_at_a_time(data_dir, settings, why):
    dm = on_trainer(MNISTDataModule(data_dir=str(data_dir), on_device=True, **settings), device="cpu")
    with pytest.raises(ValueError, match=f"data.on_device=true holds each split as one tensor on the device, but "
                                         f"MNIST's training split is read an image at a time: {why}"):
        dm.setup("fit")


@pytest.mark.parametrize("pin_memory", [False, True])
def test_pin_memory_reaches_every_loader(data_dir, pin_memory):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=100, batch_size=8, num_workers=0, pin_memory=pin_memory)
    dm.setup("fit")
    dm.setup("test")
    assert {dm.train_dataloader().pin_memory, dm.val_dataloader().pin_memory, dm.test_dataloader().pin_memory} == {
        pin_memory}


def test_celeba_is_decoded_once_into_a_checked_cache(data_dir, tmp_path, monkeypatch, capsys):
    """The first setup decodes the split into a uint8 file; later ones load it and an epoch opens no JPEG; a copy of
    other images is decoded again, saying so; a damaged file is refused, naming itself."""
    import PIL.Image

    from datamodules import celeba
    from datamodules.base import UnreadableDataError

    files = [tmp_path / "read-only" / "test.pt", tmp_path / "home" / "test.pt"]
    monkeypatch.setattr(CelebADataModule, "_cache_files", lambda self, name: files)
    (tmp_path / "read-only").write_text("a file where the folder would be: the first place cannot be written")

    def test_split() -> CelebADataModule:
        dm = CelebADataModule(data_dir=str(data_dir), verify_integrity=False, num_workers=0, batch_size=64)
        dm.setup("test")
        return dm

    decoded = test_split()
    assert "decoding the 480 test images once" in capsys.readouterr().err and files[1].is_file()
    monkeypatch.setattr(PIL.Image, "open", lambda *args, **kwargs: pytest.fail("a JPEG was opened"))
    monkeypatch.setattr(CelebADataModule, "_decode", lambda *args: pytest.fail("decoded again"))
    loaded = test_split()
    batches = list(loaded.test_dataloader())
    assert sum(len(x) for x, _ in batches) == 480 and torch.equal(loaded.test_set.images, decoded.test_set.images)

    monkeypatch.setattr(celeba._CelebA, "source_digest", lambda self: "another copy")
    with pytest.raises(pytest.fail.Exception, match="decoded again"):
        test_split()
    assert "was decoded from other image files" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(CelebADataModule, "_cache_files", lambda self, name: files)
    record = torch.load(files[1], weights_only=True)
    record["images"][0, 0, 0, 0] ^= 1  # one bit of one pixel
    torch.save(record, files[1])
    with pytest.raises(UnreadableDataError, match="fails its checksum.*Delete it"):
        test_split()
