"""Every framework internal ``compat.py`` relies on, checked against the installed Lightning, jsonargparse, torch and
torchvision: a test here fails, naming the entry, when an upgrade renames or changes what the entry relies on."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn as nn
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset
from torchvision.datasets import CIFAR10
from conftest import cpu_trainer

import compat


class TinyModel(L.LightningModule):
    def __init__(self, width: int = 2, fail: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.layer = nn.Linear(width, 1)
        self.loaders_built = 0

    def training_step(self, batch, batch_idx):
        if self.hparams.fail:
            raise RuntimeError("boom")
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TinyData(L.LightningDataModule):
    def __init__(self, width: int = 3) -> None:
        super().__init__()
        self.width = width

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(4, self.width)), batch_size=2)


def tiny_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    """Two training steps (one epoch of ``TinyData``), without validation."""
    return cpu_trainer(max_epochs=1, max_steps=2, limit_val_batches=0, default_root_dir=tmp_path, **kwargs)


QUIET_FIT = ["--trainer.accelerator=cpu", "--trainer.max_steps=1", "--trainer.logger=false",
             "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false"]


def tiny_cli(cli_class: type[compat.CLIHooks], *args: str, run: bool = True) -> compat.CLIHooks:
    """``cli_class`` for ``TinyModel`` and ``TinyData``, writing no config file."""
    return cli_class(TinyModel, TinyData, args=list(args), run=run, save_config_callback=None)


class StopBeforeInstantiating(compat.CLIHooks):
    def before_instantiate_classes(self) -> None:
        raise _Stopped(self.config)


class _Stopped(Exception):
    pass


# --- jsonargparse ---------------------------------------------------------------------------------------------------
def test_parser_hook_runs_before_validation():
    """``_parse_common``: the hook fills in a required value that validation would otherwise refuse."""

    class Filling(compat.ParserBeforeValidation):
        def before_validation(self, cfg) -> None:
            if cfg.get("size") is None:
                cfg.size = 3

    parser = Filling(exit_on_error=False)
    parser.add_argument("--size", type=int, required=True)
    assert parser.parse_args([]).size == 3
    assert parser.parse_object({}).size == 3


# --- LightningCLI ---------------------------------------------------------------------------------------------------
def test_option_strings_lists_what_the_parser_accepts():
    parser = compat.ParserBeforeValidation(exit_on_error=False)
    parser.add_argument("--trainer.max_epochs", type=int)
    assert {"--trainer.max_epochs", "-h", "--help"} <= set(compat.option_strings(parser))


def test_cli_merges_the_checkpoint_config_after_parsing_and_before_instantiating(tmp_path):
    """``_parse_ckpt_path``: run by ``__init__`` before ``before_instantiate_classes``; the default is Lightning's."""
    checkpoint = tmp_path / "tiny.ckpt"
    torch.save({"hyper_parameters": {"width": 5}, "state_dict": {}}, checkpoint)
    with pytest.raises(_Stopped) as stopped:
        tiny_cli(StopBeforeInstantiating, "fit", f"--ckpt_path={checkpoint}", *QUIET_FIT)
    assert stopped.value.args[0].fit.model.width == 5

    class Merging(StopBeforeInstantiating):
        def merge_checkpoint_config(self) -> None:
            self.config.fit.model.width = 7

    with pytest.raises(_Stopped) as stopped:
        tiny_cli(Merging, "fit", *QUIET_FIT)
    assert stopped.value.args[0].fit.model.width == 7


def test_cli_subcommand_errors_can_be_replaced():
    """``_run_subcommand``: what the trainer raises passes through it; the hook's replacement is raised instead."""
    with pytest.raises(RuntimeError, match="boom"):
        tiny_cli(compat.CLIHooks, "fit", "--model.fail=true", *QUIET_FIT)

    class Replacing(compat.CLIHooks):
        def subcommand_error(self, subcommand: str, err: Exception) -> Exception:
            return ValueError(f"{subcommand}: {err}")

    with pytest.raises(ValueError, match="fit: boom") as raised:
        tiny_cli(Replacing, "fit", "--model.fail=true", *QUIET_FIT)
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_cli_instantiation_links_choose_what_the_hyperparameters_record():
    """``_add_instantiators`` / ``_InstantiatorFn``: the applied links are recorded in the model's hyperparameters,
    and only those ``instantiation_links`` keeps."""

    class Linked(compat.CLIHooks):
        def add_arguments_to_parser(self, parser) -> None:
            parser.link_arguments("data.width", "model.width", apply_on="instantiate")

    class Dropping(Linked):
        def instantiation_links(self, class_type: type, links: dict) -> dict:
            assert class_type in (TinyModel, TinyData) and ("model.width" in links) == (class_type is TinyModel)
            return {}

    kept = tiny_cli(Linked, run=False)
    assert kept.model.layer.in_features == 3 and kept.model.hparams["width"] == 3
    dropped = tiny_cli(Dropping, run=False)
    assert dropped.model.layer.in_features == 3 and dropped.model.hparams.get("width") != 3


