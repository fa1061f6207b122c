"""fp32 vs bf16-mixed train-step time of every experiment config on this machine, and the precision module14's rule
gives each here (``training/precision.py``): the rule must not pick the slower one by more than its margin.

    python benchmarks/precision.py [--steps 4] [--rounds 3] [--configs vit_mnist dcgan_mnist ...]

Each config is built through the real CLI and trained by a real Trainer on its real data (batch size as configured);
the two precisions alternate round by round in one process (so a change in machine load hits both), and the median
of each round's best step time (after a warm-up step) is reported. The GPU-sized configs (ddpm_cifar10,
ddpm_celeba) take minutes per round on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")
CONFIGS = sorted(path.stem for path in (ROOT / "configs").glob("*.yaml") if path.stem != "base")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=4, help="train steps per precision per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    args = parser.parse_args()
    use_project_defaults()
    from cli import build_cli
    from benchmarks.harness import time_train_steps
    from training.precision import MARGIN

    print(machine_line())
    print("| config | family | fp32 ms/step | bf16-mixed ms/step | bf16 speed-up | faster | rule | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        # Step times do not depend on which images: a partial CIFAR-10 copy (e.g. ../shared/data) is fine here.
        cli = build_cli(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--trainer.logger=false",
                         "--data.num_workers=0", "--data.init_args.verify_integrity=false",
                         "--trainer.accelerator=cpu"], run=False)
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                times[precision].append(time_train_steps(cli.model, cli.datamodule, precision, args.steps))
        fp32, bf16 = (statistics.median(times[p]) * 1e3 for p in PRECISIONS)
        picked = cli.trainer.precision
        faster = "32-true" if fp32 <= bf16 else "bf16-mixed"
        picked_ms = {"32-true": fp32, "bf16-mixed": bf16}[picked]
        verdict = "ok" if picked_ms <= MARGIN * min(fp32, bf16) else "SLOWER"
        family = type(cli.model).__name__ + (f" ({cli.model.hparams.architecture})"
                                             if "architecture" in cli.model.hparams else "")
        print(f"| {name} | {family} | {fp32:.0f} | {bf16:.0f} | {fp32 / bf16:.2f}x | {faster} | {picked} | "
              f"{verdict} |", flush=True)


if __name__ == "__main__":
    main()
