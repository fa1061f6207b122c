"""Runs that survive: last.ckpt is really the last, signals save a resumable checkpoint, writes are atomic."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, CSV_LOGGER, TINY_VIT, module14

from lightning_modules.checkpointing import CheckpointWriteError, SafeCheckpointIO, atomic_file

FAST = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.precision=32-true",
        "--data.num_workers=0", "--data.batch_size=16", "--trainer.enable_model_summary=false"]
MODULE14 = str(Path(sys.executable).with_name("module14"))


def saved_position(path: Path) -> tuple[int, int]:
    checkpoint = torch.load(path, weights_only=True)
    return checkpoint["epoch"], checkpoint["global_step"]


def test_last_checkpoint_holds_the_latest_epoch_when_the_metric_does_not_improve(run_cli, tmp_path):
    # lr 0: val/acc is the same in epoch 2, so no top-k checkpoint is written then (Lightning would not rewrite last)
    cli = run_cli("fit", *FAST, "--model.lr=0", "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
                  "--trainer.limit_val_batches=1")
    folder = Path(cli.trainer.checkpoint_callback.dirpath)
    (best,) = folder.glob("epoch*.ckpt")
    assert best.name.startswith("epoch000") and saved_position(best) == (0, 2)
    assert saved_position(folder / "last.ckpt") == (1, 4)
    assert isinstance(cli.trainer.strategy.checkpoint_io, SafeCheckpointIO)


def test_last_checkpoint_holds_the_final_step_when_training_stops_mid_epoch(run_cli, tmp_path):
    cli = run_cli("fit", *FAST, "--trainer.max_steps=3", "--trainer.limit_train_batches=2",
                  "--trainer.limit_val_batches=1")
    assert saved_position(Path(cli.trainer.checkpoint_callback.dirpath) / "last.ckpt") == (1, 3)


@pytest.mark.parametrize("signum, exit_code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_signal_saves_a_resumable_checkpoint_and_exits_non_zero(tmp_path, signum, exit_code):
    """Through the console script: signal a training run, it saves last.ckpt and exits 128 + signum; resume it."""
    fit = ["fit", *(str(CONFIGS / a.removeprefix("configs/")) if a.startswith("configs/") else a for a in FAST),
           "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
           "--trainer.logger.init_args.flush_logs_every_n_steps=1"]  # metrics.csv appears after the first step
    with open(tmp_path / "out.log", "w") as out:
        run = subprocess.Popen([MODULE14, *fit, "--trainer.max_steps=3000"], cwd=tmp_path, stdout=out,
                               stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob("runs/**/metrics.csv")) and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        run.send_signal(signum)
        assert run.wait(timeout=300) == exit_code, (tmp_path / "out.log").read_text()[-3000:]
    (last,) = tmp_path.glob("runs/**/last.ckpt")
    epoch, step = saved_position(last)
    assert epoch == 0 and 0 < step < 3000  # mid-epoch
    log = (tmp_path / "out.log").read_text()
    assert f"Stopped by {signum.name}" in log and f"--ckpt_path {last}" in log
    assert not list(tmp_path.glob("runs/**/.*.tmp"))
    resumed = module14(*fit, f"--trainer.max_steps={step + 2}", f"--ckpt_path={last}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (after,) = (p for p in tmp_path.glob("runs/**/last.ckpt") if p != last)
    assert saved_position(after) == (0, step + 2)


def test_atomic_file_keeps_the_old_content_when_the_write_fails(tmp_path):
    target = tmp_path / "predictions.csv"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt), atomic_file(target) as temporary:
        temporary.write_text("half of the new")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]


def test_full_disk_during_a_checkpoint_write_is_one_clear_error_and_keeps_the_earlier_one(tmp_path, monkeypatch):
    io, path = SafeCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}, "global_step": 1}, path)

    def half_then_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", half_then_full)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint '.*last.ckpt': No space left on device "
                                                   r"\(.* free in '.*checkpoints'\).*earlier checkpoints are untouched"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}, "global_step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary file left


def test_full_disk_during_fit_keeps_the_earlier_checkpoints(run_cli, tmp_path, monkeypatch):
    save, calls = torch.save, []

    def full_from_the_third_save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) >= 3:  # epoch 0 wrote the best and last.ckpt
            f.write(b"half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_from_the_third_save)
    with pytest.raises(CheckpointWriteError, match="No space left on device"):
        run_cli("fit", *FAST, "--trainer.max_epochs=3", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1")
    monkeypatch.undo()
    (folder,) = tmp_path.glob("runs/**/checkpoints")
    assert len(list(folder.glob("*.ckpt"))) == 2 and not list(folder.glob(".*"))
    for checkpoint in folder.glob("*.ckpt"):
        assert saved_position(checkpoint) == (0, 2)
