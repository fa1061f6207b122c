"""Every flag the user types wins (issue 10), through the installed console script: inference settings chosen at
predict time over a checkpoint's, training settings that differ from a checkpoint's refused, ``--ckpt_path best|last``
in a new process, outputs you can find, one W&B run per experiment, quiet output, the data root in config.yaml."""

from __future__ import annotations

import re
import subprocess
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import DATA_DIR, ROOT, TINY_UNET, TINY_VIT, module14
from PIL import Image

from command_line.checkpoint_file import CheckpointError
from command_line.checkpoints import typed_model_args
from training.runs import RunNotFoundError

CONFIG = "configs/ddpm_mnist.yaml"
# A tiny DDPM with T = 10, so DDIM defaults to all 10 steps and a typed sampling_steps 5 is a different sampler run.
DDPM_T10 = ["--config", CONFIG, *TINY_UNET, "--model.init_args.num_timesteps=10", "--data.init_args.num_workers=0",
            "--data.init_args.batch_size=16", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.enable_model_summary=false", "--trainer.precision=32-true"]
NOISE = ("💡 Tip", "anonymous setting", "git root", "set_vital", "LeafSpec", "smaller than the logging interval",
         "estimate number of stepping batches")


def ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddpm_run(tmp_path_factory):
    """One fit of the tiny DDPM (2 batches, 1 epoch, W&B offline with log_model): (folder, fit's CompletedProcess)."""
    folder = tmp_path_factory.mktemp("ddpm_run")
    fit = module14("fit", *DDPM_T10, "--trainer.limit_train_batches=2", "--trainer.max_epochs=1",
                   "--trainer.logger.init_args.log_model=true", "--data.init_args.predict_size=4", cwd=folder)
    return folder, ok(fit)


def last_checkpoint(folder: Path) -> Path:
    (last,) = folder.glob("runs/module14/*/checkpoints/last.ckpt")
    return last


def pixels(folder: Path) -> np.ndarray:
    return np.stack([np.asarray(Image.open(p)) for p in sorted(folder.glob("0*.png"))])


def test_typed_sampler_settings_win_over_the_checkpoint_and_each_predict_gets_a_fresh_folder(ddpm_run):
    folder, _ = ddpm_run
    last = last_checkpoint(folder)
    predict = ["predict", *DDPM_T10, f"--ckpt_path={last}"]
    runs = {}
    for name, flags in {"ddim5": ["--model.init_args.sampling_steps=5", "--data.init_args.predict_size=5"],
                        "ddpm": ["--model.init_args.sampler", "ddpm", "--data.init_args.predict_size=3"],
                        "ddim5_eta0": ["--model.init_args.sampling_steps=5", "--model.init_args.ddim_eta", "0",
                                       "--data.init_args.predict_size=3"]}.items():
        before = set((folder / "outputs/ddpm_mnist").glob("*"))
        result = ok(module14(*predict, *flags, cwd=folder))
        (written,) = set((folder / "outputs/ddpm_mnist").glob("*")) - before  # a fresh folder per predict
        assert f"predict wrote {5 if name == 'ddim5' else 3} images and grid.png to {written}" in result.stderr
        runs[name] = written
    assert sorted(p.name for p in runs["ddpm"].iterdir()) == ["000000.png", "000001.png", "000002.png", "grid.png"]
    assert len(list(runs["ddim5"].glob("0*.png"))) == 5
    ddim5 = pixels(runs["ddim5"])[:3]
    assert not np.array_equal(ddim5, pixels(runs["ddpm"]))  # the DDPM sampler ran, not the checkpoint's DDIM
    assert not np.array_equal(ddim5, pixels(runs["ddim5_eta0"]))  # eta 0 ran, not the config's eta 1


def test_training_setting_that_differs_from_the_checkpoint_is_refused(ddpm_run):
    folder, _ = ddpm_run
    result = module14("predict", *DDPM_T10, f"--ckpt_path={last_checkpoint(folder)}",
                      "--model.init_args.num_timesteps=20", cwd=folder)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    message = r"--model.init_args.num_timesteps=20 differs from checkpoint .* trained with num_timesteps=10"
    assert re.search(message, result.stderr), result.stderr[-2000:]


def test_typed_value_a_data_link_overrides_is_refused(tmp_path):
    result = module14("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--model.init_args.num_classes", "5",
                      "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "--model.init_args.num_classes=5 but the datamodule provides num_classes=10" in result.stderr


def test_architecture_flag_with_a_checkpoint_is_refused_in_process(run_cli, vit_checkpoint):
    with pytest.raises(CheckpointError, match=r"--model.init_args.embed_dim=64 differs from checkpoint .* embed_dim=32"):
        run_cli("validate", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--model.embed_dim=64",
                "--trainer.logger=false", f"--ckpt_path={vit_checkpoint}")


def test_ckpt_path_best_resolves_from_the_newest_run(ddpm_run):
    folder, _ = ddpm_run
    best = ok(module14("test", *DDPM_T10, "--ckpt_path", "best", cwd=folder))
    (expected,) = last_checkpoint(folder).parent.glob("epoch000-*.ckpt")
    assert f"--ckpt_path best is {expected.resolve()}" in best.stderr


def test_ckpt_path_last_without_a_run_is_a_clear_error(run_cli):
    with pytest.raises(RunNotFoundError, match="--ckpt_path last: no run of this experiment"):
        run_cli("test", "--config", CONFIG, "--ckpt_path", "last")


def test_fit_says_where_its_files_are_quietly(ddpm_run):
    folder, fit = ddpm_run
    run = last_checkpoint(folder).parent.parent
    assert f"module14: run folder:      {run}" in fit.stderr
    assert f"module14: last checkpoint: {run / 'checkpoints/last.ckpt'}" in fit.stderr
    assert f"module14: best checkpoint: {run / 'checkpoints'}/epoch000-" in fit.stderr
    (wandb_run,) = folder.glob(f"runs/wandb/offline-run-*-{run.name}")
    assert f"module14: W&B run (offline): {wandb_run}; upload it with: wandb sync {wandb_run}" in fit.stderr
    assert sorted(p.name for p in (run / "images").iterdir()) == ["epoch000_samples.png", "epoch000_trajectory.png"]
    assert not [noise for noise in NOISE if noise in fit.stderr + fit.stdout]


def test_the_commands_fit_prints_run_as_typed_in_a_new_shell(ddpm_run, tmp_path):
    """``test it:`` and ``predict with it:`` name the run's config and best checkpoint; pasted into a new shell (here,
    one whose PATH lacks the environment module14 is installed in) they run."""
    folder, fit = ddpm_run
    commands = dict(re.findall(r"^module14: (test it|predict with it): +(.+)$", fit.stderr, flags=re.MULTILINE))
    assert set(commands) == {"test it", "predict with it"}
    best = next((last_checkpoint(folder).parent).glob("epoch000-*.ckpt"))
    for command in commands.values():
        assert command.endswith(f"--ckpt_path {best}")
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
    assert list((tmp_path / "outputs").glob("*/*/grid.png"))


def test_resume_continues_the_w_and_b_run_and_run_folder_and_predict_joins_its_group(ddpm_run, tmp_path):
    shutil.copytree(ddpm_run[0] / "runs", tmp_path / "runs")
    run_id = last_checkpoint(tmp_path).parent.parent.name
    assert torch.load(last_checkpoint(tmp_path), weights_only=True)["wandb_run"] == {"id": run_id, "group": run_id}
    ok(module14("fit", *DDPM_T10, "--trainer.limit_train_batches=2", "--trainer.max_epochs=2", "--ckpt_path", "last",
                cwd=tmp_path))
    assert [p.name for p in (tmp_path / "runs/module14").iterdir()] == [run_id]  # the same run folder
    assert torch.load(last_checkpoint(tmp_path), weights_only=True)["epoch"] == 1
    assert len(list(tmp_path.glob(f"runs/wandb/offline-run-*-{run_id}"))) == 2  # fit and its resume: one run id
    before = set(tmp_path.glob("runs/wandb/offline-run-*"))
    ok(module14("predict", *DDPM_T10, "--ckpt_path", "last", "--data.init_args.predict_size=2", cwd=tmp_path))
    (predict_run,) = set(tmp_path.glob("runs/wandb/offline-run-*")) - before
    assert not predict_run.name.endswith(run_id)  # its own run ...
    assert run_id.encode() in next(predict_run.glob("run-*.wandb")).read_bytes()  # ... in the training run's group


def test_data_root_recorded_in_print_config_and_config_yaml(ddpm_run, capsys):
    from cli import build_cli

    resolved = str(DATA_DIR.resolve())
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(ROOT / "configs/vit_mnist.yaml"), "--print_config"])
    assert yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]["data_dir"] == resolved
    saved = yaml.safe_load((last_checkpoint(ddpm_run[0]).parent / "config.yaml").read_text())
    assert saved["data"]["init_args"]["data_dir"] == resolved


