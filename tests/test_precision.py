"""Mixed-precision matrix on CPU: every family trains a few steps in fp32 and bf16-mixed with finite losses and
changing weights. (16-mixed needs a GPU: on CPU Lightning replaces it with bf16-mixed.) And ``precision: null``
resolves by a rule: the hardware, and on a CPU with native bf16 what each family states it trains faster in."""

from __future__ import annotations

import pytest
import torch
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
    cli = run_cli("fit", "--config", "configs/dcgan_mnist.yaml", *CSV_LOGGER, "--trainer.accelerator=cpu",
                  "--trainer.precision=null", run=False)
    assert cli.trainer.precision == "32-true"
    assert "module14: precision 32-true: CPU without native bf16" in capsys.readouterr().err


STATED = {"vit": "bf16-mixed", "gan": "bf16-mixed", "vae": "bf16-mixed", "diffusion": "bf16-mixed"}  # measured


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_native_bf16_cpu_trains_in_what_the_family_states_every_time(run_cli, monkeypatch, capsys, family):
    """A rule, not a stopwatch: the same command on the same machine gets the same precision, with its reason, and
    the config records it (it was a timing of three steps, which flipped between runs under load)."""
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
    for _ in range(2):
        cli = run_cli("fit", *FAMILIES[family], *CSV_LOGGER, "--trainer.precision=null", run=False)
        assert cli.trainer.precision == STATED[family] == type(cli.model).precision_on_bf16_cpu
        assert cli.config.trainer.precision == STATED[family]  # what config.yaml saves
    name = type(cli.model).__name__
    assert (f"module14: precision {STATED[family]}: CPU with native bf16, where {name} trains faster in "
            f"{STATED[family]}") in capsys.readouterr().err


def test_a_model_that_states_nothing_trains_in_fp32_and_a_bad_statement_is_refused():
    class Plain(torch.nn.Module):
        pass

    class Wrong(torch.nn.Module):
        precision_on_bf16_cpu = "16-true"

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
        assert resolver.resolve_precision("cpu", Plain())[0] == "32-true"
        with pytest.raises(ValueError, match=r"Wrong.precision_on_bf16_cpu='16-true': state '32-true' or 'bf16-mixed'"):
            resolver.resolve_precision("cpu", Wrong())


def test_explicit_precision_wins(run_cli, monkeypatch):
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: True)
    cli = run_cli("fit", "--config", "configs/dcgan_mnist.yaml", *CSV_LOGGER, "--trainer.precision=32-true",
                  run=False)
    assert cli.trainer.precision == "32-true"


def test_a_resumed_fit_in_another_precision_than_its_checkpoint_says_so(run_cli, monkeypatch, capsys, tmp_path):
    """Trained where the rule gave bf16-mixed, resumed on a CPU without native bf16: fp32, and the line says why."""
    run = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, *CSV_LOGGER, "--trainer.limit_val_batches=0",
           "--data.num_workers=0", "--data.batch_size=16"]
    run_cli("fit", *run, "--trainer.max_steps=2", "--trainer.precision=bf16-mixed")
    (ckpt,) = tmp_path.glob("runs/**/checkpoints/last.ckpt")
    assert torch.load(ckpt, weights_only=True)["precision"] == "bf16-mixed"
    monkeypatch.setattr(resolver, "cpu_has_native_bf16", lambda: False)
    cli = run_cli("fit", *run, "--trainer.max_steps=4", "--trainer.precision=null", f"--ckpt_path={ckpt}")
    assert cli.trainer.global_step == 4 and cli.trainer.precision == "32-true"
    assert "; the checkpoint was trained in bf16-mixed" in capsys.readouterr().err
