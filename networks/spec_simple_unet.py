"""The guide's ``SimpleUNet`` (docs/guide.md, Part 4, Step 2), verbatim but for imports: the baseline for
``benchmarks/unet_throughput.py`` and the counter-example in ``tests/test_diffusion.py`` (its output ignores t).
Do not use it for anything else: it computes a timestep embedding and never uses it (docs/guide_notes.md).
"""

import math

import torch
import torch.nn as nn


class SpecSimpleUNet(nn.Module):
    def __init__(self, in_channels=3, model_channels=64, num_res_blocks=2):
        super().__init__()
        self.time_embed = nn.Sequential(
            nn.Linear(model_channels, model_channels * 4),
            nn.SiLU(),
            nn.Linear(model_channels * 4, model_channels * 4),
        )
        self.down1 = nn.Sequential(
            nn.Conv2d(in_channels, model_channels, 3, padding=1), nn.GroupNorm(8, model_channels), nn.SiLU()
        )
        self.down2 = nn.Sequential(
            nn.Conv2d(model_channels, model_channels * 2, 3, stride=2, padding=1),
            nn.GroupNorm(8, model_channels * 2),
            nn.SiLU(),
        )
        self.down3 = nn.Sequential(
            nn.Conv2d(model_channels * 2, model_channels * 4, 3, stride=2, padding=1),
            nn.GroupNorm(8, model_channels * 4),
            nn.SiLU(),
        )
        self.bottleneck = nn.Sequential(
            nn.Conv2d(model_channels * 4, model_channels * 4, 3, padding=1),
            nn.GroupNorm(8, model_channels * 4),
            nn.SiLU(),
        )
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(model_channels * 4, model_channels * 2, 2, stride=2),
            nn.GroupNorm(8, model_channels * 2),
            nn.SiLU(),
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(model_channels * 4, model_channels, 2, stride=2),
            nn.GroupNorm(8, model_channels),
            nn.SiLU(),
        )
        self.up3 = nn.Sequential(
            nn.Conv2d(model_channels * 2, model_channels, 3, padding=1), nn.GroupNorm(8, model_channels), nn.SiLU()
        )
        self.out = nn.Conv2d(model_channels, in_channels, 1)

    def forward(self, x, t):
        t_emb = self.time_embed(self.get_timestep_embedding(t, x.device))  # noqa: F841  (the spec's bug: unused)
        h1 = self.down1(x)
        h2 = self.down2(h1)
        h3 = self.down3(h2)
        h = self.bottleneck(h3)
        h = self.up1(h)
        h = torch.cat([h, h2], dim=1)
        h = self.up2(h)
        h = torch.cat([h, h1], dim=1)
        h = self.up3(h)
        return self.out(h)

    def get_timestep_embedding(self, timesteps, device, dim=64):
        half_dim = dim // 2
        emb = math.log(10000) / (half_dim - 1)
        emb = torch.exp(torch.arange(half_dim, device=device) * -emb)
        emb = timesteps[:, None] * emb[None, :]
        emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=-1)
        return emb