def test_typed_model_args_reads_flags_later_configs_and_model_yaml(tmp_path):
    later = tmp_path / "later.yaml"
    later.write_text("model:\n  init_args:\n    ddim_eta: 0.5\n")
    argv = ["predict", "--config", "first.yaml", "--model.init_args.sampler=ddpm", "--model.sampling_steps", "3",
            "-c", str(later), "--model", "{init_args: {noise_seed: 7}}", "--data.batch_size=2"]
    assert typed_model_args(argv) == {"sampler", "sampling_steps", "ddim_eta", "noise_seed"}


# A tiny ViT for two training steps, through the console script: enough to see that the run happened.
TWO_STEPS = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.max_steps=2", "--trainer.limit_val_batches=1",
             "--data.init_args.num_workers=0", "--trainer.enable_model_summary=false"]


def test_progress_bar_flag_wins_over_the_configs_progress_bar_callback(tmp_path):
    result = ok(module14("fit", *TWO_STEPS, "--trainer.enable_progress_bar=false", cwd=tmp_path))
    assert "trainer.enable_progress_bar=false: dropped the config's RichProgressBar callback" in result.stderr
    assert "Epoch 0/" not in result.stdout + result.stderr  # no progress bar drawn
    assert list(tmp_path.glob("runs/module14/*/checkpoints/last.ckpt"))


