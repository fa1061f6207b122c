"""The CLI's parser: exact flags, one-line usage errors, and the values a config leaves open filled in where they are
recorded (the data root actually used, a logger's folder and name).

- No prefix abbreviations (``--trainer.max_epoch`` is not ``--trainer.max_epochs``): an unknown option is an error.
- A usage error is one line naming the option, what is wrong and the nearest valid option; the full usage stays
  behind ``--help``. Exit status 2.
- ``data.data_dir: null`` becomes the data root actually used (``$MODULE14_DATA_DIR``, else ``./data``), relative to
  the directory the command runs in, not to the config file (jsonargparse parses a config inside its folder).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

from jsonargparse import Namespace

from lightning.pytorch.utilities import rank_zero_only

from compat import ParserBeforeValidation, option_strings
from datamodules import default_data_dir

SUBCOMMANDS = ("fit", "validate", "test", "predict")
RUNS_DIR = "runs"  # where every shipped config's logger writes (``save_dir: runs``)
# The sizes a datamodule gives the model: data.<source> -> model.init_args.<target>, linked at instantiation.
DATA_LINKS = {"dims": "image_shape", "num_classes": "num_classes", "value_range": "value_range",
              "normalization_mean_std": "normalization_mean_std"}


def say(line: str) -> None:
    """One ``module14: ...`` line on stderr, from rank 0 only."""
    if rank_zero_only.rank == 0:
        print(f"module14: {line}", file=sys.stderr)


def import_class(class_path: str) -> type:
    """The class a config names (already imported by jsonargparse while parsing it; never a checkpoint's)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


class Module14Parser(ParserBeforeValidation):
    """LightningCLI's parser with exact flags, one-line usage errors, and the values a config leaves open filled in."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})
        self.working_dir = Path.cwd()  # jsonargparse parses each config file inside that file's folder

    def before_validation(self, cfg: Namespace) -> None:
        for config in [cfg, *(cfg.get(name) for name in SUBCOMMANDS)]:
            if isinstance(config, Namespace):
                self._record_data_dir(config)
                _default_logger_save_dir(config)
                _default_logger_name(config)

    def _record_data_dir(self, config: Namespace) -> None:
        """A ``data.data_dir`` left null becomes the data root actually used (``$MODULE14_DATA_DIR`` or ``./data``),
        resolved against the working directory, so ``--print_config`` and ``config.yaml`` record where the data came
        from; the datamodule's own default stays None."""
        data = config.get("data")
        if isinstance(data, Namespace) and isinstance(data.get("init_args"), Namespace):
            if data.init_args.get("data_dir") is None:
                data.init_args.data_dir = str((self.working_dir / Path(default_data_dir()).expanduser()).resolve())

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """One line: what is wrong, with the nearest valid option, instead of a usage dump (``--help`` shows it)."""
        if not self.exit_on_error:
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        command = re.sub(r"\s*\[options\]", "", parser.prog)
        print(f"{command}: error: {usage_error(message, parser)}. `{command} --help` lists every option.",
              file=sys.stderr)
        sys.exit(2)


def usage_error(message: str, parser: ParserBeforeValidation) -> str:
    """jsonargparse's error message (a type report that can run to dozens of lines) as one sentence."""
    message = re.sub(r"\x1b\[[0-9;]*m", "", message).strip()
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    unknown = re.match(r"unrecognized arguments: (.*)", lines[0])
    if unknown:
        flags = [token.split("=")[0] for token in unknown[1].split() if token.startswith("-")]
        return "unknown option " + ", ".join(_with_nearest(flag, option_strings(parser)) for flag in flags or [unknown[1]])
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    if not key:
        return lines[0].rstrip(".:")
    option = f"--{key[1]}"
    not_accepted = re.findall(r"Option '([^']+)' is not accepted", message)
    class_path = re.findall(r"given class_path '([^']+)'", message)
    if not_accepted and class_path:
        cls = import_class(class_path[0])
        accepted = [f"{option}.{name}" for name in init_parameters(cls)]
        names = ", ".join(_with_nearest(f"{option}.{name}", accepted) for name in not_accepted)
        return f"{names}: {cls.__name__} takes no such argument"
    reasons = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
    given = next((line.removeprefix("Given value:").strip() for line in lines if line.startswith("Given value:")), None)
    what = "; ".join(dict.fromkeys(_plain_reason(reason) for reason in reasons)) or lines[-1]
    return f"{option}{f'={given}' if given is not None else ''}: {what}"


def _plain_reason(reason: str) -> str:
    """``Expected a <class 'int'>`` -> ``expected int``."""
    return re.sub(r"Expected a <class '([\w.]+)'>", r"expected \1", reason)


def _with_nearest(name: str, choices) -> str:
    nearest = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f"{name} (did you mean {nearest[0]}?)" if nearest else name


def init_parameters(class_type: type) -> set[str]:
    """Names ``class_type(...)`` accepts, with the ``**kwargs`` it forwards resolved as the CLI resolves them: to a
    parent's ``__init__`` (``BetaVAEModule`` takes every ``VAEModule`` argument) or to the network it builds
    (``ViTClassifier`` takes ``VisionTransformer``'s)."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(class_type, fail_untyped=False)
    return {key.split(".", 1)[0] for key in parser.get_defaults().keys()}


def _requires(class_path: str, name: str) -> bool:
    """Whether ``class_path``'s constructor has a parameter ``name`` without a default."""
    parameter = inspect.signature(import_class(class_path)).parameters.get(name)
    return parameter is not None and parameter.default is inspect.Parameter.empty


def configured_loggers(config: Namespace) -> Iterator[tuple[Namespace, Namespace]]:
    """(logger, its init_args) for each ``class_path`` logger in ``config.trainer.logger`` (one or a list)."""
    trainer = config.get("trainer")
    loggers = trainer.get("logger") if isinstance(trainer, Namespace) else None
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        init_args = logger.get("init_args") if isinstance(logger, Namespace) else None
        if isinstance(init_args, Namespace):
            yield logger, init_args


def _default_logger_save_dir(config: Namespace) -> None:
    """A logger chosen on the command line whose class requires a ``save_dir`` (``--trainer.logger CSVLogger``,
    ``TensorBoardLogger``) writes under ``runs/`` as the configs' loggers do, unless one is typed."""
    for logger, init_args in configured_loggers(config):
        if "save_dir" in init_args and init_args.save_dir is None:
            if _requires(logger.class_path, "save_dir"):
                init_args.save_dir = RUNS_DIR
                say(f"{logger.class_path.rsplit('.', 1)[-1]} writes under {RUNS_DIR}/ "
                    f"(--trainer.logger.init_args.save_dir chooses)")


def _default_logger_name(config: Namespace) -> None:
    """A W&B logger left without a ``name`` is named after the experiment: the first ``--config`` file's name."""
    configs = [Path(str(path)) for path in config.get("config") or []]
    for logger, init_args in configured_loggers(config):
        if configs and "name" in init_args and init_args.name is None:
            if logger.class_path.rsplit(".", 1)[-1] == "WandbLogger":
                init_args.name = configs[0].stem
