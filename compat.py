"""The private framework internals module14 relies on, in one place, each behind a small named function or hook.

Lightning, jsonargparse, torch and torchvision keep these private (a leading underscore, or undocumented behaviour),
so any release may change them without notice. The rest of module14 uses public APIs and these names;
``tests/test_compat.py`` checks every entry against the installed versions and fails, naming it, when an upgrade
changes what it relies on. Fix the entry here, not its callers.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn as nn
from jsonargparse import Namespace
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, _InstantiatorFn
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from torchvision.datasets import CelebA, CIFAR10, VisionDataset
from torchvision.datasets.celeba import CSV


# --- jsonargparse ---------------------------------------------------------------------------------------------------
class ParserBeforeValidation(LightningArgumentParser):
    """A ``LightningArgumentParser`` whose ``before_validation(cfg)`` edits each parsed config in place after the
    command line and config files are merged, before jsonargparse validates it and ``--print_config`` prints it.

    Relies on jsonargparse's private ``ArgumentParser._parse_common(cfg, ...)``, the step every ``parse_*`` method
    ends in; no public hook runs there.
    """

    def before_validation(self, cfg: Namespace) -> None:
        """Override to fill in or resolve values of ``cfg``."""

    def _parse_common(self, cfg: Namespace, *args: Any, **kwargs: Any) -> Namespace:
        self.before_validation(cfg)
        return super()._parse_common(cfg, *args, **kwargs)


def option_strings(parser: LightningArgumentParser) -> list[str]:
    """Every option string ``parser`` accepts (``--trainer.max_epochs``, ...), to name the nearest to a mistyped one.
    Relies on argparse's private ``ArgumentParser._option_string_actions``; no public API lists them."""
    return list(parser._option_string_actions)


# --- LightningCLI ---------------------------------------------------------------------------------------------------
class _LinkFilteringInstantiator(_InstantiatorFn):
    """Lightning's model/datamodule instantiator (it records the config and the applied instantiation links as the
    module's hyperparameters), given only the links ``cli.instantiation_links`` keeps."""

    def __call__(self, class_type: type, *args: Any, applied_instantiation_links: dict, **kwargs: Any) -> Any:
        links = self.cli.instantiation_links(class_type, applied_instantiation_links)
        return super().__call__(class_type, *args, applied_instantiation_links=links, **kwargs)


class CLIHooks(LightningCLI):
    """A ``LightningCLI`` whose private steps module14 changes are named hooks.

    - ``merge_checkpoint_config()`` replaces ``_parse_ckpt_path``, which ``__init__`` runs after parsing and before
      instantiating, to lay a ``--ckpt_path`` checkpoint's hyperparameters over the config.
    - ``subcommand_error(subcommand, err)`` sees what ``_run_subcommand`` (the trainer's fit/validate/test/predict)
      raised and may return the exception to raise instead.
    - ``instantiation_links(class_type, links)`` chooses the datamodule-to-model links a module records in its
      hyperparameters: ``_add_instantiators`` installs a subclass of the private ``_InstantiatorFn`` for the
      ``_model_class`` and ``_datamodule_class`` the CLI was built with.
    """

    def merge_checkpoint_config(self) -> None:
        """Lightning's: the checkpoint's hyperparameters replace the config's model arguments."""
        super()._parse_ckpt_path()

    def subcommand_error(self, subcommand: str, err: Exception) -> Exception | None:
        """The exception to raise instead of ``err`` (``None``: raise ``err``)."""
        return None

    def instantiation_links(self, class_type: type, links: dict) -> dict:
        """The applied links ``class_type``'s instance records in its hyperparameters (Lightning: all of them)."""
        return links

    def _parse_ckpt_path(self) -> None:
        self.merge_checkpoint_config()

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except Exception as err:
            replacement = self.subcommand_error(subcommand, err)
            if replacement is None:
                raise
            raise replacement from err

    def _add_instantiators(self) -> None:
        for key, base, subclasses in (("model", self._model_class, self.subclass_mode_model),
                                      ("data", self._datamodule_class, self.subclass_mode_data)):
            self.parser.add_instantiator(_LinkFilteringInstantiator(cli=self, key=key), base, subclasses=subclasses)


# --- Lightning trainer, strategy, loggers, callbacks ----------------------------------------------------------------
def ddp_kwargs(strategy: DDPStrategy) -> dict:
    """The keyword arguments ``strategy`` passes to ``DistributedDataParallel`` when it wraps the model (after the
    LightningModule's ``setup``), and which can be changed until then.

    Relies on the private ``DDPStrategy._ddp_kwargs``: the constructor is the only public way in, and a module learns
    what it needs (``find_unused_parameters``) only once the trainer exists.
    """
    return strategy._ddp_kwargs


def drop_fit_dataloader(trainer: L.Trainer) -> None:
    """Forget the training dataloader the fit loop holds, so that it builds it again at the start of training.

    Relies on the private ``FitLoop._combined_loader``: ``trainer.estimated_stepping_batches`` stores the loader it
    builds there, and ``FitLoop.setup_data`` builds a new one only while it is ``None``.
    """
    trainer.fit_loop._combined_loader = None


def set_stop_after_this_batch(trainer: L.Trainer, stop: bool) -> None:
    """Make Lightning's loops stop (``stop=True``) when the batch in flight is done, as on its own SIGTERM, or not.

    Relies on the private ``_SignalConnector.received_sigterm`` that ``trainer.received_sigterm`` reads: the fit loop
    raises ``SIGTERMException`` at the end of a training batch's bookkeeping (its optimizer and schedule steps and
    progress counters, after a validation due at that batch), and the evaluation loop after a batch, when it is set.
    Lightning sets it only from its own SIGTERM handler, which module14 replaces (``training.stopping``).
    """
    trainer._signal_connector.received_sigterm = stop


