"""benchmarks/results.py: RESULTS.md is rendered from the results file, and --row refuses an unknown row (no training)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import experiment_configs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results():
    spec = importlib.util.spec_from_file_location("results", ROOT / "benchmarks/results.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["results"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def run_record(seed: int, nelbo: float) -> dict:
    return {"seed": seed, "wall_s": 600.0, "batches": 4300, "batch_size": 128, "epochs": 10.0,
            "precision": "32-true", "load_avg_at_start": 3.5, "checkpoint": f"runs/results/vae_mnist/seed{seed}/final.ckpt",
            "metrics": {"test/iwae_nll": 95.0, "test/nelbo": nelbo}}


def vae_record(results) -> dict:
    runs = [run_record(0, 99.0), run_record(1, 101.0)]
    return {"command": "python benchmarks/results.py --row vae_mnist --seeds 0 1", "cli": "module14 fit ...",
            "hardware": "CPU: test CPU, 2 cores, flags avx2", "gpu_run": False, "torch_threads": 2,
            "date": "2026-01-01", "commit": "abc1234", "runs": runs, "metrics": results.summarise(runs),
            "protocol": "MNIST test split (10,000 images)", "grid": "docs/results/vae_mnist.png",
            "grid_caption": "prior samples", "generative": True,
            "metric_labels": [["test/nelbo", "-ELBO (nats)", "{:.2f}"], ["test/iwae_nll", "IWAE-100 NLL (nats)", "{:.2f}"]]}


def test_results_md_is_rendered_from_the_results_file(results, tmp_path):
    json_path, md_path = tmp_path / "results.json", tmp_path / "RESULTS.md"
    results.write({"vae_mnist": vae_record(results)}, json_path, md_path)
    assert json.loads(json_path.read_text())["vae_mnist"]["metrics"]["test/nelbo"]["values"] == [99.0, 101.0]
    table = [line for line in md_path.read_text().splitlines() if line.startswith("| `")]
    assert [line.split("`")[1] for line in table] == list(results.ROWS)  # one row per config, in order
    assert len(results.ROWS) == len(experiment_configs())
    vae = next(line for line in table if line.startswith("| `vae_mnist`"))
    assert "-ELBO (nats) 100.00 ± 1.41<br>IWAE-100 NLL (nats) 95.00" in vae  # mean ± std of the seeds, row's order
    assert "CPU-sized" not in vae  # vae_mnist runs its config's own budget on a CPU
    assert "4300/4300 batches of 128" in vae and "fit 10.0/10.0 min" in vae
    assert "[prior samples](docs/results/vae_mnist.png)" in vae
    assert "`python benchmarks/results.py --row vae_mnist --seeds 0 1`" in vae
    ddpm_cifar = next(line for line in table if line.startswith("| `ddpm_cifar10`"))
    assert "not yet run on a GPU" in ddpm_cifar
    assert "not yet run on a GPU" not in next(line for line in table if line.startswith("| `dcgan_mnist`"))


def test_the_committed_records_name_checkpoints_relative_to_the_repository(results):
    def checkpoints(value):
        if isinstance(value, dict):
            yield from (v for k, v in value.items() if k == "checkpoint")
            yield from (c for v in value.values() for c in checkpoints(v))
        elif isinstance(value, list):
            yield from (c for v in value for c in checkpoints(v))

    found = list(checkpoints(results.load_results()))
    assert len(found) >= 13 and all(path.startswith("runs/results/") for path in found), found  # no one machine's path


def test_a_row_run_on_a_cpu_says_its_gpu_config_is_not_yet_run_on_a_gpu(results, tmp_path):
    record = {**vae_record(results), "command": "python benchmarks/results.py --row vae_cifar10 --seeds 0 1"}
    results.write({"vae_cifar10": record}, tmp_path / "results.json", tmp_path / "RESULTS.md")
    row = next(line for line in (tmp_path / "RESULTS.md").read_text().splitlines() if line.startswith("| `vae_cifar10`"))
    assert "**not yet run on a GPU**" in row and "CPU-sized:" in row


def test_unknown_row_is_refused_without_training(results, capsys):
    with pytest.raises(SystemExit) as stop:
        results.main(["--row", "vae_mnsit"])
    assert stop.value.code == 2
    assert "unknown row 'vae_mnsit'" in capsys.readouterr().err


def run(command: str, date: str = "2026-01-01") -> dict:
    return {"command": command, "commit": "abc1234", "date": date, "samplers": []}


def test_sampler_table_states_the_solver_goal_from_its_own_figures(results, tmp_path):
    table = {"num_fid": 512, "real_train_vs_test": {"fid_vit": 0.5, "kid_vit": 0.001},
             "ddim50_eta0": {"fid_vit": 10.0, "kid_vit": 0.1}, "ddim50_eta0_seconds_64": 5.0,
             "dpm_solver20": {"fid_vit": 10.5, "kid_vit": 0.1}, "dpm_solver20_seconds_64": 2.0,
             "speedup_dpm_solver20_vs_ddim50_eta0": 2.5,
             "dpm_solver10": {"fid_vit": 12.0, "kid_vit": 0.1}, "dpm_solver10_seconds_64": 1.0,
             "speedup_dpm_solver10_vs_ddim50_eta0": 5.0, "features": "the MNIST ViT of commit abc1234",
             "runs": [run("python benchmarks/results.py --row ddpm_mnist --seeds 42")]}
    bigger = {**table, "num_fid": 10_000, "runs": [run("python benchmarks/results.py --sampler-table 10000")],
              "dpm_solver10": {"fid_vit": 10.9, "kid_vit": 0.1}}
    drawn_with_ddpm = {**table, "ddpm1000": {"fid_vit": 9.0, "kid_vit": 0.1}, "ddpm1000_seconds_64": 46.08}
    record = {**vae_record(results), "command": "python benchmarks/results.py --row ddpm_mnist --seeds 42",
              "samplers": [drawn_with_ddpm, bigger]}
    results.write({"ddpm_mnist": record}, tmp_path / "results.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    # the larger table first, each table with the command that measured it; only the smaller one carries the caveat
    assert text.index("(10,000 samples each") < text.index("(512 samples each")
    assert "`python benchmarks/results.py --sampler-table 10000` (2026-01-01, commit abc1234)" in text
    assert "dpm_solver10: FID 1.09x DDIM-50's, 5.0x as fast (met)" in text
    assert text.count("not the issue's 10,000") == 1
    # 46.08 s / 64 images:
    assert "its 10,000 samples (10,000,000 U-Net evaluations of one image) take 2.0 hours on this hardware" in text
    assert "| dpm_solver20 | 10.50 | 0.1000 | 2 | – | 2.5 |" in text
    assert "dpm_solver20: FID 1.05x DDIM-50's, 2.5x as fast (met)" in text
    assert "dpm_solver10: FID 1.20x DDIM-50's, 5.0x as fast (not met)" in text
    assert "FID and KID on the features of the MNIST ViT of commit abc1234." in text  # FIDs name their network
    # the samplers a table lacks are named, with the command that adds them
    assert text.count("Not yet drawn at 10,000 samples: ddpm1000, ddim100_eta0, ") == 1
    assert "--sampler-table 10000 --samplers ddpm1000 ddim100_eta0 ddim100_eta1 ddim50_eta1 " in text


@pytest.mark.parametrize("count", ["63", "0"])
def test_sampler_table_needs_at_least_64_samples(results, count, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "MNIST_CLASSIFIER", tmp_path / "vit.ckpt")
    (tmp_path / "vit.ckpt").write_bytes(b"")
    monkeypatch.setattr(results, "load_results", lambda: {"ddpm_mnist": {"runs": [{"checkpoint": "x.ckpt"}]}})
    with pytest.raises(SystemExit, match="use at least 64 samples"):
        results.main(["--sampler-table", count])


def test_a_table_from_before_tables_named_their_hardware_joins_a_new_one_on_the_rows_cpu(results, monkeypatch):
    cpu = "CPU: test CPU, 2 cores, flags avx2"
    earlier = {k: v for k, v in sampler_figures({"ddim50_eta0": 8.0}).items() if k not in ("hardware", "batch")}
    earlier["runs"] = [run("earlier")]  # a table from before tables recorded their hardware and batch
    written = {}
    monkeypatch.setattr(results, "load_results", lambda: {"ddpm_mnist": {"hardware": cpu, "samplers": [earlier]}})
    monkeypatch.setattr(results, "extra_sampler_table", lambda name, n, samplers: {
        **sampler_figures({"ddpm1000": 160.0}), "hardware": cpu, "batch": 64, "runs": [run("now")]})
    monkeypatch.setattr(results, "write", lambda r: written.update(r))
    results.main(["--sampler-table", "10000", "--samplers", "ddpm1000"])
    (table,) = written["ddpm_mnist"]["samplers"]
    assert [r["command"] for r in table["runs"]] == ["earlier", "now"]
    assert table["speedup_ddim50_eta0_vs_ddpm1000"] == 20.0


def test_sampler_table_refuses_an_unknown_sampler(results, capsys):
    with pytest.raises(SystemExit) as stop:
        results.main(["--sampler-table", "512", "--samplers", "ddim7_eta0"])
    assert stop.value.code == 2 and "invalid choice: 'ddim7_eta0'" in capsys.readouterr().err


def test_every_sampler_of_a_table_is_one_the_evaluation_runs_with_its_network_calls(results):
    sys.path.insert(0, str(ROOT))
    from benchmarks.sampling import network_calls, sampler_arguments

    assert [sampler_arguments(name)["sampler"] for name in results.SAMPLERS[:2]] == ["ddpm", "ddim"]
    for row in results.ROWS.values():
        assert all(sampler_arguments(name) for name in row.samplers)  # a bad name would raise ValueError
    assert sampler_arguments("heun10") == {"solver": "heun", "steps": 10}
    calls = {name: network_calls(name) for name in ("ddpm1000", "ddim50_eta1", "dpm_solver10", "euler20", "heun25")}
    assert calls == {"ddpm1000": 1000, "ddim50_eta1": 50, "dpm_solver10": 10, "euler20": 20, "heun25": 50}


def sampler_figures(seconds: dict[str, float], features: str = "ViT A", num_fid: int = 10_000) -> dict:
    return {"num_fid": num_fid, "features": features, "hardware": "CPU: test CPU, 2 cores, flags avx2", "batch": 64,
            "real_train_vs_test": {"fid_vit": 0.3, "kid_vit": 0.01},
            **{name: {"fid_vit": 5.0, "kid_vit": 0.2} for name in seconds},
            **{f"{name}_seconds_64": value for name, value in seconds.items()}}


def test_a_sampler_table_joins_the_earlier_one_with_the_same_count_and_features(results):
    first = {**sampler_figures({"ddim50_eta0": 8.0, "dpm_solver10": 1.6}), "runs": [run("first")]}
    small = {**sampler_figures({"ddim50_eta0": 6.0}, num_fid=512), "runs": [run("small")]}
    second = {**sampler_figures({"ddpm1000": 160.0, "dpm_solver10": 2.0}), "runs": [run("second", "2026-01-02")]}
    tables = results.merge_sampler_table([first, small], second)
    assert [t["num_fid"] for t in tables] == [512, 10_000] and tables[0] is small
    joined = tables[1]
    assert [r["command"] for r in joined["runs"]] == ["first", "second"]
    assert joined["dpm_solver10_seconds_64"] == 2.0  # measured again: the new figure
    assert joined["speedup_dpm_solver10_vs_ddim50_eta0"] == 4.0  # recomputed across both runs
    assert joined["speedup_ddim50_eta0_vs_ddpm1000"] == 20.0 and joined["speedup_dpm_solver10_vs_ddpm1000"] == 80.0
    text = "\n".join(results.sampler_section(joined))
    assert "`first` (2026-01-01, commit abc1234); `second` (2026-01-02, commit abc1234), on the ddpm_mnist" in text
    assert "| ddpm1000 | 5.00 | 0.2000 | 160 | – | 0.05 |" in text
    # a KID subset size is stated only when every KID of the table used it
    assert "kid_subset_size" not in joined and "; KID on 100 subsets" not in text
    on_1000 = {**sampler_figures({"ddim50_eta0": 8.0}), "kid_subset_size": 1000, "runs": [run("on 1000")]}
    assert "kid_subset_size" not in results.merge_sampler_table([first], on_1000)[0]  # dpm_solver10's KID is older
    everything = {**sampler_figures({"ddim50_eta0": 8.0, "dpm_solver10": 1.6}), "kid_subset_size": 1000,
                  "runs": [run("all again")]}
    (again,) = results.merge_sampler_table([first], everything)
    assert again["kid_subset_size"] == 1000 and [r["command"] for r in again["runs"]] == ["first", "all again"]
    assert "ViT A; KID on 100 subsets of 1,000 samples. Sampled on" in "\n".join(results.sampler_section(again))
    # on another feature network the FIDs are not comparable, on other hardware the times: the new table replaces
    other = {**sampler_figures({"ddpm1000": 160.0}, features="ViT B"), "runs": [run("third")]}
    assert results.merge_sampler_table([first], other) == [other]
    on_gpu = {**sampler_figures({"ddpm1000": 0.5}), "hardware": "GPU: NVIDIA H200", "batch": 1000, "runs": [run("4")]}
    assert results.merge_sampler_table([first], on_gpu) == [on_gpu]
    assert "Sampled on GPU: NVIDIA H200, 1000 images at a time" in "\n".join(results.sampler_section(on_gpu))


class CountingDiffusion:
    """A stand-in for a generative module whose sampler returns its initial noise, in [0, 1], and counts its calls."""

    def __init__(self):
        self.calls = 0

    def sample(self, n, generator, noise, **sampler):
        self.calls += 1
        return (noise + 1) / 2


def test_a_stopped_sampler_run_resumes_from_its_saved_batches(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.sampling import draw

    noise = torch.rand(150, 1, 4, 4) * 2 - 1
    (tmp_path / "ddim10_eta0").mkdir()
    module = CountingDiffusion()
    images, seconds, _ = draw(module, "ddim10_eta0", noise, tmp_path / "ddim10_eta0", "ckpt A", bf16=False)
    assert module.calls == 3 and len(seconds) == 3  # batches of 64, 64 and 22
    assert torch.allclose(images, (noise + 1) / 2)
    (tmp_path / "ddim10_eta0" / "00064.pt").unlink()  # as if the run had been stopped before its second batch
    again, seconds_again, _ = draw(module, "ddim10_eta0", noise, tmp_path / "ddim10_eta0", "ckpt A", bf16=False)
    assert module.calls == 4  # only the missing batch was drawn again
    assert torch.equal(again, images) and seconds_again[0] == seconds[0] and seconds_again[2] == seconds[2]
    with pytest.raises(SystemExit, match="was drawn from ckpt A, not from ckpt B: delete"):
        draw(module, "ddim10_eta0", noise, tmp_path / "ddim10_eta0", "ckpt B", bf16=False)
    with pytest.raises(SystemExit, match="was drawn in batches of 64, not 100: delete"):
        draw(module, "ddim10_eta0", noise, tmp_path / "ddim10_eta0", "ckpt A", bf16=False, batch=100)


def test_samplers_whose_every_batch_is_saved_are_named_as_reused_in_the_table(results, tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.sampling import draw

    noise = torch.zeros(150, 1, 4, 4)
    for name in ("ddim10_eta0", "dpm_solver10"):
        draw(CountingDiffusion(), name, noise, tmp_path / name, "ckpt A", bf16=False)
    (tmp_path / "dpm_solver10" / "00128.pt").unlink()  # its last batch is still to be drawn
    drawn = {name: draw(CountingDiffusion(), name, noise, tmp_path / name, "ckpt A", bf16=False)[2]
             for name in ("ddim10_eta0", "dpm_solver10", "ddpm1000")}
    assert drawn == {"ddim10_eta0": 0, "dpm_solver10": 1, "ddpm1000": 3}  # evaluate lists the samplers with 0: reused

    table = {**sampler_figures({"ddim10_eta0": 1.0, "dpm_solver10": 1.0}),
             "runs": [run("drew"), {**run("again"), "samplers": ["ddim10_eta0"], "reused": ["ddim10_eta0"]},
                      {**run("both"), "samplers": ["ddim10_eta0", "dpm_solver10"], "reused": ["ddim10_eta0"]}]}
    text = "\n".join(results.sampler_section(table))
    assert ("`drew` (2026-01-01, commit abc1234); `again` (2026-01-01, commit abc1234; FID/KID of every sampler's "
            "samples saved by the runs before, with their times); `both` (2026-01-01, commit abc1234; FID/KID of "
            "ddim10_eta0's samples saved by the runs before, with their times), on the") in text


def test_sampler_times_are_per_64_images_whatever_the_batch(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.sampling import draw

    noise = torch.zeros(150, 1, 4, 4)
    draw(CountingDiffusion(), "ddim10_eta0", noise, tmp_path, "ckpt A", bf16=False, batch=128)
    for name, size in (("00000.pt", 128), ("00128.pt", 22)):  # as if each batch had taken 2 s
        saved = torch.load(tmp_path / name)
        assert len(saved["images"]) == size and saved["batch"] == 128
        torch.save({**saved, "seconds": 2.0}, tmp_path / name)
    images, seconds, _ = draw(CountingDiffusion(), "ddim10_eta0", noise, tmp_path, "ckpt A", bf16=False, batch=128)
    assert len(images) == 150 and seconds == pytest.approx([1.0, 2.0 * 64 / 22])


def test_the_real_images_of_the_floor_are_the_same_in_every_run():
    sys.path.insert(0, str(ROOT))
    from benchmarks.sampling import real_images

    first, again = real_images(64, train=True), real_images(64, train=True)
    assert first.shape == (64, 1, 32, 32) and torch.equal(first, again)
    assert not torch.equal(first, real_images(64, train=False))  # and the two splits differ


def test_rows_with_sampler_tables_are_set_side_by_side_by_network_calls(results):
    """ddpm_mnist and flow_mnist (the same U-Net and budget): their samplers at 10, 20 ... network calls each."""
    ddpm = {**vae_record(results), "samplers": [{**sampler_figures({"ddim10_eta0": 0.7, "ddim20_eta1": 1.4}),
                                                 "runs": [run("ddpm")]}]}
    flow = {**vae_record(results), "samplers": [{**sampler_figures({"euler10": 0.8, "heun5": 0.9, "euler20": 1.5}),
                                                 "runs": [run("flow")]}]}
    lines = results.by_network_calls({"ddpm_mnist": ddpm, "flow_mnist": flow})
    rows = [line.split(" | ")[:3] for line in lines if line.startswith("| 1") or line.startswith("| 2")]
    assert rows == [["| 10", "ddpm_mnist", "ddim10_eta0"], ["| 10", "flow_mnist", "euler10"],
                    ["| 10", "flow_mnist", "heun5"], ["| 20", "ddpm_mnist", "ddim20_eta1"],
                    ["| 20", "flow_mnist", "euler20"]]
    assert "10,000 samples each: ddpm_mnist, flow_mnist" in lines[0]
    other_features = {**flow, "samplers": [{**flow["samplers"][0], "features": "ViT B"}]}
    assert results.by_network_calls({"ddpm_mnist": ddpm, "flow_mnist": other_features}) == []  # FIDs not comparable


def test_a_retrained_row_keeps_its_old_sampler_tables_apart_under_the_old_commit(results, tmp_path):
    """The 10,000-sample table of a checkpoint took hours: retraining the row keeps it, labelled as the old one's."""
    old = {**vae_record(results), "commit": "old1234", "date": "2026-11-30",
           "samplers": [{**sampler_figures({"ddpm1000": 75.0, "ddim50_eta0": 3.7}), "runs": [run("old table")]}]}
    new = {**vae_record(results), "commit": "new5678", "samplers": [
        {**sampler_figures({"ddim50_eta0": 3.6}, features="ViT B", num_fid=512), "runs": [run("new table")]}]}
    record = {**new, **results.earlier_sampler_tables(old)}
    assert results.earlier_sampler_tables(record)["earlier_samplers"][0]["commit"] == "old1234"  # kept when retrained again
    results.write({"ddpm_mnist": record}, tmp_path / "results.json", tmp_path / "RESULTS.md")
    text = (tmp_path / "RESULTS.md").read_text()
    assert text.index("### `ddpm_mnist` samplers (512 samples each") < text.index(
        "### `ddpm_mnist` samplers of the earlier checkpoint (the row of commit old1234, 2026-11-30; 10,000 samples each)")
    assert "which the row no longer holds" in text and "| ddpm1000 | 5.00 | 0.2000 | 75 | – | – |" in text


