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
