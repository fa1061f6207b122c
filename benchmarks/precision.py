"""fp32 vs bf16-mixed train-step time per family on this machine, and the precision the CLI's resolver picks here.

    python benchmarks/precision.py [--steps 6] [--rounds 3] [--families vit vae gan diffusion]

Each family is built from its CPU-sized config through the real CLI and trained by a real Trainer on its real data;
the two precisions alternate round by round in one process (so a change in machine load hits both), and the median
of each round's best step time (after a warm-up step) is reported. The resolver must pick the faster precision.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402

FAMILIES = {  # CPU-sized configs, one per family
    "vit": "configs/vit_mnist.yaml",
    "vae": "configs/vae_cifar10.yaml",
    "gan": "configs/dcgan_mnist.yaml",
    "diffusion": "configs/ddpm_mnist.yaml",
}
PRECISIONS = ("32-true", "bf16-mixed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="train steps per precision per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    args = parser.parse_args()
    use_project_defaults()
    from cli import build_cli
    from training.precision import PROBE_MARGIN, probe_cpu_precision, resolve_precision, time_train_steps

    hardware_choice, reason = resolve_precision("cpu")
    print(machine_line())
    print(f"resolver: {hardware_choice or 'per model'} ({reason})\n")
    print("| family | config | fp32 ms/step | bf16-mixed ms/step | bf16 speed-up | faster | resolver |")
    print("|---|---|---|---|---|---|---|")
    for family in args.families:
        config = str(ROOT / FAMILIES[family])
        # Step times do not depend on which images: a partial CIFAR-10 copy (e.g. ../shared/data) is fine here.
        cli = build_cli(["--config", config, "--trainer.logger=false", "--data.num_workers=0",
                         "--data.init_args.verify_integrity=false", "--trainer.precision=32-true"], run=False)
        times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                times[precision].append(time_train_steps(cli.model, cli.datamodule, precision, args.steps))
        fp32, bf16 = (statistics.median(times[p]) * 1e3 for p in PRECISIONS)
        picked = hardware_choice or probe_cpu_precision(cli.model, cli.datamodule)[0]
        faster = "32-true" if fp32 <= bf16 else "bf16-mixed"
        close = max(fp32, bf16) / min(fp32, bf16) < PROBE_MARGIN  # within the margin, exact fp32 is kept
        verdict = "ok" if faster == picked or (close and picked == "32-true") else "WRONG"
        print(f"| {family} | {FAMILIES[family]} | {fp32:.0f} | {bf16:.0f} | {fp32 / bf16:.2f}x | {faster} | "
              f"{picked} ({verdict}) |", flush=True)


if __name__ == "__main__":
    main()
