"""What a user types: the installed ``module14`` console script in a subprocess, fit -> test -> predict for every
family, with exit codes and the files written; failures exit non-zero with a message and no traceback."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROOT, TINY_DDPM, TINY_VIT, module14, predict_folder

# Each family's CPU config, shrunk so that every command runs in seconds in fp32.
FAMILIES = {
    "vit": ("configs/vit_mnist.yaml", TINY_VIT),
    "vae": ("configs/vae_mnist.yaml", ["--model.init_args.hidden_dim=32", "--model.init_args.test_iwae_samples=4"]),
    "gan": ("configs/dcgan_mnist.yaml", ["--model.init_args.feature_maps=8"]),
    "diffusion": ("configs/ddpm_mnist.yaml", TINY_DDPM),
}
SMALL_RUN = ["--data.init_args.num_workers=0", "--data.init_args.batch_size=16", "--trainer.limit_val_batches=2",
             "--trainer.limit_test_batches=2", "--trainer.enable_model_summary=false"]


def ok(result) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "<cli.Module14CLI object" not in result.stdout + result.stderr


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fit_test_predict_through_the_console_script(tmp_path, family):
    config, shrink = FAMILIES[family]
    args = ["--config", config, *shrink, *SMALL_RUN]
    fit = module14("fit", *args, "--trainer.max_steps=2", "--trainer.max_epochs=1", cwd=tmp_path)
    ok(fit)
    assert "module14: precision " in fit.stderr  # the resolver says what it chose and why
    (last,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] >= 2 and checkpoint["state_dict"]
    assert (last.parent / "config.yaml").is_file()
    assert list(tmp_path.glob("runs/wandb/offline-run-*/run-*.wandb"))  # logged to W&B, offline

    ok(module14("test", *args, f"--ckpt_path={last}", cwd=tmp_path))

    ok(module14("predict", *args, f"--ckpt_path={last}", "--data.init_args.predict_size=3", cwd=tmp_path))
    outputs = tmp_path / "outputs" / config.removeprefix("configs/").removesuffix(".yaml")
    if family == "vit":
        with open(outputs / "predictions.csv") as f:
            assert [int(row["index"]) for row in csv.DictReader(f)] == [0, 1, 2]
    else:
        assert sorted(p.name for p in predict_folder(outputs).glob("*.png")) == ["000000.png", "000001.png", "000002.png",
                                                                                 "grid.png"]


def test_fid_is_switched_on_and_sized_from_the_command_line_for_fit_and_test(tmp_path, vit_checkpoint):
    config, shrink = FAMILIES["gan"]
    args = ["--config", config, *shrink, *SMALL_RUN, "--trainer.logger=CSVLogger",
            "--trainer.logger.init_args.save_dir=runs"]
    fid = ["--trainer.callbacks+=SampleQualityMonitor", "--trainer.callbacks.num_samples=12",
           f"--trainer.callbacks.classifier_checkpoint={vit_checkpoint}", "--trainer.callbacks.kid_subset_size=4"]
    ok(module14("fit", *args, *fid, "--trainer.limit_train_batches=2", "--trainer.max_epochs=1", cwd=tmp_path))
    (metrics,) = tmp_path.glob("runs/**/metrics.csv")
    with open(metrics) as f:
        assert any(row.get("val/fid_vit") for row in csv.DictReader(f))
    (last,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    on = module14("test", *args, *fid, f"--ckpt_path={last}", cwd=tmp_path)
    ok(on)
    assert "test/fid_vit" in on.stdout and "test/kid_vit" in on.stdout
    off = module14("test", *args, f"--ckpt_path={last}", cwd=tmp_path)  # without the callback: no FID
    ok(off)
    assert "test/d_loss" in off.stdout and "test/fid_vit" not in off.stdout


def test_failures_exit_non_zero_with_a_message_and_no_traceback(tmp_path):
    bad_key = module14("fit", "--config", "configs/vit_mnist.yaml", "--model.embed_dimm=64", cwd=tmp_path)
    assert bad_key.returncode == 2 and "embed_dimm" in bad_key.stderr

    missing = module14("fit", "--config", "configs/vit_mnist.yaml", f"--data.data_dir={tmp_path}/empty",
                       "--data.download=false", "--trainer.fast_dev_run=true", cwd=tmp_path)
    assert missing.returncode == 1 and "MNIST not found under data root" in missing.stderr

    (tmp_path / "truncated.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    corrupt = module14("test", "--config", "configs/vit_mnist.yaml", "--ckpt_path=truncated.ckpt", cwd=tmp_path)
    assert corrupt.returncode == 1 and "cannot read checkpoint" in corrupt.stderr

    for result in (bad_key, missing, corrupt):
        assert "Traceback" not in result.stderr


def test_print_config_exits_zero_and_prints_only_the_config(tmp_path):
    import yaml

    result = module14("fit", "--config", "configs/vit_mnist.yaml", "--print_config", cwd=tmp_path)
    assert result.returncode == 0
    assert yaml.safe_load(result.stdout)["model"]["class_path"] == "lightning_modules.ViTClassifier"


def test_inception_features_without_torch_fidelity_name_the_extra(tmp_path, monkeypatch):
    """The base install leaves torch-fidelity out; asking for Inception features says which extra brings it."""
    import importlib.util

    from lightning_modules.metrics import InceptionFeatures

    weights = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    weights.write_bytes(b"")
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch_fidelity" else find_spec(name, *a))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'module14\[inception\]'"):
        InceptionFeatures(str(weights))


STOPPABLE_SUITE = '''
import os
import lightning as L
from conftest import TINY_VIT


class Started(L.Callback):
    def on_train_batch_start(self, *args):
        open(os.environ["STARTED"], "w").close()


def test_trains_until_stopped(run_cli):
    run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.logger=CSVLogger",
            "--trainer.logger.init_args.save_dir=runs", "--trainer.max_steps=100000",
            "--trainer.limit_val_batches=0", "--data.num_workers=0", "--trainer.callbacks+=test_stoppable.Started")


def test_after():
    open(os.environ["AFTER"], "w").close()
'''


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_test_suite_even_inside_a_trainer(tmp_path, signum):
    """Lightning catches Ctrl-C inside fit (and turns SIGTERM into a SystemExit): the suite must still stop."""
    (tmp_path / "test_stoppable.py").write_text(STOPPABLE_SUITE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(tmp_path)]),
           "STARTED": str(tmp_path / "started"), "AFTER": str(tmp_path / "after")}
    suite = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider",
                              str(tmp_path / "test_stoppable.py")], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "started").exists() and suite.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert (tmp_path / "started").exists(), suite.communicate()[0][-3000:]
    suite.send_signal(signum)
    output = suite.communicate(timeout=60)[0]
    assert suite.returncode == 128 + signum, output[-3000:]
    assert not (tmp_path / "after").exists()  # the tests after it did not run
