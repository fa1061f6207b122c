"""The denoiser of a diffusion model: a U-Net (Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015) conditioned on the timestep, as in DDPM (Ho, Jain & Abbeel, "Denoising
Diffusion Probabilistic Models", NeurIPS 2020): given a noisy image x_t and t, it predicts the noise in x_t.

The layout of the guide's ``SimpleUNet`` (docs/guide.md, Part 4, Step 2): an encoder that halves the resolution per
level, a bottleneck, and a decoder that doubles it back with skip connections from the encoder (the U-Net's, so fine
detail survives the bottleneck). Unlike the guide's sketch, the timestep embedding reaches every residual block (the
guide computed it and never used it, so its network could not know how noisy its input was), ``num_res_blocks`` is
honoured, and the embedding width follows ``model_channels`` (docs/guide_notes.md).

``SimpleUNet()`` with its defaults is the small model (64 channels, multipliers (1, 2, 4) as in the guide's
64/128/256 levels). The DDPM paper's CIFAR-10 model (35.7M parameters) is
``SimpleUNet(model_channels=128, channel_mult=(1, 2, 2, 2), attention_levels=(1,), dropout=0.1, norm_groups=32)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.attention import attention
from networks.dropout import Dropout


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim), as in the Transformer/DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))  # odd dim: one zero column


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, add the projected time embedding, GroupNorm-SiLU-Dropout-Conv, plus a skip connection."""

    def __init__(self, in_ch: int, out_ch: int, time_dim: int, dropout: float = 0.0, norm_groups: int = 32):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_ch)
        self.norm2 = nn.GroupNorm(norm_groups, out_ch)
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (as in the DDPM code)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))  # (B, out, H, W)
        h = h + self.time_proj(F.silu(t_emb))[:, :, None, None]  # the timestep enters here, at every block
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions of a feature map, residual (DDPM uses one head at 16x16)."""

    def __init__(self, channels: int, num_heads: int = 1, norm_groups: int = 32):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention channels {channels} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(norm_groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        qkv = self.qkv(self.norm(x)).reshape(B, 3, self.num_heads, C // self.num_heads, H * W)
        q, k, v = qkv.transpose(-1, -2).unbind(1)  # each (B, heads, H*W, C/heads)
        h = attention(q, k, v)  # (B, heads, H*W, C/heads)
        h = h.transpose(-1, -2).reshape(B, C, H, W)
        return x + self.proj(h)


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (the guide's and DDPM's downsampling)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour 2x upsampling then a 3x3 convolution (DDPM's; avoids transposed-conv checkerboards)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The residual blocks (each optionally followed by attention) of one resolution level of the U-Net."""

    def __init__(self, in_chs: list[int], out_ch: int, time_dim: int, attention: bool, num_heads: int,
                 dropout: float, norm_groups: int):
        super().__init__()
        self.res = nn.ModuleList([ResBlock(c, out_ch, time_dim, dropout, norm_groups) for c in in_chs])
        self.attn = nn.ModuleList(
            [AttentionBlock(out_ch, num_heads, norm_groups) if attention else nn.Identity() for _ in in_chs]
        )


