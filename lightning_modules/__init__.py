"""The model families (objective and sampling) and the callbacks they share.

The training callbacks every run uses are exported here too, under the names experiment configs and the ``config.yaml``
of earlier runs give them (``lightning_modules.RunCheckpoint``); they live in ``training/``.
"""

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
