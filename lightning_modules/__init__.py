"""The model families (objective and sampling) and the callbacks they share.

Every module of this package is imported here, so a family is found by its file alone: the CLI takes its class by
name (``--model FlowMatchingModule``), and ``registry.families()`` lists it for the tests. The names below are the
ones configs and the ``config.yaml`` of earlier runs use (``lightning_modules.RunCheckpoint``); the training callbacks
among them live in ``training/``.
"""

import importlib
import pkgutil

from lightning_modules.callbacks import ClassificationWriter, ImageSampler, ImageWriter
from lightning_modules.classifier import ViTClassifier
from lightning_modules.diffusion import DiffusionModule
from lightning_modules.ema import EMA
from lightning_modules.gan import GANModule
from lightning_modules.metrics import SampleQualityMonitor
from lightning_modules.vae import BetaVAEModule, VAEModule
from training.checkpointing import RunCheckpoint, SafeCheckpointIO
from training.optim import WarnOnScheduleChange
from training.rng import RNGStateCheckpoint
from training.stopping import SaveOnSignal, StopOnNonFiniteLoss

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "BetaVAEModule",
    "ClassificationWriter",
    "DiffusionModule",
    "EMA",
    "GANModule",
    "ImageSampler",
    "ImageWriter",
    "RNGStateCheckpoint",
    "RunCheckpoint",
    "SampleQualityMonitor",
    "SafeCheckpointIO",
    "SaveOnSignal",
    "StopOnNonFiniteLoss",
    "VAEModule",
    "ViTClassifier",
    "WarnOnScheduleChange",
]
