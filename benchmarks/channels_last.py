"""Does ``channels_last`` (NHWC) memory format pay for the conv families on this CPU? Train steps and U-Net sampling.

    python benchmarks/channels_last.py [--rounds 3] [--steps 5] [--cases unet dcgan dcgan_cifar10 ...]

For each case, the config's LightningModule is built through the real CLI and trained by a real Trainer on its real
data (``benchmarks.harness.train_step_seconds``) with ``channels_last: false`` (NCHW, PyTorch's default) and
``true`` (every 4-D weight in NHWC; a conv then writes NHWC outputs, so the layout carries through the network: see
``training/memory_format.py``), whatever the config says. Both layouts alternate round by round in one
process, in fp32 and, where this CPU has native bf16, in bf16-mixed; a round's figure is the median of its steps after
the first, the table the median over rounds. For the U-Net it also times sampling: 10 network evaluations of a batch
of 64 without gradients, in bf16 autocast where native. These figures decide which configs turn ``channels_last`` on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.compile_speedup import build  # noqa: E402
from benchmarks.machine import machine_line, use_project_defaults  # noqa: E402

_SUBSET = ["--data.init_args.verify_integrity=false"]  # the shared CIFAR-10 / CelebA copies are partial
CASES = {
    "unet": ("configs/ddpm_mnist.yaml", []),
    "dcgan": ("configs/dcgan_mnist.yaml", []),
    "dcgan_cifar10": ("configs/dcgan_cifar10.yaml", _SUBSET),
    "dcgan_celeba": ("configs/dcgan_celeba.yaml", _SUBSET),
    "vae_cifar10": ("configs/vae_cifar10.yaml", _SUBSET),
}
LAYOUTS = ("NCHW", "channels_last")


@torch.no_grad()
def sampling_seconds(net: torch.nn.Module, shape: tuple[int, ...], bf16: bool, calls: int = 10) -> float:
    x, t = torch.randn(64, *shape), torch.randint(0, 1000, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        net(x, t)  # warm-up
        start = time.perf_counter()
        for _ in range(calls):
            net(x, t)
    return (time.perf_counter() - start) / calls


def measure(case: str, precisions: list[str], rounds: int, steps: int, bf16: bool) -> list[dict]:
    from benchmarks.harness import train_step_seconds

    config, overrides = CASES[case]
    clis = {layout: build(config, [*overrides, f"--model.init_args.channels_last={str(on).lower()}"], False, "32-true")
            for layout, on in zip(LAYOUTS, (False, True))}
    models = {layout: cli.model for layout, cli in clis.items()}
    models["channels_last"].load_state_dict(models["NCHW"].state_dict())  # the same weights in both layouts
    for model in models.values():
        model.configure_model()  # where the model takes its layout (Lightning calls it again: a no-op)
    cli = clis["NCHW"]
    sample = "sampling" if case == "unet" else None
    timed = [*precisions, *([sample] if sample else [])]
    times: dict[tuple[str, str], list[float]] = {(what, layout): [] for what in timed for layout in LAYOUTS}
    for _ in range(rounds):
        for precision in precisions:
            for layout in LAYOUTS:
                seconds = train_step_seconds(models[layout], cli.datamodule, precision, steps + 1)
                times[precision, layout].append(statistics.median(seconds[1:]))
        if sample:
            for layout in LAYOUTS:
                net = models[layout].net.eval()
                times[sample, layout].append(sampling_seconds(net, cli.model.hparams.image_shape, bf16))
                net.train()
    rows = []
    for what in timed:
        nchw, last = (statistics.median(times[what, layout]) * 1e3 for layout in LAYOUTS)
        rows.append({"case": case, "config": config, "what": what if what == sample else f"train step, {what}",
                     "nchw_ms": nchw, "channels_last_ms": last, "speedup": nchw / last})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed train steps per layout per round (after one more)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # the configs are built with their own arguments (the CLI warns about these ones)
    use_project_defaults()
    from compat import cpu_has_native_bf16

    bf16 = cpu_has_native_bf16()
    precisions = ["32-true", "bf16-mixed"] if bf16 else ["32-true"]
    print(f"{machine_line()}; bf16 {'native' if bf16 else 'emulated: fp32 only'}\n")
    print("| case | config | what | NCHW ms | channels_last ms | channels_last speed-up |")
    print("|---|---|---|---|---|---|")
    for case in args.cases:
        for row in measure(case, precisions, args.rounds, args.steps, bf16):
            print(f"| {row['case']} | {row['config']} | {row['what']} | {row['nchw_ms']:.1f} | "
                  f"{row['channels_last_ms']:.1f} | {row['speedup']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
