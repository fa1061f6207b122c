"""What every model family shares, so that a family is its objective and its sampler (``docs/adding_a_model.md``).

``FamilyModule`` (every family, the classifier too): ``compile`` / ``channels_last`` applied to the trained networks,
Adam / AdamW built the project's way (fused unless the run clips, a loaded state laid out as the parameters are),
gradient clipping by ``grad_clip_norm`` after mixed precision unscales (automatic and manual optimisation alike), and
the family's statements: ``inference_args`` (chosen at predict time) and ``precision_on_bf16_cpu`` (measured).

``GenerativeModule`` adds what the image families share: seeded noise; an EMA copy
kept in step with its network; ``generate(n, generator)`` (``sample`` without gradients, in eval mode and the run's
precision); ``predict_step`` (one image per item, reproducible noise per rank and batch); default grids.
"""

from __future__ import annotations

import contextlib
from typing import ClassVar

import lightning as L
import torch
import torch.nn as nn
from torch import Tensor
from torch.optim import Adam, AdamW, Optimizer

from lightning_modules.ema import EMA
from training.compiling import compile_networks
from training.memory_format import use_channels_last
from training.optim import decay_groups, fused_adam, keep_state_in_parameter_layout
from training.rng import seeded_generator

PREDICT = 2  # the predict stream of the noise keys (GANModule's fit / val / predict / test streams: 0, 1, 2, 3)


class FamilyModule(L.LightningModule):
    """A model family's LightningModule. Its ``__init__`` builds ``self.net`` (or lists its networks in
    ``trained_networks``) and keeps the shared settings it offers among its hyperparameters: ``compile``,
    ``channels_last``, ``grad_clip_norm``."""

    # Chosen at inference time: with --ckpt_path a typed value wins over the checkpoint's (command_line/checkpoints.py).
    inference_args: ClassVar[frozenset[str]] = frozenset()
    # The faster precision on a CPU with native bf16, from benchmarks/precision.py (training/precision.py).
    precision_on_bf16_cpu: ClassVar[str] = "32-true"

    def trained_networks(self) -> list[nn.Module]:
        """The networks the optimisers train (what ``compile`` compiles)."""
        return [self.net]

    def reported_metrics(self) -> dict[str, tuple[str, str]]:
        """The ``test/`` metrics RESULTS.md reports for this model: key -> (label, format)."""
        return {}

    def ignored_settings(self) -> dict[str, str]:
        """The arguments this model's other settings make no-ops, each with why: typed on the command line, the CLI
        refuses them (an option that does nothing is an error naming it)."""
        return {}

    def refuse_channels_last_without_convolutions(self) -> None:
        """``channels_last: true`` on a model with no convolution would do nothing: refused, naming the fix."""
        if self.hparams.get("channels_last") and not any(isinstance(m, nn.Conv2d) for m in self.modules()):
            architecture = f" (architecture: {self.hparams.architecture})" if "architecture" in self.hparams else ""
            raise ValueError(f"model.channels_last=true lays out convolutions, and this {type(self).__name__}"
                             f"{architecture} has none: set model.init_args.channels_last: false, or choose a "
                             f"convolutional architecture.")

    def configure_model(self) -> None:
        if self.hparams.get("channels_last"):
            use_channels_last(self)
        if self.hparams.get("compile"):
            compile_networks(*self.trained_networks())

    def adam(self, module: nn.Module, lr: float, betas: tuple[float, float] = (0.9, 0.999),
             weight_decay: float | None = None) -> Optimizer:
        """Adam over ``module``'s parameters, or with a ``weight_decay`` AdamW decaying weight matrices only
        (``decay_groups``); torch's fused step unless this run clips gradients; a loaded state in the parameters'
        memory layouts (``keep_state_in_parameter_layout``)."""
        fused = fused_adam(self.trainer, self.hparams.get("grad_clip_norm"))
        if weight_decay is None:
            optimizer = Adam(module.parameters(), lr=lr, betas=tuple(betas), fused=fused)
        else:
            optimizer = AdamW(decay_groups(module, weight_decay), lr=lr, betas=tuple(betas), fused=fused)
        return keep_state_in_parameter_layout(optimizer)

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        # Inside every optimizer step, after a 16-mixed GradScaler unscaled the gradients, in both optimisation modes.
        if self.hparams.get("grad_clip_norm"):
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.grad_clip_norm, gradient_clip_algorithm="norm")

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val is not None and "grad_clip_norm" in self.hparams:
            raise ValueError(f"{type(self).__name__} clips gradients itself: set model.init_args.grad_clip_norm "
                             f"instead of trainer.gradient_clip_val.")
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


class GenerativeModule(FamilyModule):
    """An image-generating family: it defines ``sample(n, generator)``, n images (n, C, H, W) in [0, 1] from its
    sampler with its inference settings, keeps the data's range as ``self.value_range`` (``images.require_value_range``
    checks it), and may keep ``self.ema`` (an ``EMA`` of ``ema_source()``)."""

    inference_args: ClassVar[frozenset[str]] = frozenset({"noise_seed"})

    def noise(self, *key: int) -> torch.Generator:
        """A generator on the model's device seeded from (``noise_seed``, *key): the same noise in every run."""
        return seeded_generator(self.device, self.hparams.noise_seed, *key)

    def ema_source(self) -> nn.Module:
        """The network ``self.ema`` averages."""
        return self.net

    def update_ema(self) -> None:
        """After each optimizer step of ``ema_source()``, when the family keeps ``self.ema``."""
        ema: EMA | None = getattr(self, "ema", None)  # a submodule (nn.Module keeps it out of the class's namespace)
        if ema is not None:
            ema.update(self.ema_source())

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)  # automatic optimisation; a manual family calls update_ema itself
        self.update_ema()

    def sampling_precision(self) -> contextlib.AbstractContextManager:
        """The trainer's precision (e.g. bf16 autocast) for sampling outside its steps (image callbacks, FID); none
        for a model not attached to a trainer (the caller's autocast, if any, applies)."""
        try:
            return self.trainer.precision_plugin.forward_context()
        except RuntimeError:  # Lightning: "... is not attached to a `Trainer`"
            return contextlib.nullcontext()

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define sample(n, generator): n images in [0, 1]")

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images (n, C, H, W) in [0, 1] on the model's device: ``sample`` in eval mode and the run's precision.
        What ``predict``, the image grids and FID/KID use."""
        was_training = self.training
        self.eval()
        try:
            with self.sampling_precision():
                return self.sample(n, generator).float()
        finally:
            self.train(was_training)

    def sample_images(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """The grids ``ImageSampler`` logs: one sample per given image, from fixed noise (override for more)."""
        return {"samples": self.generate(len(images), generator)}

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """One generated image in [0, 1] per item of the batch (its pixels are ignored), noise per (rank, batch)."""
        return self.generate(len(batch[0]), self.noise(self.global_rank, PREDICT, batch_idx))
