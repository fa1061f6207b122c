"""Exact resumption: a run resumed from a mid-epoch checkpoint ends with the same weights as an uninterrupted run."""

from __future__ import annotations

import pytest
import torch
from conftest import CSV_LOGGER, TINY_VIT

DETERMINISTIC = ["--trainer.accelerator=cpu", "--trainer.precision=32-true", "--trainer.deterministic=true",
                 "--data.num_workers=0", "--data.augment=none", "--trainer.limit_val_batches=0",
                 "--trainer.enable_model_summary=false"]


def checkpoint_every(steps: int) -> list[str]:
    return ["--trainer.callbacks+=ModelCheckpoint", f"--trainer.callbacks.init_args.every_n_train_steps={steps}",
            "--trainer.callbacks.init_args.save_top_k=-1", "--trainer.callbacks.init_args.dirpath=mid",
            "--trainer.callbacks.init_args.filename={step}"]


def resume_matches_uninterrupted(run_cli, tmp_path, config: list[str], total_steps: int, resume_step: int = 3,
                                 last: tuple[str, ...] = ()) -> None:
    """Train ``total_steps`` with a checkpoint every ``resume_step`` steps; resume from the first in a new run; the
    weights (EMA copies included) and every optimizer's state must equal the uninterrupted run's, bit for bit.
    ``last``: arguments after ``DETERMINISTIC``'s."""
    run = [*config, *CSV_LOGGER, *DETERMINISTIC, *last]
    uninterrupted = run_cli("fit", *run, *checkpoint_every(resume_step), f"--trainer.max_steps={total_steps}")
    mid = tmp_path / f"mid/step={resume_step}.ckpt"
    assert torch.load(mid, weights_only=True)["global_step"] == resume_step
    resumed = run_cli("fit", *run, f"--trainer.max_steps={total_steps}", f"--ckpt_path={mid}")
    assert resumed.trainer.global_step == uninterrupted.trainer.global_step == total_steps
    expected, actual = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{key} differs after resuming")
    assert len(resumed.trainer.optimizers) == len(uninterrupted.trainer.optimizers)
    for expected_opt, actual_opt in zip(uninterrupted.trainer.optimizers, resumed.trainer.optimizers):
        torch.testing.assert_close(actual_opt.state_dict()["state"], expected_opt.state_dict()["state"], rtol=0, atol=0)


def test_vit_resumes_exactly_mid_epoch(run_cli, tmp_path):
    # dropout > 0: the resumed run must also replay the RNG, not only weights, optimizer and data position
    resume_matches_uninterrupted(run_cli, tmp_path, ["--config", "configs/vit_mnist.yaml", *TINY_VIT,
                                                     "--model.dropout=0.2", "--data.batch_size=16"], total_steps=7)


def test_resume_without_rng_state_would_differ(run_cli, tmp_path):
    """The test above can fail: drop the saved RNG state and the resumed weights differ."""
    from training.rng import RNGStateCheckpoint

    original = RNGStateCheckpoint.load_state_dict
    RNGStateCheckpoint.load_state_dict = lambda self, state: None
    try:
        with pytest.raises(AssertionError, match="differs after resuming"):
            resume_matches_uninterrupted(run_cli, tmp_path, ["--config", "configs/vit_mnist.yaml", *TINY_VIT,
                                                             "--model.dropout=0.2", "--data.batch_size=16"], total_steps=7)
    finally:
        RNGStateCheckpoint.load_state_dict = original


@pytest.mark.parametrize("restore_count", [True, False])
def test_vit_resumes_exactly_with_batched_augmentation(run_cli, tmp_path, monkeypatch, restore_count):
    """``augment: basic`` draws from a stream keyed by the count of batches augmented, which checkpoints hold: the
    resumed run draws the uninterrupted run's shifts. Negative control: a resume that does not restore the count
    draws others, and the weights differ."""
    from datamodules.base import ImageDataModule

    if not restore_count:
        monkeypatch.setattr(ImageDataModule, "load_state_dict", lambda self, state: None)
    resume = lambda: resume_matches_uninterrupted(  # noqa: E731
        run_cli, tmp_path, ["--config", "configs/vit_mnist.yaml", *TINY_VIT, "--data.batch_size=16"], total_steps=6,
        last=("--data.augment=basic",))
    if restore_count:
        resume()
    else:
        with pytest.raises(AssertionError, match="differs after resuming"):
            resume()


def test_gan_resumes_exactly_with_ema_and_both_optimizers(run_cli, tmp_path):
    # global_step counts D and G steps (2 per batch): resume after 2 batches, end after 4
    resume_matches_uninterrupted(run_cli, tmp_path, ["--config", "configs/gan_mnist.yaml", "--model.hidden_dim=32",
                                                     "--model.ema_decay=0.9", "--data.batch_size=16"],
                                 total_steps=8, resume_step=4)


def test_vit_resumes_exactly_after_sigterm(run_cli, tmp_path, user_signal_handlers):
    """SIGTERM mid-epoch: the checkpoint SaveOnSignal writes as last.ckpt resumes to the uninterrupted run's weights."""
    run = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, "--model.dropout=0.2", "--data.batch_size=16",
           *CSV_LOGGER, *DETERMINISTIC, "--trainer.max_steps=7"]
    uninterrupted = run_cli("fit", *run)
    with pytest.raises(SystemExit) as stopped:
        run_cli("fit", *run, "--trainer.callbacks+=rank_state.SignalAtStep", "--trainer.callbacks.init_args.signum=15",
                "--trainer.callbacks.init_args.step=2")
    assert stopped.value.code == 143
    (last,) = tmp_path.glob("runs/lightning_logs/version_1/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 3  # the batch in flight finished, then it stopped
    resumed = run_cli("fit", *run, f"--ckpt_path={last}")
    assert resumed.trainer.global_step == 7
    expected, actual = uninterrupted.model.state_dict(), resumed.model.state_dict()
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=0, atol=0, msg=f"{key} differs after resuming")
