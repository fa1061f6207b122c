"""Mixed-precision matrix on CPU: every family trains a few steps in fp32 and bf16-mixed with finite losses and
changing weights. (16-mixed needs a GPU: on CPU Lightning replaces it with bf16-mixed.) And ``precision: null``
resolves to the faster precision for the hardware."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import CSV_LOGGER, SUBSET_OPT_IN, TINY_DDPM, TINY_VIT, LayoutWatch

from training import precision as resolver

FAMILIES = {
    "vit": ["--config", "configs/vit_mnist.yaml", *TINY_VIT],
    "gan": ["--config", "configs/dcgan_mnist.yaml", "--model.feature_maps=8"],
    "vae": ["--config", "configs/vae_cifar10.yaml", SUBSET_OPT_IN],
    "diffusion": ["--config", "configs/ddpm_mnist.yaml", *TINY_DDPM],
}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trains_under_precision(run_cli, family, precision):
    cli = run_cli("fit", *FAMILIES[family], *CSV_LOGGER, f"--trainer.precision={precision}", "--trainer.max_steps=3",
                  "--trainer.limit_val_batches=0",
                  "--trainer.enable_model_summary=false", "--data.num_workers=0", "--data.batch_size=16", run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    assert cli.trainer.precision == precision
    layouts = LayoutWatch()
    cli.trainer.callbacks.append(layouts)
    cli.trainer.fit(cli.model, cli.datamodule)
    assert layouts.steps >= 3 and layouts.mismatched == []  # every gradient and moment in its parameter's layout
    losses = {k: v for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(before[k], v) for k, v in cli.model.state_dict().items() if v.is_floating_point())
    fused = family != "diffusion"  # DDPM clips its gradients: training.optim.fused_adam
    assert all(group["fused"] == fused for opt in cli.trainer.optimizers for group in opt.param_groups)


# --- precision: null resolves for the hardware -------------------------------------------------------------------

@pytest.mark.parametrize("cuda, bf16, expected", [(True, True, "bf16-mixed"), (True, False, "16-mixed")])
def test_cuda_resolves_to_bf16_mixed_or_16_mixed(monkeypatch, cuda, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Test GPU")
    assert resolver.resolve_precision("auto")[0] == expected
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: False)
    assert resolver.resolve_precision("cpu")[0] == "32-true"  # accelerator: cpu never takes the GPU's precision


def test_cpu_without_native_bf16_trains_in_fp32_and_says_why(run_cli, monkeypatch, capsys):
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: False)
    cli = run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.accelerator=cpu",
                  "--trainer.precision=null", run=False)
    assert cli.trainer.precision == "32-true"
    assert "module14: precision 32-true (CPU without native bf16" in capsys.readouterr().err


@pytest.mark.parametrize("fp32_s, bf16_s, expected", [(1.0, 0.5, "bf16-mixed"), (1.0, 2.0, "32-true"),
                                                      (1.0, 0.95, "32-true")])  # within 10%: exact fp32 stays
def test_native_bf16_cpu_times_the_model_and_keeps_the_faster(run_cli, monkeypatch, capsys, tmp_path,
                                                              fp32_s, bf16_s, expected):
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
    timed = []

    def fake_time(model, datamodule, precision, steps=3):
        timed.append(precision)
        return {"32-true": fp32_s, "bf16-mixed": bf16_s}[precision]

    monkeypatch.setattr(resolver, "time_train_steps", fake_time)
    cli = run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.max_steps=1",
                  "--trainer.limit_val_batches=0", "--data.num_workers=0", "--trainer.precision=null")
    assert sorted(timed) == ["32-true", "bf16-mixed"]
    assert cli.trainer.precision == expected and "timed on this CPU" in capsys.readouterr().err
    (saved,) = tmp_path.glob("runs/**/checkpoints/config.yaml")
    assert yaml.safe_load(saved.read_text())["trainer"]["precision"] == expected  # the record says what ran


def test_fast_dev_run_is_not_timed_and_says_so(run_cli, monkeypatch, capsys):
    """Timing 8 training steps made a 35M-parameter U-Net's one-batch smoke run take 4 minutes on a CPU."""
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(resolver, "time_train_steps", lambda *a, **k: pytest.fail("timed a fast_dev_run"))
    cli = run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.fast_dev_run=true",
                  "--data.num_workers=0", "--trainer.precision=null")
    assert cli.trainer.state.finished and cli.trainer.precision == "32-true"
    assert "precision 32-true (CPU with native bf16, not timed in a fast_dev_run" in capsys.readouterr().err


def test_explicit_precision_wins_and_nothing_is_timed(run_cli, monkeypatch):
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(resolver, "time_train_steps", lambda *a, **k: pytest.fail("timed an explicit precision"))
    cli = run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.precision=32-true",
                  run=False)
    assert cli.trainer.precision == "32-true"


def test_time_train_steps_leaves_the_model_and_random_streams_alone(run_cli):
    cli = run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.precision=32-true",
                  "--data.num_workers=0", run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    state = torch.random.get_rng_state()
    assert resolver.time_train_steps(cli.model, cli.datamodule, "32-true", steps=1) > 0
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(before[k], v) for k, v in cli.model.state_dict().items())


def test_resumed_fit_keeps_the_checkpoints_precision_untimed(run_cli, monkeypatch, capsys, tmp_path):
    """On a native-bf16 CPU, timing decides; a resumed run must not flip precision mid-training on a new timing."""
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
    run = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.limit_val_batches=0",
           "--data.num_workers=0", "--data.batch_size=16"]
    run_cli("fit", *run, "--trainer.max_steps=2", "--trainer.precision=bf16-mixed")
    (ckpt,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    assert torch.load(ckpt, weights_only=True)["precision"] == "bf16-mixed"
    monkeypatch.setattr(resolver, "time_train_steps", lambda *a, **k: pytest.fail("timed a resumed fit"))
    cli = run_cli("fit", *run, "--trainer.max_steps=4", "--trainer.precision=null", f"--ckpt_path={ckpt}")
    assert cli.trainer.global_step == 4 and cli.trainer.precision == "bf16-mixed"
    assert "precision bf16-mixed (CPU with native bf16: the precision of the run this checkpoint continues" in \
        capsys.readouterr().err
