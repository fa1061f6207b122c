"""Data files that are tampered with, partial or corrupt: refused before training, with one message naming the file
and the fix. Small copies are built in tmp_path (tiny idx files, tiny CIFAR pickles, a few real CelebA images)."""

from __future__ import annotations

import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import DATA_DIR, experiment_configs, module14
from torch.utils.data import DataLoader

from cli import user_message
from datamodules import CelebADataModule, CIFAR10DataModule, MNISTDataModule, UnreadableDataError
from datamodules.celeba import _CelebA
from datamodules.cifar10 import _CIFAR10

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


# ------------------------------------------------------------------------------------------- tiny copies
def write_idx(path: Path, array: np.ndarray, magic: int) -> None:
    path.write_bytes(struct.pack(f">{1 + array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes())


def tiny_mnist(root: Path, n: int = 20) -> Path:
    """MNIST's four idx files with ``n`` training and ``n // 2`` test digits of noise, labels 0..9."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", n), ("t10k", n // 2)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", np.random.default_rng(0).integers(0, 256, (count, 28, 28)), 2051)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(count) % 10, 2049)
    return raw


class _RunsCode:
    """Pickles as a call that creates ``marker``: unpickling it with ``pickle.load`` would run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def tiny_cifar(root: Path, extra: dict | None = None) -> Path:
    """CIFAR-10's layout with 4 images per batch (protocol-2 pickles, as the originals) and the real batches.meta;
    ``extra`` entries are added to data_batch_1."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    shutil.copy(DATA_DIR / "cifar-10-batches-py" / "batches.meta", folder)
    for name in CIFAR_BATCHES:
        batch = {"batch_label": name, "labels": [0, 1, 2, 3], "data": np.zeros((4, 3072), np.uint8)}
        if name == "data_batch_1":
            batch.update(extra or {})
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return folder


def tiny_celeba(root: Path, n: int = 6) -> Path:
    """The first ``n`` images of the shared CelebA subset (all in the train partition) with their list rows."""
    source, folder = DATA_DIR / "celeba", root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    rows = (source / "list_eval_partition.txt").read_bytes().split(b"\r\n")[:n]
    (folder / "list_eval_partition.txt").write_bytes(b"\r\n".join(rows) + b"\r\n")
    identities = (source / "identity_CelebA.txt").read_bytes().split(b"\r\n")[:n]
    (folder / "identity_CelebA.txt").write_bytes(b"\r\n".join(identities) + b"\r\n")
    attr = (source / "list_attr_celeba.txt").read_bytes().split(b"\r\n")
    (folder / "list_attr_celeba.txt").write_bytes(b"\r\n".join([str(n).encode(), attr[1], *attr[2:2 + n]]) + b"\r\n")
    for row in rows:
        name = row.split()[0].decode()
        shutil.copy(source / "img_align_celeba" / name, folder / "img_align_celeba" / name)
    return folder / "img_align_celeba"


def _truncate(path: Path, fraction: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * fraction)])


def _first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


# --------------------------------------------------------------------------------- CIFAR-10: no file runs code
def test_a_tampered_cifar_batch_is_refused_and_runs_nothing(tmp_path):
    """Through the console script: exit 1, the file named, no traceback, and the payload never ran."""
    marker = tmp_path / "ran_code"
    tiny_cifar(tmp_path / "data", extra={"hook": _RunsCode(marker)})
    result = module14("fit", "--config", "configs/vit_cifar10.yaml", f"--data.init_args.data_dir={tmp_path / 'data'}",
                      "--data.init_args.verify_integrity=false", "--data.init_args.val_size=2",
                      "--data.init_args.num_workers=0", "--trainer.fast_dev_run=true", "--trainer.precision=32-true",
                      cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "data_batch_1' asks to call or import 'posix.system'" in result.stderr
    assert "nothing in it ran" in result.stderr and "Traceback" not in result.stderr
    assert not marker.exists()


def test_cifar_reader_loads_the_shared_copy_and_python3_pickles(tmp_path):
    dm = CIFAR10DataModule(data_dir=str(DATA_DIR), verify_integrity=False, num_workers=0)
    with pytest.warns(UserWarning):
        dm.setup("test")
    assert len(dm.test_set) == 1017
    assert _CIFAR10(DATA_DIR, train=False, transform=None).classes[0] == "airplane"  # the class names, unpickled
    folder = tiny_cifar(tmp_path)
    for protocol, name in ((4, "data_batch_2"), (5, "data_batch_3")):  # hand-made copies written by Python 3
        with open(folder / name, "wb") as f:
            pickle.dump({"labels": [9], "data": np.ones((1, 3072), np.uint8)}, f, protocol=protocol)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), verify_integrity=False, val_size=1, num_workers=0)
    with pytest.warns(UserWarning):
        dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) == 4 + 1 + 1 + 4 + 4


# ------------------------------------------------------------------------------ shipped configs verify md5
def test_no_shipped_config_turns_off_md5_verification():
    for config in experiment_configs():
        data = yaml.safe_load(config.read_text())["data"].get("init_args", {})
        assert data.get("verify_integrity", True) is True, config.name


def test_partial_copy_is_refused_by_default_naming_files_and_the_opt_in(tmp_path):
    result = module14("fit", "--config", "configs/vit_cifar10.yaml", "--trainer.fast_dev_run=true",
                      "--trainer.precision=32-true", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    for expected in ("cifar-10-batches-py/data_batch_1", "differ from torchvision's md5", "a partial copy",
                     "--data.init_args.verify_integrity=false"):
        assert expected in result.stderr, result.stderr[-2000:]


# ------------------------------------------------------------------------------------- corrupt data files
def _mnist(root: Path, corrupt) -> MNISTDataModule:
    corrupt(tiny_mnist(root))
    return MNISTDataModule(data_dir=str(root), val_size=2, num_workers=0)


def _cifar(root: Path, corrupt) -> CIFAR10DataModule:
    corrupt(tiny_cifar(root))
    return CIFAR10DataModule(data_dir=str(root), verify_integrity=False, val_size=2, num_workers=0)


def _celeba(root: Path, corrupt) -> CelebADataModule:
    corrupt(tiny_celeba(root))
    return CelebADataModule(data_dir=str(root), verify_integrity=False, val_size=2, num_workers=0)


def _wrong_magic(raw: Path) -> None:
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">I", 2049) + path.read_bytes()[4:])


def _out_of_range_label(raw: Path) -> None:
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([0] * 9 + [11]), 2049)


def _tamper_cifar_labels(folder: Path) -> None:
    with open(folder / "data_batch_2", "wb") as f:
        pickle.dump({"labels": [0, 10], "data": np.zeros((2, 3072), np.uint8)}, f, protocol=2)


CORRUPT = {  # case: (dataset builder, corruption, file named, what the message says)
    "mnist_wrong_magic": (_mnist, _wrong_magic, "train-images-idx3-ubyte", "starts with magic number 2049, not 2051"),
    "mnist_cut_in_half": (_mnist, lambda raw: _truncate(raw / "train-images-idx3-ubyte"), "train-images-idx3-ubyte",
                          r"is 7848 bytes but its header announces 20x28x28 values \(15696 bytes\): it is truncated"),
    "mnist_empty": (_mnist, lambda raw: (raw / "t10k-labels-idx1-ubyte").write_bytes(b""), "t10k-labels-idx1-ubyte",
                    "shorter than an idx header"),
    "mnist_label_out_of_range": (_mnist, _out_of_range_label, "t10k-labels-idx1-ubyte", r"labels outside 0..9: \[11\]"),
    "cifar_truncated": (_cifar, lambda folder: _truncate(folder / "data_batch_3"), "data_batch_3",
                        "is truncated or not a CIFAR-10 pickle"),
    "cifar_label_out_of_range": (_cifar, _tamper_cifar_labels, "data_batch_2", r"labels outside 0..9: \[10\]"),
    "celeba_truncated_jpg": (_celeba, lambda images: _truncate(_first(images)), "000002.jpg",
                             "end without the JPEG end marker"),
    "celeba_empty_jpg": (_celeba, lambda images: _first(images).write_bytes(b""), "000002.jpg", r"is empty \(0 bytes\)"),
}


@pytest.mark.filterwarnings("ignore:.*(differ from torchvision's md5|absent|split has):UserWarning")
@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_file_is_named_in_setup_with_the_fix(tmp_path, case):
    build, corrupt, file_name, problem = CORRUPT[case]
    dm = build(tmp_path, corrupt)
    with pytest.raises(UnreadableDataError, match=rf"data file '[^']*{file_name}' .*{problem}") as err:
        dm.setup("fit")
        dm.setup("test")
    assert "Replace it with an intact copy" in str(err.value)


def test_corrupt_jpeg_read_in_a_worker_is_named_without_the_worker_traceback(tmp_path):
    """A JPEG that passes the cheap check but does not decode fails in ``__getitem__``, naming the file; the CLI
    prints the message without the DataLoader worker's traceback."""
    images = tiny_celeba(tmp_path)
    broken = _first(images)
    data = bytearray(broken.read_bytes())
    data[200:-400] = b"\x00" * (len(data) - 600)  # garbage in the middle; the markers stay
    broken.write_bytes(bytes(data))
    dataset = _CelebA(str(tmp_path), split="train", target_type="attr", transform=lambda image: image.load())
    with pytest.raises(UnreadableDataError) as err:
        next(iter(DataLoader(dataset, batch_size=1, num_workers=1)))
    message = user_message(err.value)
    assert message.startswith(f"CelebA: data file '{broken}' cannot be decoded") and "Traceback" not in message


def test_unreadable_data_folder_is_named_with_the_fix(tmp_path, monkeypatch):
    raw = tiny_mnist(tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), num_workers=0)
    if os.geteuid() == 0:  # root reads everything: make the permission check see what a user would
        monkeypatch.setattr("datamodules.base.os.access", lambda path, mode: Path(path).parent != raw)
    else:
        raw.chmod(0o000)
    try:
        with pytest.raises(UnreadableDataError, match=r"cannot be read \(permission denied\). Give your user read "
                                                      r"access \(chmod -R u\+rX"):
            dm.setup("fit")
    finally:
        raw.chmod(0o755)
