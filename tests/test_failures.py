"""Bad input gives one clear error saying what is wrong and how to fix it, and loses nothing already saved."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_VIT, module14

from cli import CheckpointError
from lightning_modules.callbacks import NonFiniteLossError

CSV_LOGGER = ["--trainer.logger=CSVLogger", "--trainer.logger.init_args.save_dir=runs"]
VALIDATE = ["validate", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.limit_val_batches=1"]


def test_truncated_checkpoint(run_cli, tmp_path, vit_checkpoint):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(vit_checkpoint.read_bytes()[:50_000])
    with pytest.raises(CheckpointError, match="truncated, corrupted or not a PyTorch checkpoint"):
        run_cli(*VALIDATE, f"--ckpt_path={truncated}")


def test_checkpoint_of_another_model(run_cli, tmp_path, vit_checkpoint):
    checkpoint = torch.load(vit_checkpoint, weights_only=True)
    checkpoint["hyper_parameters"]["_class_path"] = "lightning_modules.VAEModule"
    other = tmp_path / "other.ckpt"
    torch.save(checkpoint, other)
    with pytest.raises(CheckpointError, match="holds a VAEModule but the config builds a ViTClassifier"):
        run_cli(*VALIDATE, f"--ckpt_path={other}")


def test_checkpoint_for_other_image_size(run_cli, vit_checkpoint):
    with pytest.raises(CheckpointError, match=r"trained with image_shape=\(1, 28, 28\) but the datamodule provides "
                                              r"image_shape=\(1, 56, 56\)"):
        run_cli(*VALIDATE, "--data.image_size=56", f"--ckpt_path={vit_checkpoint}")


def test_checkpoints_load_without_pickled_code(vit_checkpoint):
    assert "state_dict" in torch.load(vit_checkpoint, weights_only=True)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(run_cli, tmp_path):
    every_2 = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.init_args.every_n_train_steps=2",
               "--trainer.callbacks.init_args.save_top_k=-1", "--trainer.callbacks.init_args.dirpath=good",
               "--trainer.callbacks.init_args.filename={step}"]
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(training_step loss\) at epoch 0, batch 3 .*Last good checkpoint: .*good/step=2.ckpt"):
        run_cli("fit", "--config", "configs/vit_mnist.yaml", "--model=rank_state.NaNAfterStep", "--model.nan_step=3",
                *TINY_VIT, *CSV_LOGGER, "--trainer.max_steps=10", "--trainer.limit_val_batches=0", *every_2)
    assert sorted(p.name for p in (tmp_path / "good").iterdir()) == ["step=2.ckpt"]  # nothing written after the NaN
    state = torch.load(tmp_path / "good/step=2.ckpt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values())


def test_predict_into_an_unwritable_folder(run_cli, tmp_path, vit_checkpoint):
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write predictions to .*a_file/preds"):
        run_cli("predict", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--data.predict_size=4",
                f"--trainer.callbacks.output_file={tmp_path}/a_file/preds/p.csv", f"--ckpt_path={vit_checkpoint}")


class _RunsCode:
    """Pickles as a call that creates the file ``ran_code``: loading it without weights_only would run it."""

    def __reduce__(self):
        return (Path.touch, (Path("ran_code"),))


def _bad_checkpoints(folder: Path, good: Path) -> dict[str, Path]:
    """Files that are not usable checkpoints, each as ``--ckpt_path`` would get it."""
    checkpoint = torch.load(good, weights_only=True)
    missing = {**checkpoint, "state_dict": dict(list(checkpoint["state_dict"].items())[1:])}
    shapes = {**checkpoint, "state_dict": {k: v[..., :1] if v.dim() else v for k, v in checkpoint["state_dict"].items()}}
    other_module = {**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "_class_path": "this.ViTClassifier"}}
    contents = {"empty": None, "tensor": torch.zeros(3), "list": [1, 2], "no_state_dict": {"epoch": 1},
                "pickled_code": {**checkpoint, "hook": _RunsCode()}, "missing_key": missing, "wrong_shape": shapes, "class_from_another_module": other_module}
    paths = {}
    for name, content in contents.items():
        paths[name] = folder / f"{name}.ckpt"
        if content is None:
            paths[name].write_bytes(b"")
        else:
            torch.save(content, paths[name])
    return paths


@pytest.mark.parametrize("case, message", [
    ("empty", r"is empty \(0 bytes\): its write never finished"),
    ("tensor", r"holds a Tensor, not a Lightning checkpoint"),
    ("list", r"holds a list, not a Lightning checkpoint"),
    ("no_state_dict", r"holds a dict without a 'state_dict', not a Lightning checkpoint"),
    ("pickled_code", r"not a PyTorch checkpoint \(UnpicklingError: Weights only load failed\..*refused on purpose"),
    ("missing_key", r"do not fit the model the config builds \(Missing key\(s\) in state_dict: .*net\."),
    ("wrong_shape", r"do not fit the model the config builds \(size mismatch for net\."),
    ("class_from_another_module", r"names the model class 'this.ViTClassifier', which is neither the config's"),
])
def test_unusable_checkpoint_is_one_clear_error(run_cli, tmp_path, vit_checkpoint, case, message):
    path = _bad_checkpoints(tmp_path, vit_checkpoint)[case]
    with pytest.raises(CheckpointError, match=message):
        run_cli(*VALIDATE, f"--ckpt_path={path}")
    assert "this" not in sys.modules  # the module a checkpoint names is never imported
    assert not (tmp_path / "ran_code").exists()


@pytest.mark.parametrize("url", ["http://127.0.0.1:8765/evil.ckpt", "https://example.org/a.ckpt", "s3://bucket/a.ckpt",
                                 "file:///tmp/a.ckpt"])
def test_remote_checkpoint_is_refused(run_cli, url):
    with pytest.raises(CheckpointError, match=r"is a URL; .*Download it yourself"):
        run_cli(*VALIDATE, f"--ckpt_path={url}")


@pytest.mark.parametrize("case", ["url", "empty"])
def test_unusable_checkpoint_through_the_console_script(tmp_path, vit_checkpoint, case):
    """Exit code != 0, the message on stderr, and no second exception from inside the error handling."""
    path = "http://127.0.0.1:8765/evil.ckpt" if case == "url" else _bad_checkpoints(tmp_path, vit_checkpoint)["empty"]
    result = module14(*VALIDATE, f"--ckpt_path={path}", cwd=tmp_path)
    assert result.returncode == 1
    assert ("is a URL" if case == "url" else "is empty (0 bytes)") in result.stderr
    assert "Traceback" not in result.stderr


def test_feature_classifier_never_imports_the_datamodule_its_checkpoint_names(tmp_path, vit_checkpoint):
    from lightning_modules.metrics import ClassifierFeatures

    checkpoint = torch.load(vit_checkpoint, weights_only=True)
    assert ClassifierFeatures(str(vit_checkpoint)).mean.numel() == 1  # MNISTDataModule found by name
    checkpoint["datamodule_hyper_parameters"]["_class_path"] = "this.MNISTDataModule"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"datamodule 'this.MNISTDataModule' that is not one of module14's"):
        ClassifierFeatures(str(tmp_path / "other.ckpt"))
    assert "this" not in sys.modules
