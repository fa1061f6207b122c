"""``compile: true`` on any module14 LightningModule: its trained networks run through ``torch.compile`` (inductor).

Each network is compiled in place with ``nn.Module.compile()``, which compiles the module's call and leaves its
parameters where they are: state-dict keys, checkpoints (a compiled run's loads into an eager model and back), the
optimizer's parameter groups, resume and the EMA copies (deep copies of the eager network, made in ``__init__``) are the
same as without it. The modules call ``compile_networks`` from Lightning's ``configure_model`` hook, which runs on
every process before the model moves to its device and DDP wraps it; a deep copy (``__getstate__`` drops the compiled
call) is eager until its own ``configure_model``.

Off by default: on a CPU the first step pays tens of seconds of compilation (``benchmarks/compile_speedup.py``
prints the speed-up and the compile time per family).
"""

from __future__ import annotations

import torch.nn as nn

from compat import is_compiled

BACKEND = "inductor"  # the tests switch to "aot_eager", which compiles in a fraction of the time


def compile_networks(*networks: nn.Module) -> None:
    """Compile each network's call in place (once: ``configure_model`` runs at every fit, validate, test, predict)."""
    for network in networks:
        if not is_compiled(network):
            network.compile(backend=BACKEND)