def test_logger_false_drops_the_callbacks_that_need_a_logger(tmp_path):
    result = ok(module14("fit", *TWO_STEPS, "--trainer.logger=false", cwd=tmp_path))
    assert "trainer.logger=false: dropped the config's LearningRateMonitor callback (it needs a logger)" in result.stderr
    assert (tmp_path / "checkpoints/last.ckpt").is_file()  # no logger: the trainer's default_root_dir
    assert not (tmp_path / "runs").exists()


def test_logger_typed_without_its_save_dir_writes_under_runs(tmp_path):
    result = ok(module14("fit", *TWO_STEPS, "--trainer.logger=CSVLogger", cwd=tmp_path))
    assert "CSVLogger writes under runs/ (--trainer.logger.init_args.save_dir chooses)" in result.stderr
    assert (tmp_path / "runs/lightning_logs/version_0/metrics.csv").is_file()
    assert (tmp_path / "runs/lightning_logs/version_0/checkpoints/last.ckpt").is_file()


def test_bad_model_value_is_one_line_naming_the_setting(tmp_path):
    """A value the model's constructor refuses: exit 1 with its message alone, not jsonargparse's Union report."""
    result = module14("fit", *DDPM_T10, "--model.init_args.ddim_eta=3", "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "error: model.ddim_eta=3.0 must be in [0, 1]" in result.stderr
    assert "Union subtypes" not in result.stderr and "Namespace(" not in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.rglob("*.ckpt"))