TINY = ("--trainer.max_steps=2 --trainer.limit_val_batches=1 --trainer.limit_test_batches=2 "
        "--data.init_args.batch_size=8 --data.init_args.num_workers=0")


def check_row(table: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "benchmarks/results.py", "--row", "vit_mnist", "--check", "--seeds", "7",
                           f"--table={table}", f"--extra-args={TINY}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_check_passes_the_figures_of_the_same_run_and_fails_when_the_table_says_otherwise(results, tmp_path):
    """--check on a tiny budget: the same seed trained again here reproduces its own record (exit 0), and a table
    whose accuracy differs by more than the band fails (exit 1), naming the metric."""
    row = results.ROWS["vit_mnist"]
    extra = tuple(TINY.split())

    def record(accuracy: float) -> dict:
        run = {"seed": 7, "wall_s": 1.0, "metrics": {"test/acc": accuracy}}
        return {"cli": results.recorded_cli(row, 7, extra), "gpu_run": False, "runs": [run],
                "metrics": results.summarise([run]), "commit": "abc1234", "date": "2026-01-01", "hardware": "CPU: test",
                "metric_labels": [["test/acc", "test accuracy", "{:.2%}"]]}

    table = tmp_path / "results.json"
    table.write_text(json.dumps({"vit_mnist": record(2.0)}))  # no accuracy is 200%: outside any band
    first = check_row(table)
    assert first.returncode == 1, first.stdout + first.stderr
    assert "OUTSIDE  test accuracy" in first.stdout and "outside the band: test/acc" in first.stdout
    measured = json.loads((ROOT / "runs/check/vit_mnist/check.json").read_text())["metrics"]["test/acc"]["here"]["mean"]

    table.write_text(json.dumps({"vit_mnist": record(measured)}))  # the figure this run recorded
    second = check_row(table)
    assert second.returncode == 0, second.stdout + second.stderr
    assert "every metric inside the band" in second.stdout
    assert f"seed 7: table {measured:.2%}, here {measured:.2%}" in second.stdout  # the same seed, the same figure

    table.write_text(json.dumps({"vit_mnist": {**record(measured), "cli": "module14 fit --config other.yaml"}}))
    other = check_row(table)  # a row measured another way is not compared
    assert other.returncode != 0 and "would not compare" in other.stderr


@pytest.mark.parametrize("same", [True, False])
def test_a_table_from_before_the_ruler_names_it_only_when_the_ruler_gives_its_floor(results, monkeypatch, same):
    """``--ruler-floor``: the ruler's real-vs-real floor on the table's images decides; one digit off keeps the old
    features (a ruler that is not the old ViT would change every FID), and the table says so."""
    import benchmarks.sampling

    table = {**sampler_figures({"ddim10_eta0": 0.7}), "num_fid": 64, "features": "the old ViT",
             "real_train_vs_test": {"fid_vit": 6.47149, "kid_vit": 0.12756, "kid_std_vit": 0.06768}}
    floor = {**table["real_train_vs_test"], "fid_vit": 6.47149 if same else 6.47148}
    monkeypatch.setattr(benchmarks.sampling, "real_images", lambda n, train: torch.zeros(n, 1, 32, 32))
    monkeypatch.setattr(benchmarks.sampling, "quality", lambda ruler, n, real, fake, device: dict(floor))
    checked = results.ruler_floor_check(table)
    assert checked["ruler_check"]["same"] is same and checked["ruler_check"]["features_before"] == "the old ViT"
    assert checked["features"] == (results.feature_network() if same else "the old ViT")
    text = " ".join(results.sampler_section({**checked, "runs": [run("ddpm")]}))
    assert ("these FIDs are on the ruler" in text) is same and ("not on the shipped ruler" in text) is not same


@pytest.mark.parametrize("fit, test, exact", [("32-true", None, True), ("bf16-mixed", "32-true", True),
                                              ("bf16-mixed", "bf16-mixed", False), ("bf16-mixed", None, False)])
def test_the_shipped_weights_command_names_fp32_where_the_row_was_tested_in_it(results, fit, test, exact):
    """A row tested in exact fp32 (``test_precision``; before it was recorded, the fit's) prints a command that gives
    its figure on every CPU; a bf16-tested row leaves the precision to the machine's rule."""
    run = {**run_record(0, 99.0), "precision": fit} | ({"test_precision": test} if test else {})
    record = {**vae_record(results), "runs": [run], "weights": {"seed": 0}}
    command = results.pretrained_command("vae_mnist", record)
    assert ("--trainer.precision=32-true" in command) == exact
    assert command.startswith("module14 test --config configs/vae_mnist.yaml --seed_everything=0")


def test_every_figure_the_readme_quotes_is_in_results_md():
    """The README's headline figures are read off RESULTS.md, so a re-measured row cannot leave them stale."""
    readme = (ROOT / "README.md").read_text()
    quoted = re.search(r"On a 2-core CPU: (.*?)\n\n", readme, flags=re.DOTALL).group(1)
    figures = re.findall(r"\d+\.\d+", quoted)
    assert len(figures) >= 4, quoted
    table = (ROOT / "RESULTS.md").read_text()
    assert [f for f in figures if not re.search(rf"(?<![\d.]){re.escape(f)}(?![\d])", table)] == []
