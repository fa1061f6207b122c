"""module14's command line (the ``module14`` console script): one LightningCLI for every model and dataset.

    module14 fit --config configs/vit_mnist.yaml
    python cli.py fit --model ViTClassifier --data MNISTDataModule --trainer.max_epochs 1
    module14 predict --config configs/vit_mnist.yaml --ckpt_path runs/.../last.ckpt

This file is the entry point only: it answers ``module14 --help`` and a mistyped command before importing anything
heavy, and turns what the command raised into an exit status. The CLI itself is ``command_line/`` (``build_cli``).

Exit status: 0 the command finished; 2 the command line or config cannot be parsed (one line naming the option); 1
refused after parsing (a value a constructor refuses, settings that do not go together, a checkpoint that does not
fit) or failed (one paragraph, or a traceback for an unexpected error); 128 + the signal when a signal stopped it
(``training/stopping.py``): 130 SIGINT (Ctrl-C), 143 SIGTERM, 129 SIGHUP, 138 SLURM's requeue signal (SIGUSR1).
"""

from __future__ import annotations

import difflib
import os
import sys
from typing import Any

SUBCOMMANDS = {
    "fit": "train a model (resume with --ckpt_path)",
    "validate": "measure a checkpoint on the validation split",
    "test": "measure a checkpoint on the test split",
    "predict": "write predictions: images for generative models, a CSV for the classifier",
}
HELP = """usage: module14 COMMAND [--config CONFIG.yaml] [--ckpt_path CKPT] [--KEY VALUE ...]

Readable, measured PyTorch Lightning models: ViT, VAE/beta-VAE, GAN/DCGAN, DDPM on MNIST, CIFAR-10, CelebA.

commands:
{commands}

  module14 fit --config configs/vit_mnist.yaml             train (configs/ holds one config per experiment)
  module14 test --config configs/vit_mnist.yaml --ckpt_path best
  module14 COMMAND --help                                  every option of a command
  module14 COMMAND --config CONFIG.yaml --print_config     the full, resolved config
"""


def quick_reply(argv: list[str]) -> tuple[str, int] | None:
    """What ``module14 --help``, a bare ``module14`` and a mistyped command get, without importing Lightning (a
    second, not several): the text and the exit status. None when the full CLI must answer."""
    if argv and argv[0] in SUBCOMMANDS:
        return None
    commands = "\n".join(f"  {name:<10} {what}" for name, what in SUBCOMMANDS.items())
    if not argv or argv[0] in ("-h", "--help"):
        return HELP.format(commands=commands), 0 if argv else 2
    if argv[0].startswith("-"):
        return None  # a top-level option (--print_config, -c): the full parser knows them
    nearest = difflib.get_close_matches(argv[0], SUBCOMMANDS, n=1)
    hint = f" (did you mean {nearest[0]}?)" if nearest else ""
    return (f"module14: error: unknown command '{argv[0]}'{hint}: use one of {', '.join(SUBCOMMANDS)}. "
            f"`module14 --help` lists them.", 2)


def build_cli(args: Any = None, run: bool = True) -> Any:
    """The CLI object, for scripts and tests: ``build_cli(["fit", "--config", ...])`` runs and returns it."""
    from command_line.cli import build_cli as build

    return build(args, run)


def user_message(err: BaseException) -> str:
    """The error's message, without what hides it:

    - one raised in a DataLoader worker arrives with the worker's traceback prepended ("Caught X in DataLoader worker
      process 0. Original Traceback ..."): only the original message is kept;
    - one raised by a model or datamodule's ``__init__`` arrives inside jsonargparse's "Does not validate against any
      of the Union subtypes" report, with the whole config namespace: only the constructor's own messages are kept
      (not the "Expected a <class 'NoneType'>" of the ``None`` alternative).
    """
    message = str(err)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        return message.rsplit(f"{type(err).__name__}: ", 1)[-1].strip()
    if message.startswith("Does not validate against any of the Union subtypes"):
        reasons = [line.strip()[2:] for line in message.splitlines() if line.lstrip().startswith("- ")]
        reasons = [reason for reason in reasons if not reason.startswith("Expected a <class")]
        if reasons:
            return "\n".join(reasons)
    return message


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors whose message says what is wrong and how to fix it: the console script prints it, not a traceback."""
    from datamodules import DatasetIntegrityError
    from training.checkpointing import CheckpointWriteError
    from training.stopping import NonFiniteLossError

    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError,
            DatasetIntegrityError, NonFiniteLossError, CheckpointWriteError)


def main(args: list[str] | None = None) -> int:
    """The ``module14`` console script: runs the CLI and returns the process exit status (see the module's docstring)."""
    argv = sys.argv[1:] if args is None else list(args)
    reply = quick_reply(argv)
    if reply is not None:
        text, status = reply
        print(text, file=sys.stdout if status == 0 else sys.stderr)
        return status
    from training.stopping import exit_on_signals, exit_status

    exit_on_signals()  # DataLoader workers leave signals to the trainer; before a stage starts, a signal exits
    try:
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        try:
            build_cli(args)  # None: Lightning reads sys.argv itself
            status = 0
        except (SIGTERMException, KeyboardInterrupt):  # stopped by a signal: saved where a fit had something to save
            status = 143
        except user_errors() as err:
            if os.environ.get("MODULE14_TRACEBACK"):
                raise
            print(f"error: {user_message(err)}\n(MODULE14_TRACEBACK=1 shows where it was raised)", file=sys.stderr)
            status = 1
        except Exception as err:
            if os.environ.get("MODULE14_TRACEBACK") or not type(err).__module__.startswith("wandb"):
                raise
            what = user_message(err).splitlines()[0].rstrip(".")
            print(f"error: W&B ({os.environ.get('WANDB_MODE', 'offline')} mode): {what}. "
                  f"Log in with `wandb login`, or train offline (WANDB_MODE=offline, the default) and upload the run "
                  f"later with `wandb sync <its folder>`.\n(MODULE14_TRACEBACK=1 shows where it was raised)",
                  file=sys.stderr)
            status = 1
    except SystemExit as stop:  # --help / --print_config (0), a usage error (2), Lightning's Ctrl-C shutdown (1)
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:  # Ctrl-C while importing
        status = 130
    stopped = exit_status()  # 128 + the signal that stopped the command, unless it finished anyway
    return stopped if stopped is not None and status != 0 else status


if __name__ == "__main__":
    sys.exit(main())
