"""Bad input gives one clear error saying what is wrong and how to fix it, and loses nothing already saved."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import CSV_LOGGER, ROOT, TINY_VIT, module14

from command_line.checkpoint_file import CheckpointError
from training.stopping import NonFiniteLossError

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


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("MODULE14_MODULES", "rank_state")  # a test model outside module14, imported on purpose
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
    older = {**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], "arch": "vit", "old_flag": 1}}
    nan = {**checkpoint, "state_dict": {k: v * float("nan") if v.is_floating_point() else v
                                        for k, v in checkpoint["state_dict"].items()}}
    contents = {"empty": None, "tensor": torch.zeros(3), "list": [1, 2], "no_state_dict": {"epoch": 1}, "nan_weights": nan,
                "pickled_code": {**checkpoint, "hook": _RunsCode()}, "missing_key": missing, "wrong_shape": shapes, "class_from_another_module": other_module,
                "older_module14": older}
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
    ("older_module14", r"written by another version of module14: ViTClassifier takes no hyperparameter\(s\) arch, "
                       r"old_flag \(arch is now architecture\)\. Train a new run"),
    ("nan_weights", r"holds NaN or infinite weights \(.* and \d+ more\): it was saved after training diverged"),
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


def test_feature_classifier_reads_its_normalisation_from_the_checkpoint_and_imports_nothing(tmp_path, vit_checkpoint):
    from lightning_modules.metrics import ClassifierFeatures

    checkpoint = torch.load(vit_checkpoint, weights_only=True)
    checkpoint["datamodule_hyper_parameters"]["_class_path"] = "this.MNISTDataModule"
    torch.save(checkpoint, tmp_path / "other.ckpt")
    features = ClassifierFeatures(str(tmp_path / "other.ckpt"))
    assert features.mean.flatten().tolist() == pytest.approx([0.1307]) and "this" not in sys.modules
    del checkpoint["hyper_parameters"]["normalization_mean_std"]  # a checkpoint from before it was recorded
    torch.save(checkpoint, tmp_path / "old.ckpt")
    with pytest.raises(ValueError, match="does not record the mean/std"):
        ClassifierFeatures(str(tmp_path / "old.ckpt"))


# --- settings checked before any work: exit 1, one paragraph naming the key, the value and the fix ---------------
SETTINGS = {
    "precision_64": (["fit", "--config", "configs/vit_mnist.yaml", "--trainer.precision=64-true"],
                     "trainer.precision=64-true is not supported by module14: use 32-true, bf16-mixed, 16-mixed"),
    "sampling_steps_over_T": (["fit", "--config", "configs/ddpm_mnist.yaml", "--model.init_args.sampling_steps=2000"],
                              "model.sampling_steps=2000 must be in [1, T=1000]"),
    "ddim_eta_negative": (["fit", "--config", "configs/ddpm_mnist.yaml", "--model.init_args.ddim_eta=-1"],
                          "model.ddim_eta=-1.0 must be in [0, 1]"),
    "ddim_eta_5": (["fit", "--config", "configs/ddpm_mnist.yaml", "--model.init_args.ddim_eta=5"],
                   "model.ddim_eta=5.0 must be in [0, 1]"),
    "num_timesteps_0": (["fit", "--config", "configs/ddpm_mnist.yaml", "--model.init_args.num_timesteps=0"],
                        "model.num_timesteps=0: the diffusion needs T >= 1"),
    "fid_one_sample": (["fit", "--config", "configs/ddpm_mnist.yaml", "--trainer.callbacks+=SampleQualityMonitor",
                        "--trainer.callbacks.num_samples=1"],
                       "SampleQualityMonitor(num_samples=1, every_n_epochs=1): FID/KID need num_samples >= 2"),
    "gan_on_zero_one_data": (["fit", "--config", "configs/gan_mnist.yaml", "--data.init_args.normalization=zero_one"],
                             "GANModule needs data in [-1, 1] (the generator's Tanh), but the data's value range is "
                             "[0.0, 1.0]. Set data.init_args.normalization: minus_one_one."),
    "vae_on_standardised_data": (["fit", "--config", "configs/vae_mnist.yaml",
                                  "--data.init_args.normalization=mean_std"],
                                 "but the data's value range is standardised (mean_std). Set "
                                 "data.init_args.normalization: zero_one."),
    "image_sampler_0_images": (["fit", "--config", "configs/ddpm_mnist.yaml", "--trainer.callbacks+=ImageSampler",
                                "--trainer.callbacks.init_args.num_images=0"],
                               "ImageSampler(num_images=0, every_n_epochs=1): both must be >= 1"),
    "val_size_0_fit": (["fit", "--config", "configs/vit_mnist.yaml", "--data.val_size=0"],
                       "data.val_size=0 holds out no validation images, but trainer.callbacks monitor val/acc"),
    "val_size_0_validate": (["validate", "--config", "configs/vit_mnist.yaml", "--data.val_size=0"],
                            "data.val_size=0: validate has no validation images"),
    "predict_size_0": (["predict", "--config", "configs/vit_mnist.yaml", "--data.predict_size=0"],
                       "data.predict_size=0 would predict no image"),
    "predict_size_negative": (["predict", "--config", "configs/vit_mnist.yaml", "--data.predict_size=-5"],
                              "data.predict_size=-5 would predict no image"),
}


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_bad_setting_stops_before_any_work(tmp_path, monkeypatch, capsys, case):
    """``main`` (the console script's function) in-process: exit 1 and the message, no traceback, nothing trained."""
    from cli import main

    args, message = SETTINGS[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MODULE14_TRACEBACK", raising=False)
    resolved = [str(ROOT / a) if a.startswith("configs/") else a for a in args]
    assert main([*resolved, *CSV_LOGGER, "--trainer.precision=32-true"] if case != "precision_64" else
                [*resolved, *CSV_LOGGER]) == 1
    stderr = capsys.readouterr().err
    assert message in stderr and "Traceback" not in stderr
    assert not list(tmp_path.glob("runs/**/*.ckpt"))


def test_predict_without_a_checkpoint_warns_that_the_weights_are_random(tmp_path):
    result = module14("predict", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--data.predict_size=2",
                      "--data.num_workers=0", "--trainer.precision=32-true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "module14: predict without --ckpt_path: the model's weights are random" in result.stderr


def test_predictions_csv_path_that_is_a_folder(run_cli, tmp_path, vit_checkpoint):
    (tmp_path / "preds").mkdir()
    with pytest.raises(IsADirectoryError, match=r"output_file '.*preds' is a folder; it must name the CSV file"):
        run_cli("predict", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--data.predict_size=4",
                f"--trainer.callbacks.output_file={tmp_path}/preds", f"--ckpt_path={vit_checkpoint}")


@pytest.mark.parametrize("change, named", [("--data.seed=1", "data.seed=42 -> 1"),
                                           ("--data.val_size=1000", "data.val_size=5000 -> 1000")])
def test_resuming_with_another_data_split_is_refused(run_cli, vit_checkpoint, change, named):
    with pytest.raises(CheckpointError, match=rf"with another train/val split \({named}\)"):
        run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, change,
                f"--ckpt_path={vit_checkpoint}")


def test_resuming_with_a_longer_cosine_schedule_warns_naming_the_change(run_cli, vit_checkpoint):
    """The checkpoint's cosine schedule spans 4 steps and ended at lr 0; 6 steps re-stretch it: the LR jumps."""
    with pytest.warns(UserWarning, match=r"resuming with another run length \(trainer.max_steps 4 -> 6\): the "
                                         r"learning-rate schedule now spans 6 steps instead of the checkpoint's 4, so "
                                         r"at step 4 the learning rate jumps from 0 to 0.0005"):
        run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.max_steps=6",
                "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false", f"--ckpt_path={vit_checkpoint}")
