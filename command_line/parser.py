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
import os
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


# Modules outside module14 whose model / data classes the CLI may import (comma-separated, e.g. your own families
# while you develop them outside lightning_modules/); any other dotted class path is refused before it is imported.
TRUSTED_MODULES_ENV = "MODULE14_MODULES"
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB; a larger one is not one
MAX_CONFIG_NODES = 100_000  # values in a config once its YAML aliases are expanded (a few KB can expand to gigabytes)


def expanded_size(node, sizes: dict[int, int] | None = None) -> int:
    """The number of values a composed YAML node stands for with its aliases expanded, computed without expanding
    them (an alias is the same node object again, so each node is counted once and its size reused)."""
    import yaml

    sizes = {} if sizes is None else sizes
    if id(node) not in sizes:
        sizes[id(node)] = 0  # a node that contains itself (a recursive alias) counts once
        children = node.value if isinstance(node, yaml.SequenceNode) else \
            [part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode) else []
        sizes[id(node)] = 1 + sum(expanded_size(child, sizes) for child in children)
    return sizes[id(node)]


def refuse_what_argv_would_import_or_expand(argv: list[str]) -> str | None:
    """What is wrong with ``argv`` before jsonargparse reads it, as one line, or None: a ``--model`` / ``--data``
    class (on the command line or in a ``--config``) that is not one of module14's but a dotted path, which parsing
    would import (running its module's top-level code) before refusing it; a config file over ``MAX_CONFIG_BYTES`` or
    with more than ``MAX_CONFIG_ALIASES`` YAML aliases."""
    import lightning as L
    import yaml

    from lightning_modules.registry import families, project_class, project_class_names

    bases = {"model": L.LightningModule, "data": L.LightningDataModule}
    named: list[tuple[str, str]] = []  # (option, class name)
    tokens = iter(argv)
    for token in tokens:
        name, has_value, value = token.partition("=")
        key = name.removeprefix("--").removesuffix(".class_path")
        if key in bases or name in ("--config", "-c"):
            value = value if has_value else next(tokens, "")
        if key in bases:
            named.append((key, value))
        elif name in ("--config", "-c") and Path(value).is_file():
            path = Path(value)
            if path.stat().st_size > MAX_CONFIG_BYTES:
                return f"--config {value} is {path.stat().st_size:,} bytes, more than a config ({MAX_CONFIG_BYTES:,})"
            text = path.read_text(errors="replace")
            try:
                node = yaml.compose(text, Loader=yaml.SafeLoader)
                size = expanded_size(node) if node is not None else 0
                loaded = yaml.safe_load(text) if size <= MAX_CONFIG_NODES else None
            except (yaml.YAMLError, RecursionError):
                continue  # jsonargparse says what is wrong with it
            if size > MAX_CONFIG_NODES:
                return (f"--config {value} stands for {size:,} values once its YAML aliases are expanded, more than "
                        f"a config ({MAX_CONFIG_NODES:,})")
            for section in bases:
                part = loaded.get(section) if isinstance(loaded, dict) else None
                if isinstance(part, dict) and isinstance(part.get("class_path"), str):
                    named.append((section, part["class_path"]))
                elif isinstance(part, str):
                    named.append((section, part))
    trusted = {name.strip() for name in os.environ.get(TRUSTED_MODULES_ENV, "").split(",") if name.strip()}
    for section, class_name in named:
        dotted = re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+", class_name)
        if dotted and project_class(class_name, bases[section]) is None and \
                class_name.rpartition(".")[0] not in trusted:
            known = [cls.__name__ for cls in families()] if section == "model" else project_class_names(bases[section])
            return (f"--{section} {class_name}: not one of module14's {section} classes ({', '.join(known)}); a "
                    f"class path outside them is not imported unless its module is named in ${TRUSTED_MODULES_ENV}")
    return None


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
    nested = re.search(r"given class_path '[^']+':\s*Parser key \"([^\"]+)\":\s*(.+?)\. Got value: (.*)", message)
    if class_path and nested:  # a value of the class's own argument: name that argument, not the whole section
        return f"{option}.{nested[1]}={nested[3].strip()}: {_plain_reason(nested[2])}"
    reasons = [line[2:] for line in lines if line.startswith("- ") and "NoneType" not in line]
    given = next((line.removeprefix("Given value:").strip() for line in lines if line.startswith("Given value:")), None)
    what = "; ".join(dict.fromkeys(_plain_reason(reason) for reason in reasons)) or lines[-1]
    return f"{option}{f'={given}' if given is not None else ''}: {what}"


def _plain_reason(reason: str) -> str:
    """``Expected a <class 'int'>`` -> ``expected int``; ``Expected a typing.Literal['a', 'b']`` -> ``expected one of
    'a', 'b'``."""
    reason = re.sub(r"Expected a typing\.Literal\[(.*)\]", r"expected one of \1", reason)
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
