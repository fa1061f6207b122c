"""``compile: true``: every family compiles its networks in place (state-dict keys unchanged), a compiled step matches
the eager one, and checkpoints move between compiled and eager runs (EMA included), resuming either way.

The tests compile with the ``aot_eager`` backend (the same Dynamo capture and autograd graph as inductor, without
inductor's minute-long C++ code generation on this CPU); ``benchmarks/compile_speedup.py`` runs inductor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import CSV_LOGGER, TINY_GAN, TINY_VIT

from compat import is_compiled
from lightning_modules import DiffusionModule, GANModule, VAEModule, ViTClassifier
from training import compiling

FAMILIES = {  # tiny models, and the networks each compiles
    "vit": (lambda c: ViTClassifier((1, 28, 28), 10, patch_size=7, embed_dim=32, depth=1, num_heads=2, compile=c),
            ["net"]),
    "vae": (lambda c: VAEModule((1, 28, 28), hidden_dim=16, latent_dim=4, compile=c), ["net"]),
    "gan": (lambda c: GANModule((1, 32, 32), architecture="dcgan", feature_maps=8, ema_decay=0.9, compile=c),
            ["generator", "discriminator"]),
    "diffusion": (lambda c: DiffusionModule((1, 32, 32), model_channels=8, channel_mult=(1, 2), norm_groups=4,
                                            compile=c), ["net"]),
}


@pytest.fixture(autouse=True)
def _fast_backend(monkeypatch):
    monkeypatch.setattr(compiling, "BACKEND", "aot_eager")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compile_is_off_by_default_and_keeps_state_dict_keys(family):
    build, networks = FAMILIES[family]
    eager, compiled = build(False), build(True)
    for model in (eager, compiled):
        model.configure_model()
    assert not any(is_compiled(getattr(eager, name)) for name in networks)
    assert all(is_compiled(getattr(compiled, name)) for name in networks)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    compiled.load_state_dict(eager.state_dict())  # strict, both ways
    eager.load_state_dict(compiled.state_dict())


def test_compiled_vit_step_matches_eager_loss_and_gradients():
    torch.manual_seed(0)
    eager = FAMILIES["vit"][0](False)
    compiled = FAMILIES["vit"][0](True)
    compiled.load_state_dict(eager.state_dict())
    compiled.configure_model()
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    torch.manual_seed(1)  # dropout 0.1 (the default): the same seed draws the same masks
    eager_loss = F.cross_entropy(eager(x), y)
    torch.manual_seed(1)
    compiled_loss = F.cross_entropy(compiled(x), y)
    eager_loss.backward()
    compiled_loss.backward()
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-4, atol=1e-5)
    for (name, p_eager), p_compiled in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, rtol=1e-3, atol=1e-5, msg=name)


def test_compiled_gan_checkpoint_resumes_eagerly_and_loads_back_into_a_compiled_model(run_cli, tmp_path):
    compiled = run_cli("fit", *TINY_GAN, "--model.compile=true", "--trainer.max_steps=4")
    assert is_compiled(compiled.model.generator)
    assert compiled.trainer.global_step == 4  # two batches of D and G steps, through the compiled networks
    (checkpoint,) = tmp_path.glob("runs/**/last.ckpt")

    # The checkpoint's compile: true is a run setting, not merged into the next run's config: this resume is eager.
    resumed = run_cli("fit", *TINY_GAN, "--trainer.max_steps=8", f"--ckpt_path={checkpoint}")
    assert resumed.trainer.global_step == 8
    assert not resumed.model.hparams.compile and not is_compiled(resumed.model.generator)
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert list(resumed.model.state_dict()) == list(saved)  # ema.* included
    assert not torch.equal(resumed.model.ema.module.model[0].weight,
                           saved["ema.module.model.0.weight"])  # the EMA kept moving after the resume

    # And an eager run's weights load strictly into a compiled model, which generates the same images.
    model = GANModule.load_from_checkpoint(checkpoint, compile=True)
    model.configure_model()
    model.load_state_dict(resumed.model.state_dict())
    z = torch.randn(4, model.hparams.latent_dim)
    model.eval(), resumed.model.eval()
    torch.testing.assert_close(model.from_noise(z, model.generator), resumed.model.from_noise(z, resumed.model.generator),
                               rtol=1e-4, atol=1e-5)
