"""``channels_last: true``: the conv families hold every 4-D weight (EMA copies included) in NHWC after
``configure_model`` and compute what NCHW computes, checkpoints move between the layouts, and a run resumed in the other
layout keeps each Adam moment in its parameter's layout (torch's fused CPU Adam would step wrongly otherwise)."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_GAN, LayoutWatch

from lightning_modules import DiffusionModule, GANModule, VAEModule

NHWC = torch.channels_last
FAMILIES = {  # tiny conv models of colour images, and a forward pass through each network (seeded inputs)
    "vae": (lambda cl: VAEModule((3, 32, 32), value_range=(0.0, 1.0), architecture="conv", latent_dim=4,
                                 feature_maps=8, likelihood="gaussian", channels_last=cl),
            lambda m, g: [m.net(torch.rand(4, 3, 32, 32, generator=g))[1],  # mu (the encoder)
                          m.net.decode(torch.randn(4, 4, generator=g))]),
    "gan": (lambda cl: GANModule((3, 32, 32), architecture="dcgan", feature_maps=8, ema_decay=0.9, channels_last=cl),
            lambda m, g: [m.generator(torch.randn(4, 100, generator=g)), m.ema(torch.randn(4, 100, generator=g)),
                          m.discriminator(torch.randn(4, 3, 32, 32, generator=g))]),
    "diffusion": (lambda cl: DiffusionModule((3, 32, 32), model_channels=8, channel_mult=(1, 2), norm_groups=4,
                                             channels_last=cl),
                  lambda m, g: [m.net(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 9, 99, 999])),
                                m.ema.module(torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 9, 99, 999]))]),
}


def four_d(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: t for name, t in model.state_dict().items() if t.dim() == 4}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_channels_last_lays_out_every_conv_weight_in_nhwc_and_computes_the_same(family):
    build, forward = FAMILIES[family]
    nchw, nhwc = build(False), build(True)
    nhwc.load_state_dict(nchw.state_dict())
    for model in (nchw, nhwc):
        model.configure_model()
        model.eval()

    weights = four_d(nhwc)
    assert any(name.startswith("ema.") for name in weights) or family == "vae"  # the EMA copies are converted too
    assert all(t.is_contiguous(memory_format=NHWC) for t in weights.values())
    assert not all(t.is_contiguous() for t in weights.values())  # NHWC differs from NCHW for these shapes
    assert all(t.is_contiguous() for t in four_d(nchw).values())  # channels_last: false leaves NCHW
    assert list(nhwc.state_dict()) == list(nchw.state_dict())
    nchw.load_state_dict(nhwc.state_dict())  # strict, both ways, same values
    assert all(torch.equal(a, b) for a, b in zip(nchw.state_dict().values(), nhwc.state_dict().values()))

    with torch.no_grad():
        expected = forward(nchw, torch.Generator().manual_seed(0))
        outputs = forward(nhwc, torch.Generator().manual_seed(0))
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    assert any(out.dim() == 4 and not out.is_contiguous() for out in outputs)  # the layout carries to the output


@pytest.mark.parametrize("model", [lambda: VAEModule((1, 28, 28), channels_last=True),
                                   lambda: GANModule((1, 28, 28), architecture="mlp", channels_last=True)],
                         ids=["vae_mlp", "gan_mlp"])
def test_channels_last_on_a_model_without_convolutions_is_refused(model):
    with pytest.raises(ValueError, match=r"\(architecture: mlp\) has none: set model.init_args.channels_last: false, or "
                                         r"choose a convolutional architecture"):
        model()


@pytest.mark.parametrize("first, then", [(False, True), (True, False)])
def test_a_dcgan_run_resumes_in_the_other_layout_with_its_moments_in_the_parameters_layout(run_cli, tmp_path,
                                                                                            first, then):
    run_cli("fit", *TINY_GAN, f"--model.channels_last={str(first).lower()}", "--trainer.max_steps=4")
    (checkpoint,) = tmp_path.glob("runs/**/last.ckpt")
    resumed = run_cli("fit", *TINY_GAN, f"--model.channels_last={str(then).lower()}", "--trainer.max_steps=8",
                      "--trainer.callbacks+=conftest.LayoutWatch", f"--ckpt_path={checkpoint}")
    (layouts,) = [c for c in resumed.trainer.callbacks if isinstance(c, LayoutWatch)]
    assert resumed.trainer.global_step == 8 and layouts.steps == 4
    assert all(group["fused"] for opt in resumed.trainer.optimizers for group in opt.param_groups)
    assert layouts.mismatched == []  # every gradient and Adam moment in its parameter's layout
    weight = resumed.model.generator.model[0].weight
    assert weight.is_contiguous(memory_format=NHWC if then else torch.contiguous_format) and not weight.is_contiguous(
        memory_format=torch.contiguous_format if then else NHWC)
