"""Bad input gives one clear error saying what is wrong and how to fix it, and loses nothing already saved."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VIT

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