class SimpleUNet(nn.Module):
    """Predicts the noise (or x0, or v) in ``x_t`` given the timestep ``t``: (B, C, H, W), (B,) -> (B, C, H, W).

    Args:
        in_channels: image channels.
        model_channels: channels of the first level; level i has ``model_channels * channel_mult[i]``.
        num_res_blocks: residual blocks per level in the encoder (the decoder has one more, as in DDPM).
        channel_mult: channel multiplier per level; the image is halved between levels, so its side must be
            divisible by ``2 ** (len(channel_mult) - 1)``.
        attention_levels: indices of the levels (0 = full resolution) that get self-attention after each block.
        num_heads: attention heads.
        dropout: dropout inside the residual blocks.
        norm_groups: GroupNorm groups (must divide every level's channels).
    """

    def __init__(
        self,
        in_channels: int = 3,
        model_channels: int = 64,
        num_res_blocks: int = 2,
        channel_mult: tuple[int, ...] = (1, 2, 4),
        attention_levels: tuple[int, ...] = (),
        num_heads: int = 1,
        dropout: float = 0.0,
        norm_groups: int = 8,
    ):
        super().__init__()
        channels = [model_channels * m for m in channel_mult]
        bad = [c for c in channels if c % norm_groups]
        if bad:
            raise ValueError(f"norm_groups={norm_groups} must divide every level's channels {channels}.")
        if any(not 0 <= i < len(channel_mult) for i in attention_levels):
            raise ValueError(f"attention_levels={attention_levels} must index channel_mult={channel_mult}.")
        if num_res_blocks < 1:
            raise ValueError(f"num_res_blocks={num_res_blocks} must be >= 1.")
        self.model_channels = model_channels
        self.num_levels = len(channel_mult)
        time_dim = model_channels * 4
        block = dict(time_dim=time_dim, num_heads=num_heads, dropout=dropout, norm_groups=norm_groups)

        # Time embedding: sinusoid of width model_channels -> MLP of width 4 * model_channels.
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, time_dim),
            nn.SiLU(),
            nn.Linear(time_dim, time_dim),
        )
        self.conv_in = nn.Conv2d(in_channels, model_channels, 3, padding=1)

        # Encoder: num_res_blocks blocks per level, then downsample (except after the last level).
        skips = [model_channels]  # channels of every tensor the decoder will concatenate
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        ch = model_channels
        for i, out_ch in enumerate(channels):
            in_chs = [ch] + [out_ch] * (num_res_blocks - 1)
            self.down.append(Level(in_chs, out_ch, attention=i in attention_levels, **block))
            skips += [out_ch] * num_res_blocks
            ch = out_ch
            last = i == self.num_levels - 1
            self.downsample.append(nn.Identity() if last else Downsample(ch))
            if not last:
                skips.append(ch)

        # Bottleneck: residual block, attention, residual block at the lowest resolution.
        self.mid1 = ResBlock(ch, ch, time_dim, dropout, norm_groups)
        self.mid_attn = AttentionBlock(ch, num_heads, norm_groups)
        self.mid2 = ResBlock(ch, ch, time_dim, dropout, norm_groups)

        # Decoder: num_res_blocks + 1 blocks per level, each taking one encoder skip, then upsample.
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, out_ch in reversed(list(enumerate(channels))):
            in_chs = []
            for _ in range(num_res_blocks + 1):
                in_chs.append(ch + skips.pop())
                ch = out_ch
            self.up.append(Level(in_chs, out_ch, attention=i in attention_levels, **block))
            self.upsample.append(Upsample(ch) if i > 0 else nn.Identity())

        self.out = nn.Sequential(
            nn.GroupNorm(norm_groups, ch),
            nn.SiLU(),
            nn.Conv2d(ch, in_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        factor = 2 ** (self.num_levels - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(
                f"image size {tuple(x.shape[-2:])} must be divisible by {factor} for {self.num_levels} levels; "
                f"change data.image_size or use fewer entries in model.channel_mult."
            )
        t_emb = self.time_embed(timestep_embedding(t, self.model_channels))  # (B, 4 * model_channels)

        h = self.conv_in(x)  # (B, model_channels, H, W)
        skips = [h]
        for level, downsample in zip(self.down, self.downsample):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, t_emb))
                skips.append(h)
            if not isinstance(downsample, nn.Identity):
                h = downsample(h)  # (B, ch, H/2, W/2)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, t_emb)), t_emb)

        for level, upsample in zip(self.up, self.upsample):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), t_emb))
            h = upsample(h)  # (B, ch, 2H, 2W) except after the full-resolution level
        return self.out(h)  # (B, C, H, W)