# --- Lightning trainer, strategy, loggers, callbacks ----------------------------------------------------------------
def test_ddp_kwargs_reach_distributed_data_parallel(monkeypatch):
    """``DDPStrategy._ddp_kwargs``: changed after the strategy is built, they are what the model is wrapped with."""
    import lightning.pytorch.strategies.ddp as ddp

    strategy = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False).strategy
    assert isinstance(strategy, DDPStrategy) and "find_unused_parameters" not in compat.ddp_kwargs(strategy)
    compat.ddp_kwargs(strategy)["find_unused_parameters"] = True
    monkeypatch.setattr(ddp, "DistributedDataParallel", lambda module, device_ids, **kwargs: kwargs)
    assert strategy._setup_model(nn.Linear(1, 1)) == {"find_unused_parameters": True}


def test_dropping_the_fit_dataloader_makes_the_fit_loop_build_it_again(tmp_path):
    """``FitLoop._combined_loader``: estimating the stepping batches stores the loader there; dropped, it is rebuilt."""

    class Estimating(TinyModel):
        def configure_optimizers(self):
            assert self.trainer.estimated_stepping_batches == 2
            assert self.trainer.fit_loop._combined_loader is not None  # the loader the estimate built
            compat.drop_fit_dataloader(self.trainer)
            return super().configure_optimizers()

    class Counting(TinyData):
        built = 0

        def train_dataloader(self):
            Counting.built += 1
            return super().train_dataloader()

    tiny_trainer(tmp_path).fit(Estimating(width=3), Counting())
    assert Counting.built == 2  # once for the estimate, once again for training


class StopAtStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            compat.set_stop_after_this_batch(trainer, True)


def test_stop_after_this_batch_stops_the_fit_loop_once_the_batch_is_counted(tmp_path):
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    trainer = cpu_trainer(max_epochs=1, max_steps=10, limit_val_batches=0, default_root_dir=tmp_path,
                          callbacks=[StopAtStep(1)])
    data = TinyData()
    data.train_dataloader = lambda: DataLoader(TensorDataset(torch.zeros(20, 3)), batch_size=2)
    with pytest.raises(SIGTERMException):
        trainer.fit(TinyModel(width=3), data)
    assert trainer.global_step == 1 and trainer.fit_loop.epoch_loop.batch_progress.total.completed == 1
    assert trainer.received_sigterm


def test_requeue_signal_is_slurms_when_auto_requeue_is_on(monkeypatch, tmp_path):
    import signal

    from lightning.fabric.plugins.environments import SLURMEnvironment

    assert compat.requeue_signal(tiny_trainer(tmp_path)) is None  # not a SLURM job
    slurm = {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "7", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost", "SLURM_NTASKS_PER_NODE": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert compat.requeue_signal(tiny_trainer(tmp_path)) == signal.SIGUSR1
    on_usr2 = tiny_trainer(tmp_path, plugins=[SLURMEnvironment(requeue_signal=signal.SIGUSR2)])
    assert compat.requeue_signal(on_usr2) == signal.SIGUSR2
    assert compat.requeue_signal(tiny_trainer(tmp_path, plugins=[SLURMEnvironment(auto_requeue=False)])) is None


def test_wandb_logger_internals(monkeypatch, tmp_path):
    """``WandbLogger._wandb_init`` / ``_experiment`` / ``_id``: what is set before the run starts is what
    ``wandb.init`` gets and what ``version`` reports; the run starts on first use of ``experiment``."""
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    logger = WandbLogger(project="compat", save_dir=str(tmp_path))
    assert not compat.wandb_run_started(logger)
    compat.wandb_init_kwargs(logger).update(id="run12345", group="group1")
    compat.set_wandb_run_id(logger, "run12345")
    assert logger.version == "run12345" and not compat.wandb_run_started(logger)
    calls = []
    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or object())
    logger.experiment  # noqa: B018  (starts the run)
    assert compat.wandb_run_started(logger)
    assert calls[0]["id"] == "run12345" and calls[0]["group"] == "group1" and calls[0]["project"] == "compat"


