"""2-process CPU DDP (gloo) through the real CLI: ranks agree, metrics are reduced, files are written once, and a
DDP checkpoint continues in one process."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import (CSV_LOGGER, PER_RANK_BUFFERS, ROOT, TINY_DDPM, TINY_VIT, launch_ddp, rank_state,
                      record_rank_state)

pytestmark = pytest.mark.slow

DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.precision=32-true"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{key} differs")


def test_vit_ddp_ranks_agree_metrics_reduce_predictions_once_and_checkpoint_resumes(tmp_path):
    config = ["--config", str(ROOT / "configs/vit_mnist.yaml"), *TINY_VIT, *CSV_LOGGER, "--data.val_size=256",
              "--data.batch_size=32", "--data.num_workers=0", "--trainer.enable_model_summary=false",
              "--trainer.limit_train_batches=4"]
    launch_ddp(tmp_path, "fit", *config, *DDP, "--trainer.max_epochs=1", *record_rank_state(tmp_path / "ddp"))
    rank0, rank1 = rank_state(tmp_path / "ddp", "fit", 0), rank_state(tmp_path / "ddp", "fit", 1)
    assert_same_weights(rank0["state"], rank1["state"])
    assert rank0["metrics"]["val/acc"] == rank1["metrics"]["val/acc"]  # reduced across ranks, not per-rank values
    (checkpoint,) = tmp_path.glob("runs/lightning_logs/version_0/checkpoints/last.ckpt")
    assert_same_weights(torch.load(checkpoint, weights_only=True)["state_dict"], rank0["state"])

    # validation under DDP, each rank holding the data on its device (data.on_device), equals a single process on the
    # same data from the host loader
    launch_ddp(tmp_path, "validate", *config, *DDP, "--data.on_device=true", f"--ckpt_path={checkpoint}",
               *record_rank_state(tmp_path / "ddp_val"))
    launch_ddp(tmp_path, "validate", *config, "--trainer.accelerator=cpu", "--trainer.devices=1",
               "--trainer.precision=32-true", f"--ckpt_path={checkpoint}", *record_rank_state(tmp_path / "single_val"))
    ddp = rank_state(tmp_path / "ddp_val", "validate", 0)["metrics"]
    single = rank_state(tmp_path / "single_val", "validate", 0)["metrics"]
    assert ddp["val/acc"] == pytest.approx(single["val/acc"], abs=1e-6)
    assert ddp["val/loss"] == pytest.approx(single["val/loss"], rel=1e-5)

    # predictions: every item exactly once (51 items over 2 ranks), one file written by rank 0
    launch_ddp(tmp_path, "predict", *config, *DDP, "--data.predict_size=51", f"--ckpt_path={checkpoint}")
    with open(tmp_path / "outputs/vit_mnist/predictions.csv") as f:
        assert sorted(int(row["index"]) for row in csv.DictReader(f)) == list(range(51))

    # the DDP checkpoint continues in one process
    launch_ddp(tmp_path, "fit", *config, "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.max_epochs=2",
               f"--ckpt_path={checkpoint}", *record_rank_state(tmp_path / "resumed"))
    resumed = rank_state(tmp_path / "resumed", "fit", 0)
    assert any(not torch.equal(resumed["state"][k], rank0["state"][k]) for k in rank0["state"])


GENERATIVE = {  # family: config + CPU-sized overrides; every family runs under the stock ddp strategy
    "gan": ["--config", str(ROOT / "configs/dcgan_mnist.yaml"), "--model.feature_maps=8"],
    "diffusion": ["--config", str(ROOT / "configs/ddpm_mnist.yaml"), *TINY_DDPM],
    "vae": ["--config", str(ROOT / "configs/vae_mnist.yaml"), "--model.init_args.hidden_dim=32"],
}


@pytest.mark.parametrize("family", sorted(GENERATIVE))
def test_generative_ddp_ranks_agree_and_files_are_written_once(tmp_path, family):
    run = [*GENERATIVE[family], *CSV_LOGGER, *DDP, "--data.batch_size=8", "--data.num_workers=0",
           "--trainer.enable_model_summary=false"]
    launch_ddp(tmp_path, "fit", *run, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1", *record_rank_state(tmp_path / "ddp"))
    rank0, rank1 = rank_state(tmp_path / "ddp", "fit", 0), rank_state(tmp_path / "ddp", "fit", 1)
    weights = [{k: v for k, v in r["state"].items() if not k.endswith(PER_RANK_BUFFERS)} for r in (rank0, rank1)]
    assert_same_weights(*weights)
    if family == "gan":  # the DCGAN config trains in NHWC layout (channels_last: true), on every rank
        kernels = [r["state"]["generator.model.0.weight"] for r in (rank0, rank1)]
        assert all(k.is_contiguous(memory_format=torch.channels_last) and not k.is_contiguous() for k in kernels)
    grids = sorted(p.name for p in tmp_path.glob("runs/lightning_logs/version_0/images/*.png"))
    assert grids and len(grids) == len({name.split("_epoch")[0] for name in grids})  # one file per grid, not per rank

    (checkpoint,) = tmp_path.glob("runs/lightning_logs/version_0/checkpoints/last.ckpt")
    launch_ddp(tmp_path, "predict", *run, "--data.predict_size=5", f"--ckpt_path={checkpoint}")
    outputs = {p.name for p in (tmp_path / "outputs").glob("*/*/*.png")}  # outputs/<config>/<this predict>/
    assert outputs == {f"{i:06d}.png" for i in range(5)} | {"grid.png"}  # every sample exactly once, one grid


def test_compiled_networks_train_under_ddp_and_checkpoint_the_eager_keys(tmp_path):
    """compile: true is applied on every rank before DDP wraps the model; the ranks stay in step and the checkpoint
    keys are the eager model's (issue 14)."""
    run = [*GENERATIVE["vae"], *CSV_LOGGER, *DDP, "--model.init_args.compile=true", "--data.batch_size=8",
           "--data.num_workers=0", "--trainer.enable_model_summary=false",
           "--trainer.callbacks+=rank_state.CompileWithAotEager"]
    launch_ddp(tmp_path, "fit", *run, "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
               *record_rank_state(tmp_path / "ddp"))
    rank0, rank1 = rank_state(tmp_path / "ddp", "fit", 0), rank_state(tmp_path / "ddp", "fit", 1)
    assert rank0["compiled"] == rank1["compiled"] == ["net"]
    assert_same_weights(rank0["state"], rank1["state"])
    (checkpoint,) = tmp_path.glob("runs/lightning_logs/version_0/checkpoints/last.ckpt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 3
    assert saved["state_dict"].keys() == rank0["state"].keys()
    assert not any("_orig_mod" in key for key in saved["state_dict"])
