"""The real LightningCLI: every config trains one batch, checkpoints reload for validate/predict, configs are saved,
and bad input gives a clear error."""

import csv
import re
import warnings

import pytest
import torch
import yaml
from conftest import CPU_SIZED, CSV_LOGGER, SUBSET_OPT_IN, TINY_VIT, experiment_configs, module14, opt_in

from datamodules import DatasetNotFoundError




# The warnings a config may give, each telling the user something to act on: the shared CIFAR-10 / CelebA copies are
# partial subsets, loaded only because the tests opt in (verify_integrity=false), and a full download gives none; a GPU
# config's 4 DataLoader workers on a machine with fewer CPUs (torch names the fix: fewer data.num_workers).
ACTIONABLE = re.compile(r"^(CIFAR-10|CelebA)(: \d+ file\(s\) under .* differ from torchvision's md5| (train|test) split has"
                        r" \d+ images|: list_bbox_celeba.txt, list_landmarks_align_celeba.txt absent)"
                        r"|^This DataLoader will create \d+ worker processes in total. Our suggested max number of worker")


def one_batch(config) -> list[str]:
    """The config's run cut to one batch per stage: its network and data as configured (CPU-sized where it is GPU-sized),
    8 predicted images, and 2 sampling steps where the config sets a number of them (its wiring, not its sampler's
    cost, is under test: DDIM-50 on 64 images was most of this test's time)."""
    sampling = "sampling_steps" in yaml.safe_load(config.read_text())["model"].get("init_args", {})
    return ["--trainer.fast_dev_run=true", "--trainer.enable_model_summary=false", "--data.init_args.predict_size=8",
            *CPU_SIZED.get(config.stem, []), *(["--model.init_args.sampling_steps=2"] if sampling else []),
            *opt_in(config)]


@pytest.mark.parametrize("config", experiment_configs(), ids=lambda p: p.stem)
def test_every_config_fits_tests_and_predicts_one_batch_without_a_warning_to_ignore(run_cli, config):
    """Every warning fit, test and predict give is counted: none may be noise a user can do nothing about."""
    shrink = one_batch(config)
    with warnings.catch_warnings(record=True) as given:
        warnings.simplefilter("always")
        cli = run_cli("fit", "--config", str(config), *shrink)
        assert cli.trainer.state.finished and cli.trainer.global_step >= 1
        losses = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
        assert losses and all(torch.isfinite(torch.tensor(list(losses.values()))))
        for command in ("test", "predict"):
            assert run_cli(command, "--config", str(config), *shrink).trainer.state.finished
    noise = [f"{w.category.__name__}: {w.message}" for w in given
             if not issubclass(w.category, DeprecationWarning) and not ACTIONABLE.match(str(w.message))]
    assert noise == []


def test_fit_checkpoint_then_validate_and_predict(run_cli, tmp_path, vit_checkpoint):
    hparams = torch.load(vit_checkpoint, weights_only=True)["hyper_parameters"]
    assert hparams["image_shape"] == (1, 28, 28) and hparams["num_classes"] == 10  # linked from the datamodule
    assert "value_range" not in hparams  # a link ViTClassifier does not take is not recorded
    assert hparams["normalization_mean_std"] == ((0.1307,), (0.3081,))  # what FID on its features standardises with

    val = run_cli("validate", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER,
                  "--trainer.limit_val_batches=2", f"--ckpt_path={vit_checkpoint}")
    assert 0.0 <= float(val.trainer.callback_metrics["val/acc"]) <= 1.0

    run_cli("predict", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--data.predict_size=50",
            f"--ckpt_path={vit_checkpoint}")
    with open(tmp_path / "outputs/vit_mnist/predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(50))  # one row per image, in order
    for row in rows:
        probs = [float(row[f"prob_{k}"]) for k in range(10)]
        assert abs(sum(probs) - 1) < 1e-4 and int(row["prediction"]) == max(range(10), key=probs.__getitem__)
        assert 0 <= int(row["label"]) < 10


def test_config_saved_beside_checkpoints_and_in_wandb_twice_in_one_folder(run_cli, tmp_path):
    """Lightning's default SaveConfigCallback aborts the second W&B run in a folder; ours saves per run."""
    args = ["fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.max_steps=1",
            "--trainer.limit_val_batches=1", "--trainer.enable_model_summary=false"]
    import wandb

    dirs = []
    for _ in range(2):  # two runs, as two `module14 fit` commands would make (one process each)
        dirs.append(run_cli(*args).trainer.checkpoint_callback.dirpath)
        wandb.finish()
    assert dirs[0] != dirs[1]
    for folder in dirs:
        saved = yaml.safe_load(open(f"{folder}/config.yaml"))
        assert saved["model"]["init_args"]["embed_dim"] == 32 and saved["data"]["class_path"].endswith("MNISTDataModule")
    wandb_runs = list(tmp_path.glob("runs/wandb/offline-run-*/run-*.wandb"))  # offline runs, to sync later
    assert len(wandb_runs) == 2
    assert all(b'"embed_dim":32' in run.read_bytes() for run in wandb_runs)  # the config is in each W&B run


def test_print_config_resolves_short_class_names(capsys):
    from cli import build_cli

    with pytest.raises(SystemExit) as exit_:
        build_cli(args=["fit", "--model", "ViTClassifier", "--data", "MNISTDataModule", "--print_config"])
    assert exit_.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["model"]["class_path"] == "lightning_modules.ViTClassifier"
    assert printed["data"]["init_args"]["download"] is True


def test_unknown_model_class_is_a_clear_error(tmp_path):
    result = module14("fit", "--model", "NoSuchModel", "--data", "MNISTDataModule", cwd=tmp_path)
    assert result.returncode == 2
    assert "NoSuchModel" in result.stderr and "Traceback" not in result.stderr


def test_patch_size_not_dividing_image_size_is_a_clear_error(run_cli):
    with pytest.raises(ValueError, match="image size 28 is not divisible by patch size 5"):
        run_cli("fit", "--config", "configs/vit_mnist.yaml", "--model.patch_size=5", "--trainer.fast_dev_run=true")


def test_missing_data_root_is_a_clear_error(run_cli, tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MNIST not found under data root"):
        run_cli("fit", "--config", "configs/vit_mnist.yaml", f"--data.data_dir={tmp_path}/empty",
                "--data.download=false", "--trainer.fast_dev_run=true")


def test_classifier_on_a_dataset_without_classes_is_a_clear_error(run_cli):
    with pytest.raises(ValueError, match="needs a dataset with single-label classes"):
        run_cli("fit", "--config", "configs/vit_mnist.yaml", "--data=CelebADataModule",
                SUBSET_OPT_IN, "--trainer.fast_dev_run=true")


@pytest.mark.parametrize("config", ["vit_mnist", "gan_mnist"])
def test_configs_add_their_callbacks_to_the_shared_base(tmp_path, config):
    """configs/base.yaml is read first: its logger (named after the config) and callbacks, then the experiment's."""
    result = module14("fit", "--config", f"configs/{config}.yaml", "--print_config", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    trainer = yaml.safe_load(result.stdout)["trainer"]
    (logger,) = trainer["logger"]
    assert logger["class_path"].endswith("WandbLogger") and logger["init_args"]["name"] == config
    assert logger["init_args"]["project"] == "module14" and logger["init_args"]["save_dir"] == "runs"
    names = [c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]]
    writer = "ClassificationWriter" if config.startswith("vit") else "ImageWriter"
    assert names[:2] == ["LearningRateMonitor", "RichProgressBar"] and "RunCheckpoint" in names and writer in names
    assert trainer["precision"] is None
