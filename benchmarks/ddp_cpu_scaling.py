"""Training throughput of one family's config with 1 vs 2 CPU processes (DDP over gloo), through the real CLI.

    python benchmarks/ddp_cpu_scaling.py --config configs/vit_mnist.yaml [--steps 60] [extra CLI args...]

Each process gets ``torch`` threads = cores / processes, so both runs use the whole machine; the per-process batch is
the config's, so 2 processes train 2x the images per step. Prints images/s of the timed steps (after warm-up).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMER = '''
import time, lightning as L
class StepTimer(L.Callback):
    def __init__(self, warmup: int = 10):
        super().__init__(); self.warmup = warmup; self.start = None; self.images = 0
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup: self.start = time.perf_counter()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None: self.images += len(batch[0]) * trainer.world_size
    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero and self.start:
            print(f"THROUGHPUT {self.images / (time.perf_counter() - self.start):.1f}", flush=True)
'''


def run(config: str, processes: int, steps: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "step_timer.py").write_text(TIMER)
        threads = max(1, (os.cpu_count() or 2) // processes)
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{tmp}", OMP_NUM_THREADS=str(threads))
        args = [sys.executable, str(ROOT / "cli.py"), "fit", "--config", str(ROOT / config),
                "--trainer.logger=CSVLogger", f"--trainer.logger.init_args.save_dir={tmp}/runs",
                "--trainer.accelerator=cpu", f"--trainer.devices={processes}",
                f"--trainer.strategy={'ddp' if processes > 1 else 'auto'}", f"--trainer.max_steps={steps}",
                "--trainer.limit_val_batches=0", "--trainer.enable_checkpointing=true",
                "--trainer.callbacks+=step_timer.StepTimer", *extra]
        out = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True)
        match = re.search(r"THROUGHPUT ([0-9.]+)", out.stdout + out.stderr)
        if out.returncode or not match:
            raise RuntimeError(out.stderr[-3000:])
        return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/vit_mnist.yaml")
    parser.add_argument("--steps", type=int, default=60)
    args, extra = parser.parse_known_args()
    one = run(args.config, 1, args.steps, extra)
    two = run(args.config, 2, args.steps, extra)
    print(f"{args.config}: 1 process {one:.1f} img/s, 2 processes (DDP, gloo) {two:.1f} img/s: {two / one:.2f}x")


if __name__ == "__main__":
    main()
