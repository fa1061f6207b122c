"""Train-step speed-up of ``compile: true`` (torch.compile, inductor) per family on this CPU, compile time apart.

    python benchmarks/compile_speedup.py [--steps 6] [--rounds 3] [--cases vit vae dcgan unet] [--precision 32-true]

Each case is a CPU-sized config built through the real CLI (fp32 unless ``--precision bf16-mixed``, which only a CPU
with native bf16 runs at speed: ``benchmarks/precision.py``) and trained by a real Trainer on its real data
(``benchmarks.harness.train_step_seconds``); the ViT with dropout 0 (its config) and 0.1 (the guide's
default, attention dropout kept at 0), the latter with module14's ``Dropout`` (networks/dropout.py) and with
``nn.Dropout``. A case's eager and compiled copies (of every variant) alternate round by round in one process, so a
change in machine load hits all of them; a round's step time is the median of its steps after the first, and the table
shows the median over rounds. "compile s" is the first compiled step of the first round minus the eager step:
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

TORCH_MASK = "dropout 0.1, nn.Dropout"  # the same ViT with PyTorch's own dropout (its bernoulli_ mask) for comparison
CASES = {  # name: (config, {variant: overrides}); a case's variants are interleaved in the same rounds
    "vit": ("configs/vit_mnist.yaml", {"dropout 0": [], "dropout 0.1": ["--model.dropout=0.1"],
                                       TORCH_MASK: ["--model.dropout=0.1"]}),
    # the size class (32 px, 4x4 patches, 6 blocks); the shared CIFAR-10 copy is a subset
    "vit_cifar10": ("configs/vit_cifar10.yaml", {
        variant: [f"--model.dropout={p}", "--data.init_args.verify_integrity=false"]
        for variant, p in (("dropout 0", "0"), ("dropout 0.1", "0.1"), (TORCH_MASK, "0.1"))}),
    "vae": ("configs/vae_mnist.yaml", {"config": []}),
    "dcgan": ("configs/dcgan_mnist.yaml", {"config": []}),
    "unet": ("configs/ddpm_mnist.yaml", {"config": []}),
}
MODES = ("eager", "compiled")
GOAL_SPEEDUP = {"vit": 1.3, "vit_cifar10": 1.3, "unet": 1.3}  # issue 14
GOAL_DROPOUT_COST = 1.1  # a ViT step with dropout 0.1 at most this much slower than the dropout-free one


def build(config: str, overrides: list[str], compiled: bool, precision: str, torch_dropout: bool = False):
    from cli import build_cli

    cli = build_cli(["--config", str(ROOT / config), *overrides, "--trainer.logger=false", "--data.num_workers=0",
                     f"--trainer.precision={precision}", f"--model.init_args.compile={str(compiled).lower()}"],
                    run=False)
    if torch_dropout:
        use_torch_dropout(cli.model)
    return cli


def use_torch_dropout(model) -> None:
    """Swap every ``networks.dropout.Dropout`` of ``model`` for ``nn.Dropout`` with the same p."""
    import torch.nn as nn

    from networks.dropout import Dropout

    for module in list(model.modules()):
        for name, child in module.named_children():
            if isinstance(child, Dropout):
                setattr(module, name, nn.Dropout(child.p))


def measure(case: str, steps: int, rounds: int, precision: str) -> dict[str, dict[str, float]]:
    """Per variant: median eager and compiled ms/step over interleaved rounds, and the first compilation's seconds."""
    from benchmarks.harness import train_step_seconds

    config, variants = CASES[case]
    clis = {(v, mode): build(config, overrides, mode == "compiled", precision, v == TORCH_MASK)
            for v, overrides in variants.items() for mode in MODES}
    times: dict[tuple[str, str], list[float]] = {key: [] for key in clis}
    first_step: dict[tuple[str, str], float] = {}
    for _ in range(rounds):
        for key, cli in clis.items():
            seconds = train_step_seconds(cli.model, cli.datamodule, precision, steps + 1)
            times[key].append(statistics.median(seconds[1:]))
            first_step.setdefault(key, seconds[0])
    rows = {}
    for variant in variants:
        eager_s, compiled_s = (statistics.median(times[variant, mode]) for mode in MODES)
        rows[variant] = {"eager_ms": eager_s * 1e3, "compiled_ms": compiled_s * 1e3,
                         "compile_s": first_step[variant, "compiled"] - eager_s, "load": os.getloadavg()[0]}
    return rows


def goal_lines(results: dict[str, dict[str, dict[str, float]]]) -> list[str]:
    lines = []
    for case, goal in GOAL_SPEEDUP.items():
        for variant, row in results.get(case, {}).items():
            speedup = row["eager_ms"] / row["compiled_ms"]
            lines.append(f"- {case} ({variant}): compiled speed-up {speedup:.2f}x, goal >= {goal}x: "
                         f"{'met' if speedup >= goal else 'NOT met'}")
    for case in ("vit", "vit_cifar10"):
        for mode in MODES if case in results else ():
            for variant in ("dropout 0.1", TORCH_MASK):
                cost = results[case][variant][f"{mode}_ms"] / results[case]["dropout 0"][f"{mode}_ms"]
                lines.append(f"- {case}, {mode}, {variant}: step = {cost:.2f}x the dropout-free step, goal <= "
                             f"{GOAL_DROPOUT_COST}x: {'met' if cost <= GOAL_DROPOUT_COST else 'NOT met'}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed train steps per mode per round (after one more)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    use_project_defaults()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="compile_speedup_")  # cold compiles
    print(f"{machine_line()}; {args.precision}; backend inductor\n")
    print("| case | config | variant | eager ms/step | compiled ms/step | speed-up | compile s | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    results = {}
    for case in args.cases:
        results[case] = measure(case, args.steps, args.rounds, args.precision)
        for variant, row in results[case].items():
            print(f"| {case} | {CASES[case][0]} | {variant} | {row['eager_ms']:.0f} | {row['compiled_ms']:.0f} "
                  f"| {row['eager_ms'] / row['compiled_ms']:.2f}x | {row['compile_s']:.0f} | {row['load']:.1f} |",
                  flush=True)
    print("\n" + "\n".join(goal_lines(results)))


if __name__ == "__main__":
    main()
