"""benchmarks/gpu_check.py's whole logic at tiny sizes on CPU (--cpu-smoke), so the first GPU run does not fail on a
typo. Run as a subprocess, as on the GPU machine (the benchmark is never imported here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

FAMILIES = ["vit", "vae", "gan", "ddpm"]
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"]


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path, data_dir):
    out = tmp_path / "gpu_check"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--cpu-smoke", "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads((out / "results.json").read_text())
    rows = {(r["family"], r["precision"], r["compile"]): r for r in results["throughput"]}
    expected = {(f, p, c) for f in FAMILIES for p in PRECISIONS for c in (False, True)}
    assert set(rows) == expected and len(results["throughput"]) == len(expected)
    for (family, precision, compiled), row in rows.items():
        if precision == "16-mixed":
            assert row["status"] == "skipped: no CUDA"
        elif precision == "32-true" or not compiled:  # the smoke run compiles in 32-true only
            assert row["status"] == "ok" and row["images_per_s"] > 0 and row["finite"] == "yes", row
    assert [r["status"] for r in results["amp_checks"]] == ["ok", "ok"]
    assert {r["sampler"]: r["status"] for r in results["sampling"]}["ddim"] == "ok"
    assert results["real_fit"]["status"] == "ok" and results["real_fit"]["exit_code"] == 0
    assert results["failures"] == []

    table = (out / "results.md").read_text()
    for family in FAMILIES:
        rows_md = [line for line in table.splitlines() if line.startswith(f"| {family} | configs/")]
        assert len(rows_md) == len(PRECISIONS) * 2
    assert "## Real fit" in table and table in done.stdout  # the table is also printed


def gpu_session(tmp_path, *args: str) -> subprocess.CompletedProcess:
    """benchmarks/gpu_session.sh, copied into an empty tree (no row checkpoints) and run from there."""
    (tmp_path / "benchmarks").mkdir(exist_ok=True)
    script = tmp_path / "benchmarks" / "gpu_session.sh"
    script.write_text((ROOT / "benchmarks" / "gpu_session.sh").read_text())
    return subprocess.run(["bash", str(script), *args], cwd=tmp_path, capture_output=True, text=True, timeout=60)


def test_gpu_session_says_what_is_missing_before_it_starts(tmp_path):
    done = gpu_session(tmp_path, "run", ".gpu_data", "out", "585")
    assert done.returncode == 1 and not (tmp_path / "out").exists()  # nothing started
    assert ".gpu_data/MNIST/raw/*.gz (bash benchmarks/gpu_session.sh pack .gpu_data)" in done.stderr
    assert "runs/results/vit_mnist/seed42/final.ckpt (python benchmarks/results.py --row vit_mnist)" in done.stderr
    assert "runs/results/ddpm_mnist/seed42/final.ckpt (python benchmarks/results.py --row ddpm_mnist)" in done.stderr


@pytest.mark.parametrize("args", [(), ("run", ".gpu_data"), ("pack",), ("draw",)])
def test_gpu_session_usage(tmp_path, args):
    done = gpu_session(tmp_path, *args)
    assert done.returncode == 2 and "usage:" in done.stderr
