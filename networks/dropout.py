"""Dropout (Srivastava et al. 2014) with a cheaper mask on CPU; every module14 network uses it instead of ``nn.Dropout``.

On CPU, PyTorch's dropout draws its mask with ``bernoulli_``, which (outside Intel's MKL path) takes a double-precision
uniform per element from the serial Mersenne Twister: in a ViT step that is most of what dropout costs
(``benchmarks/compile_speedup.py``). Here one 64-bit draw of the same generator decides four elements, 16 random bits
each, so the drop probability is ``p`` rounded to a multiple of 2**-16 (off by at most 7.7e-6) and the kept values
are scaled by 1 / (1 - that probability): the expectation is exactly the input's, as in ``nn.Dropout``. The mask
follows the global seed like any other CPU random op. On other devices, in eval mode and for p within 2**-17 of 0 or
1 the module is ``nn.Dropout``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

_LEVELS = 2**16  # 16 random bits per element


class Dropout(nn.Dropout):
    """``nn.Dropout(p, inplace)``, same arguments and state dict (none), with the CPU mask described above."""

    def forward(self, x: Tensor) -> Tensor:
        dropped = round(self.p * _LEVELS)  # of the 2**16 equally likely 16-bit values, this many drop
        if not self.training or dropped in (0, _LEVELS) or x.device.type != "cpu":
            return super().forward(x)
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(-(2**63), None)  # all 64 bits uniform
        keep = words.view(torch.int16)[:n].view(x.shape) >= dropped - _LEVELS // 2  # P(keep) = 1 - dropped / 2**16
        scale = keep.to(x.dtype).mul_(_LEVELS / (_LEVELS - dropped))
        return x.mul_(scale) if self.inplace else x * scale
