"""No silent wrong numbers (issue 36): options that would do nothing are refused, metrics refuse what would make them
NaN, a resume that cannot stay exact says why, names never import or expand, and every error module14 raises is one
paragraph."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import CSV_LOGGER, ROOT, TINY_DDPM, TINY_VIT, module14

from command_line.checkpoint_file import CheckpointError, read_checkpoint

VIT = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--data.num_workers=0", "--data.batch_size=16",
       "--trainer.enable_model_summary=false"]


# --- options that would do nothing ---------------------------------------------------------------------------------
def test_a_typed_setting_the_sampler_ignores_is_refused_naming_it(run_cli):
    ddpm = ["--config", "configs/ddpm_mnist.yaml", *TINY_DDPM, *CSV_LOGGER]
    with pytest.raises(ValueError, match=r"--model.init_args.ddim_eta=0.5 does nothing here: DDIM's η applies to "
                                         r"sampler ddim, and dpm_solver takes none"):
        run_cli("predict", *ddpm, "--model.init_args.sampler=dpm_solver", "--model.init_args.ddim_eta=0.5", run=False)
    # the config's own η (1.0, for its DDIM grids) is not typed: choosing another sampler at predict is fine
    assert run_cli("predict", *ddpm, "--model.init_args.sampler=dpm_solver", run=False).model.hparams.ddim_eta == 1.0


def test_a_predict_grid_of_no_images_is_refused():
    from lightning_modules.callbacks import ImageWriter

    for size in (0, -3):
        with pytest.raises(ValueError, match=rf"ImageWriter\(grid_size={size}\) would write no grid.png"):
            ImageWriter(grid_size=size)


# --- metrics that refuse NaN -----------------------------------------------------------------------------------------
def test_fid_refuses_a_feature_network_with_a_nan_weight_and_nan_images(tmp_path):
    from test_gan import tiny_vit_checkpoint

    from lightning_modules.metrics import NonFiniteFeaturesError, SampleQuality

    good = tiny_vit_checkpoint(tmp_path / "vit.ckpt", channels=1, size=16)
    quality = SampleQuality(classifier_checkpoint=str(good), kid_subset_size=4)
    with pytest.raises(NonFiniteFeaturesError, match="the generated images hold NaN or infinite pixels"):
        quality.update(torch.full((4, 1, 16, 16), float("nan")), real=False)
    checkpoint = torch.load(good, weights_only=True)
    first = next(k for k in checkpoint["state_dict"] if k.endswith("weight"))
    checkpoint["state_dict"][first][0] = float("nan")
    torch.save(checkpoint, tmp_path / "nan.ckpt")
    with pytest.raises(NonFiniteFeaturesError, match=rf"from '.*nan.ckpt' holds NaN or infinite weights \({first[4:]}\)"):
        SampleQuality(classifier_checkpoint=str(tmp_path / "nan.ckpt"))


def test_validating_a_checkpoint_on_a_split_that_overlaps_its_training_images_is_refused(run_cli, vit_checkpoint):
    with pytest.raises(CheckpointError, match=r"validating '.*' with another train/val split \(data.seed=42 -> 7\)"):
        run_cli("validate", *VIT, "--data.seed=7", f"--ckpt_path={vit_checkpoint}")  # refused before any work


# --- a resume that cannot stay exact says why --------------------------------------------------------------------------
def test_nan_optimizer_state_is_refused_at_load(tmp_path, vit_checkpoint):
    checkpoint = torch.load(vit_checkpoint, weights_only=True)
    state = next(iter(checkpoint["optimizer_states"][0]["state"].values()))
    state["exp_avg"][...] = float("nan")
    torch.save(checkpoint, tmp_path / "nan_adam.ckpt")
    with pytest.raises(CheckpointError, match="holds NaN or infinite optimizer state"):
        read_checkpoint(str(tmp_path / "nan_adam.ckpt"))


def mid_epoch_checkpoint(run_cli, tmp_path) -> Path:
    run_cli("fit", *VIT, "--trainer.max_steps=3", "--trainer.limit_val_batches=0")
    (last,) = tmp_path.glob("runs/**/last.ckpt")
    return last


def test_resuming_mid_epoch_with_another_batch_size_says_what_is_lost(run_cli, tmp_path, capsys):
    last = mid_epoch_checkpoint(run_cli, tmp_path)
    capsys.readouterr()
    run_cli("fit", *VIT, "--data.batch_size=32", "--trainer.max_steps=4", "--trainer.limit_val_batches=0",
            f"--ckpt_path={last}")
    assert ("module14: resuming 3 batches into an epoch with data.batch_size 16 -> 32: the rest of this epoch is not "
            "the images the checkpoint had left") in capsys.readouterr().err


def test_resuming_from_unreadable_random_states_says_the_run_will_not_retrace(run_cli, tmp_path):
    last = mid_epoch_checkpoint(run_cli, tmp_path)
    checkpoint = torch.load(last, weights_only=True)
    checkpoint["callbacks"]["RNGStateCheckpoint"] = {"rng_states": [{"torch": "not a state"}]}
    torch.save(checkpoint, tmp_path / "bad_rng.ckpt")
    with pytest.warns(UserWarning, match=r"random states were not restored: they are unreadable .*will not retrace"):
        run_cli("fit", *VIT, "--trainer.max_steps=4", "--trainer.limit_val_batches=0",
                f"--ckpt_path={tmp_path / 'bad_rng.ckpt'}")


# --- names that would import or expand -----------------------------------------------------------------------------
def test_a_class_path_outside_module14_is_refused_before_its_module_is_imported(tmp_path):
    (tmp_path / "evilmod.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\nclass ViTClassifier: pass\n")
    (tmp_path / "evil.yaml").write_text("data:\n  class_path: evilmod.ViTClassifier\n")
    for args in (["--model", "evilmod.ViTClassifier"], ["--model=evilmod.ViTClassifier"],
                 ["--config", str(tmp_path / "evil.yaml")]):
        done = module14("fit", "--config", "configs/vit_mnist.yaml", *args, cwd=tmp_path,
                        env={"PYTHONPATH": str(tmp_path)})
        assert done.returncode == 2 and "a class path outside them is not imported" in done.stderr, done.stderr
    assert not (tmp_path / "ran").exists()
    trusted = module14("fit", "--config", "configs/vit_mnist.yaml", "--model", "evilmod.ViTClassifier", cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "MODULE14_MODULES": "evilmod"})
    assert (tmp_path / "ran").exists() and trusted.returncode != 0  # imported as asked (and not a LightningModule)


def test_a_yaml_that_expands_without_bound_is_refused_before_it_is_expanded(tmp_path):
    rows = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"] + [
        f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    (tmp_path / "bomb.yaml").write_text("\n".join(rows) + "\n")  # 9 ** 9 values from 500 bytes
    done = module14("fit", "--config", "configs/vit_mnist.yaml", "--config", "bomb.yaml", cwd=tmp_path, timeout=60)
    assert done.returncode == 2
    assert "stands for 490,329,064 values once its YAML aliases are expanded" in done.stderr


def test_a_run_id_that_would_name_another_folder_is_refused():
    from training.runs import checked_run_id

    assert checked_run_id("ir3nuvpu") == "ir3nuvpu" and checked_run_id(None) is None
    for bad in ("../../etc", "a/b", "", 7):
        with pytest.raises(ValueError, match="which is not a run id"):
            checked_run_id(bad)


# --- one paragraph, never a traceback --------------------------------------------------------------------------------
def test_every_error_module14_raises_is_printed_as_one_paragraph():
    """Walks every exception class the project defines: each is one the console script prints as a message."""
    import importlib
    import pkgutil

    from cli import user_errors

    for package in ("command_line", "datamodules", "lightning_modules", "training"):
        importlib.import_module(package)
        for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            importlib.import_module(f"{package}.{info.name}")
    defined = {cls for name, module in list(sys.modules.items()) if name.split(".")[0] in
               ("command_line", "datamodules", "lightning_modules", "training", "compat", "cli")
               for cls in vars(module).values()
               if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == name
               and not cls.__name__.startswith("_")}
    assert len(defined) >= 8
    assert [cls.__name__ for cls in defined if not issubclass(cls, user_errors())] == []


def test_a_full_disk_that_torch_reports_as_a_runtime_error_is_one_clear_error(tmp_path, monkeypatch):
    from training.checkpointing import CheckpointWriteError, SafeCheckpointIO

    def full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file "
                           "data/3: file write failed")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointWriteError, match=r"cannot write checkpoint '.*last.ckpt': .*file write failed"):
        SafeCheckpointIO().save_checkpoint({"state_dict": {}}, tmp_path / "last.ckpt")
    assert os.listdir(tmp_path) == []  # no half-written file, under any name


def test_a_checkpoint_path_that_is_a_folder_names_the_checkpoints_in_it(run_cli, tmp_path, vit_checkpoint):
    with pytest.raises(CheckpointError, match=r"--ckpt_path '.*checkpoints' is a folder: pass a checkpoint file in it "
                                              r"\(.*last.ckpt"):
        run_cli("test", *VIT, f"--ckpt_path={vit_checkpoint.parent}")


def test_online_w_and_b_without_a_key_is_one_paragraph_not_a_traceback(tmp_path):
    done = module14("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.max_steps=1",
                    "--data.num_workers=0", cwd=tmp_path,
                    env={"WANDB_MODE": "online", "WANDB_API_KEY": "", "HOME": str(tmp_path), "WANDB_SILENT": "false"})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: W&B (online mode): No API key configured" in done.stderr and "wandb sync" in done.stderr


# --- --ckpt_path best|last: the run of this experiment, by identity -------------------------------------------------
def make_run(root: Path, name: str, lr: float, last: str = "last.ckpt", mtime: float | None = None) -> Path:
    """A run folder as module14 leaves it: config.yaml beside a last checkpoint."""
    import yaml

    folder = root / "module14" / name / "checkpoints"
    folder.mkdir(parents=True)
    config = {"model": {"class_path": "lightning_modules.ViTClassifier", "init_args": {"lr": lr, "embed_dim": 32}},
              "data": {"class_path": "datamodules.MNISTDataModule", "init_args": {"seed": 42, "batch_size": 16,
                                                                                  "data_dir": f"/data/{name}"}}}
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    torch.save({"global_step": 1, "callbacks": {}}, folder / last)
    if mtime is not None:
        os.utime(folder / last, (mtime, mtime))
    return folder / last


def identity(lr: float, batch_size: int = 16) -> str:
    from training.runs import experiment_identity

    return experiment_identity({"class_path": "ViTClassifier", "init_args": {"lr": lr, "embed_dim": 32}},
                               {"class_path": "MNISTDataModule", "init_args": {"seed": 42, "batch_size": batch_size,
                                                                               "data_dir": "/elsewhere"}})


def test_last_is_the_newest_run_of_this_experiment_not_of_another_sharing_its_config_name(tmp_path):
    from training.runs import run_checkpoint

    mine = make_run(tmp_path, "mine", lr=1e-3, mtime=1_000)
    make_run(tmp_path, "other_lr", lr=5e-4, mtime=2_000)  # newer, same config name and class, another experiment
    assert run_checkpoint("last", tmp_path, identity(1e-3)) == str(mine.resolve())
    # how the data are loaded (batch size, where from) is not the experiment
    assert run_checkpoint("last", tmp_path, identity(1e-3, batch_size=64)) == str(mine.resolve())
    resumed_twice = make_run(tmp_path, "twice", lr=1e-3, last="last-v1.ckpt", mtime=3_000)  # two fits in one folder
    assert run_checkpoint("last", tmp_path, identity(1e-3)) == str(resumed_twice.resolve())


def test_an_unreadable_run_record_or_a_tie_is_refused_with_the_candidates_named(tmp_path):
    from training.runs import RunNotFoundError, run_checkpoint

    make_run(tmp_path, "a", lr=1e-3, mtime=1_000)
    broken = make_run(tmp_path, "broken", lr=1e-3, mtime=500).with_name("config.yaml")
    broken.write_text("model: [unclosed")
    with pytest.raises(RunNotFoundError, match=rf"the record of 1 run\(s\) .* cannot be read.*{broken}"):
        run_checkpoint("last", tmp_path, identity(1e-3))
    broken.unlink()
    make_run(tmp_path, "b", lr=1e-3, mtime=1_000)
    with pytest.raises(RunNotFoundError, match="two runs of this experiment were written at the same moment"):
        run_checkpoint("last", tmp_path, identity(1e-3))


def test_the_filesystem_root_is_not_searched(tmp_path):
    from training.runs import RunNotFoundError, run_checkpoint

    with pytest.raises(RunNotFoundError, match="would search the whole filesystem"):
        run_checkpoint("last", "/", identity(1e-3))
