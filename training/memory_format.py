"""``channels_last: true`` on the convolutional families (VAE, GAN, DDPM): weights and activations in NHWC layout.

``use_channels_last`` converts the module's 4-D parameters and buffers (the EMA copies included) to
``torch.channels_last``. A convolution with an NHWC weight writes NHWC outputs, so the layout carries through the
network from the first layer on; the data loader's NCHW batches need no conversion. The values, state-dict keys and
checkpoints are those of an NCHW run (a checkpoint loads into either layout); only the memory order differs, so
oneDNN (CPU) and cuDNN (GPU) take their NHWC kernels. Like ``compile``, it is a setting of the run, not of the
checkpoint.

Off by default: it pays for some models and precisions and not others. ``benchmarks/channels_last.py`` on a 2-core
AVX-512 CPU (fp32 / bf16-mixed / fp32 with the kernels capped at AVX2): DCGAN train steps 1.18x / 1.12x / 1.12x
faster on MNIST, 1.27x / 1.11x / 1.13x on CIFAR-10 and 1.19x / 1.07x / 1.12x on CelebA (64 px), so the DCGAN configs
turn it on; the U-Net 1.13x / 0.89x / 1.03x
(slower in bf16) and the conv VAE 1.09x / 1.00x / 1.03x, so theirs leave it off.

A run resumed in the other layout gets its Adam moments back in its parameters' layout
(``training.optim.keep_state_in_parameter_layout``): torch's fused CPU Adam would otherwise step wrongly.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def use_channels_last(module: nn.Module) -> None:
    """Every 4-D parameter and buffer of ``module`` in NHWC memory layout, in place (repeating it changes nothing)."""
    module.to(memory_format=torch.channels_last)
