"""LightningModules (objectives and optimisation) and the callbacks they share."""

from lightning_modules.callbacks import ClassificationWriter, ImageSampler, ImageWriter
from lightning_modules.classifier import ViTClassifier
from lightning_modules.diffusion import DiffusionModule
from lightning_modules.ema import EMA

__all__ = ["ClassificationWriter", "DiffusionModule", "EMA", "ImageSampler", "ImageWriter", "ViTClassifier"]
