"""The shipped weights (``weights/``, ``training/pretrained.py``): pinned by sha256, loaded by ``--ckpt_path
pretrained`` for test and predict through the console script, refused when tampered with or when fit would resume
from them, and reproducing the figures of the RESULTS.md row they came from."""

from __future__ import annotations

import json
import re
import shlex
import subprocess

import pytest
import torch
from conftest import ROOT, module14

from training import pretrained

RECORDS = json.loads((ROOT / "docs" / "results" / "results.json").read_text())
SHIPPED_ROWS = sorted(name for name, record in RECORDS.items() if "weights" in record)


def test_every_shipped_file_matches_its_pin_and_every_record_names_its_pinned_file():
    check = subprocess.run(["sha256sum", "-c", pretrained.SUMS], cwd=pretrained.WEIGHTS, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    pins = pretrained.pins()
    assert "mnist_vit.pt" in pins and SHIPPED_ROWS
    for name in SHIPPED_ROWS:
        weights = RECORDS[name]["weights"]
        assert weights["file"] == f"weights/{name}.ckpt" and pins[f"{name}.ckpt"] == weights["sha256"], name
    tracked = subprocess.run(["git", "ls-files", "weights"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert sorted(tracked) == sorted(f"weights/{name}" for name in [*pins, pretrained.SUMS])  # a clone has them all


def test_the_shipped_vit_reproduces_its_rows_test_accuracy_through_the_console_script(tmp_path):
    """The command RESULTS.md prints under the vit_mnist row, run as a user types it: the same accuracy, exactly."""
    from benchmarks.results import pretrained_command

    command = shlex.split(pretrained_command("vit_mnist", RECORDS["vit_mnist"]))
    assert command[:2] == ["module14", "test"] and "--ckpt_path=pretrained" in command
    result = module14(*command[1:], "--trainer.logger=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--ckpt_path pretrained is " in result.stderr and "sha256 matches" in result.stderr
    accuracy = float(re.search(r"test/acc\s+│\s+([0-9.]+)", result.stdout).group(1))
    assert accuracy == pytest.approx(RECORDS["vit_mnist"]["runs"][0]["metrics"]["test/acc"], abs=1e-7)


GENERATIVE = [name for name in SHIPPED_ROWS if RECORDS[name]["generative"]]


@pytest.mark.parametrize("name", GENERATIVE)
def test_each_shipped_generative_model_loads_and_generates(name):
    from benchmarks.sampling import load_generative

    model = load_generative(pretrained.verified(f"{name}.ckpt"), "cpu").eval()
    images = model.generate(2, torch.Generator().manual_seed(0))
    assert images.shape == (2, *model.hparams.image_shape) and torch.isfinite(images).all()


def test_the_smallest_shipped_generative_model_predicts_through_the_console_script(tmp_path):
    assert GENERATIVE, "no generative row ships weights"
    name = min(GENERATIVE, key=lambda n: RECORDS[n]["weights"]["megabytes"])
    result = module14("predict", "--config", f"configs/{name}.yaml", "--ckpt_path", "pretrained",
                      "--data.init_args.predict_size=2", "--data.init_args.num_workers=0", "--trainer.logger=false",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "outputs").rglob("00000[01].png"))) == 2


def test_fit_cannot_resume_from_shipped_weights(tmp_path):
    result = module14("fit", "--config", "configs/vit_mnist.yaml", "--ckpt_path", "pretrained", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "is for validate, test and predict" in result.stderr
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.ckpt"))


def test_a_config_without_shipped_weights_is_told_which_configs_have_them(tmp_path):
    result = module14("test", "--config", "configs/vae_cifar10.yaml", "--ckpt_path", "pretrained", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "none ship for vae_cifar10" in result.stderr and "configs/vit_mnist.yaml" in result.stderr


def test_tampered_or_unpinned_shipped_weights_are_refused(tmp_path, monkeypatch):
    shipped = (pretrained.WEIGHTS / "vit_mnist.ckpt").read_bytes()
    (tmp_path / pretrained.SUMS).write_text((pretrained.WEIGHTS / pretrained.SUMS).read_text())
    monkeypatch.setattr(pretrained, "WEIGHTS", tmp_path)
    with pytest.raises(FileNotFoundError, match="git checkout weights/vit_mnist.ckpt"):
        pretrained.pretrained_checkpoint(["configs/vit_mnist.yaml"])
    (tmp_path / "vit_mnist.ckpt").write_bytes(shipped[:100] + bytes([shipped[100] ^ 1]) + shipped[101:])
    with pytest.raises(ValueError, match="not the pinned"):
        pretrained.pretrained_checkpoint(["configs/vit_mnist.yaml"])
    (tmp_path / "vit_mnist.ckpt").write_bytes(shipped)
    assert pretrained.pretrained_checkpoint(["configs/base.yaml", "configs/vit_mnist.yaml"]) == str(
        tmp_path / "vit_mnist.ckpt")
    (tmp_path / "extra.ckpt").write_bytes(shipped)
    with pytest.raises(ValueError, match="is not pinned"):
        pretrained.verified("extra.ckpt")


def test_ship_keeps_the_weights_only_and_pins_them(tmp_path):
    checkpoint = {"state_dict": {"net.w": torch.arange(3.0)}, "hyper_parameters": {"lr": 0.1}, "global_step": 7,
                  "optimizer_states": [{"state": {}}], "loops": {}, "callbacks": {"EMA": {}},
                  "datamodule_hyper_parameters": {"data_dir": "/home/someone/data", "batch_size": 8}}
    digest = pretrained.ship(checkpoint, "b.ckpt", tmp_path)
    pretrained.ship(checkpoint, "a.ckpt", tmp_path)
    assert (tmp_path / pretrained.SUMS).read_text().splitlines() == [f"{digest}  a.ckpt", f"{digest}  b.ckpt"]
    kept = torch.load(pretrained.verified("b.ckpt", tmp_path), weights_only=True)
    assert sorted(kept) == ["datamodule_hyper_parameters", "global_step", "hyper_parameters", "state_dict"]
    assert kept["datamodule_hyper_parameters"] == {"data_dir": None, "batch_size": 8}
    assert torch.equal(kept["state_dict"]["net.w"], torch.arange(3.0))
