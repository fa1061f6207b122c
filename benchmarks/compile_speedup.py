"""Train-step speed-up of ``compile: true`` (torch.compile, inductor) per family on this CPU, compile time apart.

    python benchmarks/compile_speedup.py [--steps 6] [--rounds 3] [--cases vit vit_dropout ...]

Each case is a CPU-sized config built through the real CLI (fp32) and trained by a real Trainer on its real data
(``lightning_modules.precision.train_step_seconds``). Eager and compiled copies alternate round by round in one
process, so a change in machine load hits both; a round's step time is the median of its steps after the first, and
the table shows the median over rounds. "compile s" is the first compiled step of the first round minus the eager step:
Dynamo capture plus inductor's code generation, with a cold cache (the script points ``TORCHINDUCTOR_CACHE_DIR`` at a
new folder; a later run of the same model on the same machine finds inductor's on-disk cache and compiles in about a
second). Later rounds reuse the compiled code. The load average is printed per row: on a shared machine the absolute
figures are inflated, the ratios much less.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402

CASES = {  # name: (config, overrides)
    "vit": ("configs/vit_mnist.yaml", []),
    "vit_dropout": ("configs/vit_mnist.yaml", ["--model.dropout=0.1"]),
    "vit_dropout_attn": ("configs/vit_mnist.yaml", ["--model.dropout=0.1", "--model.attn_dropout=0.1"]),
    "vae": ("configs/vae_mnist.yaml", []),
    "dcgan": ("configs/dcgan_mnist.yaml", []),
    "unet": ("configs/ddpm_mnist.yaml", []),
}
DROPOUT_FREE = {"vit_dropout": "vit", "vit_dropout_attn": "vit"}
GOAL_SPEEDUP = {"vit": 1.3, "unet": 1.3}  # issue 14
GOAL_DROPOUT_COST = 1.1  # a ViT step with dropout 0.1 at most this much slower than the dropout-free one


def build(config: str, overrides: list[str], compiled: bool):
    from cli import build_cli

    return build_cli(["--config", str(ROOT / config), *overrides, "--trainer.logger=false", "--data.num_workers=0",
                      "--trainer.precision=32-true", f"--model.init_args.compile={str(compiled).lower()}"], run=False)


def measure(case: str, steps: int, rounds: int) -> dict[str, float]:
    """Median eager and compiled ms/step over interleaved rounds, and the first compilation's seconds."""
    from lightning_modules.precision import train_step_seconds

    config, overrides = CASES[case]
    eager, compiled = build(config, overrides, False), build(config, overrides, True)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    first_compiled_step = None
    for _ in range(rounds):
        for mode, cli in (("eager", eager), ("compiled", compiled)):
            seconds = train_step_seconds(cli.model, eager.datamodule, "32-true", steps + 1)
            times[mode].append(statistics.median(seconds[1:]))
            if mode == "compiled" and first_compiled_step is None:
                first_compiled_step = seconds[0]
    eager_s, compiled_s = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"eager_ms": eager_s * 1e3, "compiled_ms": compiled_s * 1e3,
            "compile_s": first_compiled_step - eager_s, "load": os.getloadavg()[0]}


def goal_lines(rows: dict[str, dict[str, float]]) -> list[str]:
    lines = []
    for case, goal in GOAL_SPEEDUP.items():
        if case in rows:
            speedup = rows[case]["eager_ms"] / rows[case]["compiled_ms"]
            lines.append(f"- {case}: compiled speed-up {speedup:.2f}x, goal >= {goal}x: "
                         f"{'met' if speedup >= goal else 'NOT met'}")
    for case, base in DROPOUT_FREE.items():
        if case in rows and base in rows:
            for mode in ("eager", "compiled"):
                cost = rows[case][f"{mode}_ms"] / rows[base][f"{mode}_ms"]
                lines.append(f"- {case} vs {base}, {mode}: {cost:.2f}x the dropout-free step, goal <= "
                             f"{GOAL_DROPOUT_COST}x: {'met' if cost <= GOAL_DROPOUT_COST else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed train steps per mode per round (after one more)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    use_project_defaults()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_speedup_")  # cold compiles
    print(f"{machine_line()}; fp32; backend inductor\n")
    print("| case | config | overrides | eager ms/step | compiled ms/step | speed-up | compile s | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for case in args.cases:
        rows[case] = row = measure(case, args.steps, args.rounds)
        config, overrides = CASES[case]
        print(f"| {case} | {config} | {' '.join(overrides) or '-'} | {row['eager_ms']:.0f} | {row['compiled_ms']:.0f} "
              f"| {row['eager_ms'] / row['compiled_ms']:.2f}x | {row['compile_s']:.0f} | {row['load']:.1f} |",
              flush=True)
    print("\n" + "\n".join(goal_lines(rows)))


if __name__ == "__main__":
    main()
