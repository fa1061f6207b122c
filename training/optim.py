"""Optimiser pieces shared by the models: fused Adam steps, AdamW parameter groups, the warm-up + cosine schedule, and
``WarnOnScheduleChange``, which says when a resumed run re-stretches that schedule."""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn as nn
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from compat import drop_fit_dataloader


def fused_adam(trainer: L.Trainer, clip_norm: float | None = None) -> bool:
    """Whether this run's Adam / AdamW take torch's fused kernel: one pass over each parameter tensor instead of about
    ten elementwise ops, the same update (``tests/test_optim.py``), 2-3x faster optimizer steps on CPU
    (``benchmarks/optimizer_step.py``: about a tenth of a ``vae_mnist`` step saved).

    Not when the run clips gradients (``trainer.gradient_clip_val``, or the model's own ``clip_norm``): under mixed
    precision Lightning refuses to clip for a fused optimizer, which would unscale 16-mixed gradients only inside its
    step. The clipping models (DDPM) spend under 1% of a step in the optimizer.
    """
    return not (clip_norm or trainer.gradient_clip_val)


def keep_state_in_parameter_layout(optimizer: Optimizer) -> Optimizer:
    """Make ``optimizer`` lay a loaded state out as its parameters are laid out in memory; returns it.

    A checkpoint stores each Adam moment with the strides it was saved with. Resuming a ``channels_last: false`` run
    with ``channels_last: true`` (or back) would give NCHW moments to NHWC parameters, and torch's fused CPU Adam
    reads parameter, gradient and moments as flat arrays without checking: its step comes out silently wrong
    (0.16 off at lr 0.1, torch 2.14; ``tests/test_optim.py``). After ``load_state_dict`` each loaded tensor shaped
    like its parameter is copied into the parameter's layout.
    """

    def relayout(opt: Optimizer) -> None:
        for group in opt.param_groups:
            for param in group["params"]:
                state = opt.state.get(param, {})
                for key, value in state.items():
                    if (isinstance(value, torch.Tensor) and value.shape == param.shape
                            and value.stride() != param.stride()):
                        state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)

    optimizer.register_load_state_dict_post_hook(relayout)
    return optimizer


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices/kernels only, none on biases, norms and embeddings of rank <= 1...

    ...nor on parameters named ``*pos_embed*`` / ``*cls_token*`` (as in the ViT and BERT recipes).
    """
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        if param.ndim <= 1 or "pos_embed" in name or "cls_token" in name:
            no_decay.append(param)
        else:
            decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_constant(optimizer: Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up from ~0 to the base lr over ``warmup_steps``, then held (DDPM's schedule)."""
    warmup = max(1, warmup_steps)
    return LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> LambdaLR:
    """Linear warm-up from ~0 to the base lr over ``warmup_steps``, then cosine decay to ``min_lr_ratio * lr``."""
    if total_steps <= 0 or math.isinf(total_steps):
        raise ValueError(
            f"the cosine schedule needs a finite number of training steps (got {total_steps}): "
            f"set trainer.max_epochs or trainer.max_steps."
        )
    warmup_steps = min(warmup_steps, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def total_training_steps(trainer: L.Trainer) -> int:
    """``trainer.estimated_stepping_batches``, without breaking exact mid-epoch resumption.

    Estimating builds the training dataloader during ``configure_optimizers``, i.e. before Lightning restores a
    checkpoint's loop state; the fit loop then keeps that loader and never applies the saved StatefulDataLoader
    position, so a resumed run would restart its epoch's data. Dropping the loader here makes the fit loop build it
    again after the restore, with the saved position.
    """
    total = trainer.estimated_stepping_batches
    drop_fit_dataloader(trainer)
    return total


def _learning_rate_jumps(trainer: L.Trainer) -> list[tuple[float, float]]:
    """(restored, new) learning rates of the first parameter group of each ``LambdaLR`` whose schedule, as this run
    lays it out, gives another value at the restored step than the checkpoint's schedule did."""
    jumps = []
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        if isinstance(scheduler, LambdaLR):
            restored = scheduler.get_last_lr()[0]
            new = scheduler.base_lrs[0] * scheduler.lr_lambdas[0](scheduler.last_epoch)
            if not math.isclose(restored, new, rel_tol=1e-6, abs_tol=1e-12):
                jumps.append((restored, new))
    return jumps


class WarnOnScheduleChange(Callback):
    """Resuming ``fit`` with another run length warns when it moves the learning rate, naming what changed.

    Warm-up + cosine schedules are laid out over the run's total steps, so resuming with another ``trainer.max_epochs``
    / ``max_steps`` (or another number of batches per epoch) re-stretches the schedule and the learning rate jumps at
    the first step. Checkpoints record the run length; a resumed run compares it with its own before its first step.
    The CLI adds this callback to every run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._length: dict[str, int] = {}
        self._saved: dict[str, int] = {}

    def state_dict(self) -> dict[str, int]:
        return dict(self._length)

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._saved = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        total = trainer.estimated_stepping_batches
        self._length = {"max_epochs": trainer.max_epochs, "max_steps": trainer.max_steps,
                        "total_steps": int(total) if math.isfinite(total) else -1}
        saved, self._saved = self._saved, {}
        if not saved or saved.get("total_steps") == self._length["total_steps"]:
            return
        jumps = _learning_rate_jumps(trainer)
        if jumps:
            rank_zero_warn(self._message(saved, trainer.global_step, jumps[0]))

    def _message(self, saved: dict[str, int], step: int, jump: tuple[float, float]) -> str:
        changed = [f"trainer.{key} {saved[key]} -> {self._length[key]}" for key in ("max_epochs", "max_steps")
                   if key in saved and saved[key] != self._length[key]]
        what = ", ".join(changed) or "the number of training batches per epoch (data.batch_size, data.val_size, " \
                                      "trainer.limit_train_batches or accumulate_grad_batches)"
        return (
            f"resuming with another run length ({what}): the learning-rate schedule now spans "
            f"{self._length['total_steps']} steps instead of the checkpoint's {saved['total_steps']}, so at step {step} "
            f"the learning rate jumps from {jump[0]:.3g} to {jump[1]:.3g}. To continue the checkpoint's schedule, "
            f"resume with its settings (the config.yaml beside it)."
        )