class RecordingLast(compat.LastCheckpointHooks):
    def on_last_saved(self, trainer: L.Trainer) -> None:
        self.saved_at = getattr(self, "saved_at", []) + [trainer.global_step]


def test_last_checkpoint_hooks(tmp_path):
    """``ModelCheckpoint._save_last_checkpoint`` / ``_monitor_candidates`` / ``_should_save_on_train_epoch_end``."""
    callback = RecordingLast(dirpath=tmp_path / "checkpoints", save_last=True)
    trainer = tiny_trainer(tmp_path, callbacks=[callback], enable_checkpointing=True)
    trainer.fit(TinyModel(width=3), TinyData())
    assert callback.saved_at == [2]  # Lightning's own save of last.ckpt went through the hook
    assert callback.saves_on_train_epoch_end(trainer) is True  # no validation: saves at the train epoch end
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.unlink()
    callback.write_last(trainer)
    assert last.is_file() and callback.saved_at == [2, 2]
    assert RecordingLast(save_on_train_epoch_end=False).saves_on_train_epoch_end(trainer) is False


# --- torch ----------------------------------------------------------------------------------------------------------
def test_is_compiled_follows_compile_and_copies():
    """``nn.Module._compiled_call_impl``: set by ``compile()``, dropped by a deep copy."""
    network = nn.Linear(2, 2)
    assert not compat.is_compiled(network)
    network.compile(backend="eager")
    assert compat.is_compiled(network)
    assert not compat.is_compiled(copy.deepcopy(network))


def test_cpu_has_native_bf16_answers():
    """``torch.ops.mkldnn._is_mkldnn_bf16_supported``: still there, and a yes or no."""
    assert isinstance(compat.cpu_has_native_bf16(), bool)


# --- torchvision ----------------------------------------------------------------------------------------------------
def test_filled_cifar10_serves_its_arrays():
    """``CIFAR10.__getitem__`` / ``__len__`` read only ``data``, ``targets`` and the transforms; the class attributes
    the datamodule reads (folder, file lists, metadata) are still there."""
    data = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    dataset = CIFAR10.__new__(CIFAR10)
    compat.fill_cifar10(dataset, "unused", np.asarray, data, [3, 7], [f"c{i}" for i in range(10)])
    assert len(dataset) == 2
    image, target = dataset[1]
    assert np.array_equal(image, data[1]) and target == 7 and dataset.class_to_idx["c3"] == 3
    assert CIFAR10.base_folder == "cifar-10-batches-py" and len(CIFAR10.train_list) == 5 and len(CIFAR10.test_list) == 1
    assert {"filename", "key", "md5"} <= set(CIFAR10.meta)


def write_celeba_lists(root: Path) -> None:
    """Three images' partition (two in train), identity and attribute lists (no bbox/landmark lists)."""
    folder = root / "celeba"
    folder.mkdir()
    (folder / "list_eval_partition.txt").write_text("000001.jpg 0\n000002.jpg 2\n000003.jpg 0\n")
    (folder / "identity_CelebA.txt").write_text("000001.jpg 7\n000002.jpg 9\n000003.jpg 4\n")
    (folder / "list_attr_celeba.txt").write_text("3\nSmiling Young\n000001.jpg 1 -1\n000002.jpg -1 1\n000003.jpg 1 1\n")


def test_celeba_hooks_replace_the_integrity_check_and_list_reading(tmp_path):
    """``CelebA._check_integrity`` / ``_load_csv`` (and ``celeba.CSV``): ``__init__`` checks the files, then reads
    its five lists through them."""
    write_celeba_lists(tmp_path)
    with pytest.raises(RuntimeError, match="not found or corrupted"):  # the default: torchvision's md5 check
        compat.CelebAHooks(str(tmp_path))
    calls = []

    class Recorded(compat.CelebAHooks):
        def files_intact(self) -> bool:
            calls.append("files_intact")
            return True

        def read_list(self, filename: str, header: int | None = None):
            calls.append(filename)
            if filename.startswith(("list_bbox", "list_landmarks")):
                return compat.celeba_placeholder_list(3, 4)
            return super().read_list(filename, header)

    dataset = Recorded(str(tmp_path), split="train", target_type="attr")
    assert calls == ["files_intact", "list_eval_partition.txt", "identity_CelebA.txt", "list_bbox_celeba.txt",
                     "list_landmarks_align_celeba.txt", "list_attr_celeba.txt"]
    assert dataset.filename == ["000001.jpg", "000003.jpg"] and dataset.attr.tolist() == [[1, 0], [1, 1]]
    assert dataset.attr_names == ["Smiling", "Young"] and dataset.bbox.tolist() == [[0, 0, 0, 0]] * 2
