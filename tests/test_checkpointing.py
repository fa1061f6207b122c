"""Runs that survive: last.ckpt is really the last, writes are atomic, what a killed write left is cleaned up
(signals: ``test_signals.py``)."""

from __future__ import annotations

import errno
import os
import socket
import time
from pathlib import Path

import pytest
import torch
from conftest import CSV_LOGGER, TINY_VIT

from training.checkpointing import CheckpointWriteError, SafeCheckpointIO, atomic_file, remove_interrupted_writes

FAST = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.precision=32-true",
        "--data.num_workers=0", "--data.batch_size=16", "--trainer.enable_model_summary=false"]


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


def test_interrupted_writes_are_removed_and_writes_in_progress_kept(tmp_path, monkeypatch):
    """What a SIGKILL mid-save left (its writer is gone, or it is over an hour old) goes; a write in progress stays."""
    host = socket.gethostname()
    names = {"dead": f".last.ckpt.4194305@{host}.0123abcd.tmp", "alive": f".last.ckpt.{os.getpid()}@{host}.89abcdef.tmp",
             "old_format_fresh": ".last.ckpt.0a1b2c3d.tmp", "old_format_stale": ".last.ckpt.4e5f6a7b.tmp",
             "other_host_fresh": ".last.ckpt.1@elsewhere.example.0badcafe.tmp", "not_ours": ".notes.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"half")
    os.utime(tmp_path / names["old_format_stale"], (time.time() - 7200,) * 2)
    assert sorted(remove_interrupted_writes(tmp_path)) == sorted([names["dead"], names["old_format_stale"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names.values()) - {names["dead"],
                                                                                       names["old_format_stale"]})
    with atomic_file(tmp_path / "last.ckpt") as temporary:  # the name atomic_file writes under says who writes it
        assert f".last.ckpt.{os.getpid()}@{host}." in temporary.name
        temporary.write_bytes(b"whole")
        assert remove_interrupted_writes(tmp_path) == [] and temporary.exists()


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
