"""LightningModules (objectives and optimisation) and the callbacks they share."""

from lightning_modules.callbacks import (
    ClassificationWriter,
    ImageSampler,
    ImageWriter,
    RNGStateCheckpoint,
    StopOnNonFiniteLoss,
    WarnOnScheduleChange,
)
from lightning_modules.checkpointing import RunCheckpoint, SafeCheckpointIO, SaveOnSignal
from lightning_modules.classifier import ViTClassifier
from lightning_modules.diffusion import DiffusionModule
from lightning_modules.ema import EMA
from lightning_modules.gan import GANModule
from lightning_modules.metrics import SampleQualityMonitor
from lightning_modules.vae import BetaVAEModule, VAEModule

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