def requeue_signal(trainer: L.Trainer) -> signal.Signals | None:
    """The signal on which Lightning would requeue this SLURM job (``SLURMEnvironment.requeue_signal``, SIGUSR1 by
    default), or None when the run is not a SLURM job with auto-requeue on. Relies on the private
    ``_AcceleratorConnector.cluster_environment``: a single-device strategy has no public one."""
    environment = trainer._accelerator_connector.cluster_environment
    if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
        return signal.Signals(environment.requeue_signal or signal.SIGUSR1)
    return None


def wandb_init_kwargs(logger: WandbLogger) -> dict:
    """The keyword arguments ``logger`` will pass to ``wandb.init`` (id, group, job_type, dir, ...), which can be
    changed until its run starts. Relies on the private ``WandbLogger._wandb_init``; the constructor is the only
    public way in, and the run to join is known only after the logger is built."""
    return logger._wandb_init


def wandb_run_started(logger: WandbLogger) -> bool:
    """Whether ``logger``'s W&B run has started. Relies on the private ``WandbLogger._experiment`` (``None`` until
    then): the public ``logger.experiment`` starts the run."""
    return logger._experiment is not None


def set_wandb_run_id(logger: WandbLogger, run_id: str) -> None:
    """Make ``run_id`` the id ``logger`` reports as its ``version`` (and names its checkpoint folder after) before
    its run starts. Relies on the private ``WandbLogger._id``, which ``version`` returns until then."""
    logger._id = run_id


class LastCheckpointHooks(ModelCheckpoint):
    """A ``ModelCheckpoint`` with named access to three of its private steps.

    - ``on_last_saved(trainer)`` runs after each write of ``last.ckpt`` (in ``_save_last_checkpoint``, which every
      save of the last checkpoint goes through, Lightning's own included).
    - ``write_last(trainer)`` writes ``last.ckpt`` now (``_save_last_checkpoint`` with ``_monitor_candidates``).
    - ``saves_on_train_epoch_end(trainer)``: whether Lightning saves at the train epoch end rather than at the end of
      validation (``_should_save_on_train_epoch_end``).
    """

    def on_last_saved(self, trainer: L.Trainer) -> None:
        """Override to record that ``last.ckpt`` now holds ``trainer``'s current state."""

    def write_last(self, trainer: L.Trainer) -> None:
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def saves_on_train_epoch_end(self, trainer: L.Trainer) -> bool:
        return self._should_save_on_train_epoch_end(trainer)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, torch.Tensor]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self.on_last_saved(trainer)


# --- torch ----------------------------------------------------------------------------------------------------------
def is_compiled(module: nn.Module) -> bool:
    """Whether ``module.compile()`` compiled this module's call in place. Relies on the private
    ``nn.Module._compiled_call_impl``, which ``compile()`` sets and copies and pickles drop; no public API says."""
    return module._compiled_call_impl is not None


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: oneDNN runs bf16 matmuls and convolutions natively (else it emulates them, slowly).
    Relies on the private ``torch.ops.mkldnn._is_mkldnn_bf16_supported``, oneDNN's own check; no public API says."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


# --- torchvision ----------------------------------------------------------------------------------------------------
def fill_cifar10(dataset: CIFAR10, root: str | Path, transform: Any, data: np.ndarray, targets: list[int],
                 classes: list[str]) -> None:
    """Make ``dataset`` a torchvision ``CIFAR10`` serving ``data`` (N x 32 x 32 x 3 uint8) and ``targets`` without
    ``CIFAR10.__init__``, which ``pickle.load``s the batch files (a tampered one would run code).

    Relies on ``CIFAR10.__getitem__`` and ``__len__`` reading only ``data``, ``targets``, ``transform`` and
    ``target_transform``, and on ``classes`` / ``class_to_idx`` being all its metadata.
    """
    VisionDataset.__init__(dataset, root, transform=transform)
    dataset.data, dataset.targets = data, targets
    dataset.classes = classes
    dataset.class_to_idx = {name: i for i, name in enumerate(classes)}


class CelebAHooks(CelebA):
    """torchvision's ``CelebA`` with two private steps of its ``__init__`` as named hooks.

    - ``files_intact()`` replaces ``_check_integrity`` (every file's md5, else "Dataset not found or corrupted").
    - ``read_list(filename, header)`` replaces ``_load_csv``, which reads each annotation list (``list_*.txt``,
      ``identity_CelebA.txt``) into a ``CSV(header, index, data)``, whatever the target type.
    """

    def files_intact(self) -> bool:
        return super()._check_integrity()

    def read_list(self, filename: str, header: int | None = None) -> CSV:
        return super()._load_csv(filename, header)

    def _check_integrity(self) -> bool:
        return self.files_intact()

    def _load_csv(self, filename: str, header: int | None = None) -> CSV:
        return self.read_list(filename, header)


def celeba_placeholder_list(rows: int, columns: int) -> CSV:
    """An annotation list of zeros, for ``CelebAHooks.read_list`` to return for a list the copy lacks. Relies on
    torchvision's ``celeba.CSV`` named tuple (header, index, data)."""
    return CSV([], [], torch.zeros((rows, columns), dtype=torch.long))
