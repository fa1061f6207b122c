"""Quiet by default: the one place where known noise from the libraries is filtered, so what remains is actionable.

``filter_known_noise`` (called by ``build_cli``) drops warnings and notices a module14 user can do nothing about:
deprecations inside torchdata and Lightning, Lightning's advertising tips, notices that restate what the CLI already
says (the AMP precision: ``module14: precision ...`` says it and why; "no best checkpoint": fit's summary says it)
and Lightning notices repeated by extra trainers in one process (benchmarks). Every warning that remains is one line
(``one_line_warning``). W&B is silent in offline mode (fit's summary says where the run is and how to sync it), and
two W&B warnings are prevented at their cause, where the W&B run is set up (``training.runs.join_wandb_run``): "The
anonymous setting has no effect" and "git root ... does not exist".
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

# Python warnings (message regexes): none of them is about the user's code or config.
NOISE_WARNINGS = (
    r"'set_vital' is deprecated",  # torchdata's StatefulDataLoader calls a deprecated torch API
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",  # inside Lightning's _pytree
    r"The number of training batches \(\d+\) is smaller than the logging interval",  # short debug runs: expected
    r"Precision .* is not supported by the model summary",  # the summary's size estimate in bf16/16-mixed
    # A resumed fit continues its run's checkpoint folder on purpose, and validate/test/predict of a checkpoint log
    # into a new W&B run (so a new folder) that saves nothing (training.runs.join_wandb_run).
    r"Checkpoint directory .* exists and is not empty",
    r"The dirpath has changed from",
    # A fit that stops before its first validation: fit's summary says there is no best checkpoint yet, and why.
    r"`ModelCheckpoint\(monitor=.*\)` could not find the monitored key",
)
# Lightning's info notices (logger ``lightning.*.rank_zero``), matched at the start of the message.
NOISE_NOTICES = (
    "💡 Tip:",  # litlogger / litmodels advertising
    "Loading `train_dataloader` to estimate number of stepping batches",
    "Using bfloat16 Automatic Mixed Precision",
    "Using 16bit Automatic Mixed Precision",
)
LIGHTNING_NOTICE_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class LightningNoticeFilter(logging.Filter):
    """Drops Lightning's known noise notices, and any notice already shown once in this process ("GPU available: ..."
    is printed again by every trainer a benchmark builds)."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if message.startswith(NOISE_NOTICES) or message in self.shown:
            return False
        self.shown.add(message)
        return True


def one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                     line: str | None = None) -> str:
    """A warning as one line, ``warning: <message> (<category>, <file>:<line>)``, instead of Python's two (the full
    path of the file, then its source line)."""
    return f"warning: {message} ({category.__name__}, {Path(filename).name}:{lineno})\n"


def filter_known_noise() -> None:
    """Install the filters and the one-line warning format (idempotent: calling it again adds nothing)."""
    warnings.formatwarning = one_line_warning
    for pattern in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=f".*{pattern}")
    for name in LIGHTNING_NOTICE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, LightningNoticeFilter) for f in logger.filters):
            logger.addFilter(LightningNoticeFilter())

