"""LightningModules (objectives and optimisation) and the callbacks they share."""

from lightning_modules.callbacks import (
    ClassificationWriter,
    ImageSampler,
    ImageWriter,
    RNGStateCheckpoint,
    StopOnNonFiniteLoss,
)
from lightning_modules.classifier import ViTClassifier

__all__ = ["ClassificationWriter", "ImageSampler", "ImageWriter", "RNGStateCheckpoint", "StopOnNonFiniteLoss", "ViTClassifier"]
