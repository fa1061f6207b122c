"""The models' Adam / AdamW take torch's fused step (faster on CPU), the same update, unless the run clips gradients."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import CSV_LOGGER, TINY_VIT

from training.optim import decay_groups, fused_adam, keep_state_in_parameter_layout
from networks.vit import VisionTransformer


@pytest.mark.parametrize("trainer_clip, model_clip, fused", [(None, None, True), (0, None, True), (1.0, None, False),
                                                            (None, 1.0, False)])
def test_fused_unless_the_run_clips_gradients(trainer_clip, model_clip, fused):
    assert fused_adam(SimpleNamespace(gradient_clip_val=trainer_clip), model_clip) is fused


def test_clipping_under_bf16_mixed_trains_unfused(run_cli):
    # Lightning refuses to clip for a fused optimizer under mixed precision: such a run must take the unfused step.
    cli = run_cli("fit", "--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.precision=bf16-mixed",
                  "--trainer.gradient_clip_val=0.5", "--trainer.max_steps=2", "--trainer.limit_val_batches=0",
                  *CSV_LOGGER, "--data.num_workers=0", "--data.batch_size=16")
    assert cli.trainer.global_step == 2
    assert not any(group["fused"] for group in cli.trainer.optimizers[0].param_groups)


@pytest.mark.parametrize("optimizer", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_step_is_the_same_update(optimizer):
    torch.manual_seed(0)
    nets = [VisionTransformer(img_size=8, patch_size=4, in_channels=1, num_classes=3, embed_dim=16, depth=1,
                              num_heads=2) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    initial = [p.detach().clone() for p in nets[0].parameters()]
    optimizers = [optimizer(decay_groups(net, 0.05), lr=1e-2, betas=(0.5, 0.999), fused=fused)
                  for net, fused in zip(nets, (False, True))]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in nets[0].parameters()]
        for net, opt in zip(nets, optimizers):
            for p, g in zip(net.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for p0, p1, start in zip(nets[0].parameters(), nets[1].parameters(), initial):
        assert not torch.equal(p0, start)
        torch.testing.assert_close(p1, p0, rtol=1e-5, atol=1e-6)
    assert optimizers[1].param_groups[0]["fused"] and not optimizers[0].param_groups[0]["fused"]


def test_checkpoints_resume_across_the_fused_flag(run_cli, tmp_path):
    # The optimizer state carries the flag: a fused run's checkpoint must resume with clipping added under bf16-mixed
    # (where Lightning refuses to clip for an optimizer built fused), and a checkpoint from before fused Adam must resume.
    run = ["--config", "configs/vit_mnist.yaml", *TINY_VIT, "--trainer.precision=bf16-mixed", *CSV_LOGGER,
           "--trainer.limit_val_batches=0", "--data.num_workers=0", "--data.batch_size=16",
           "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.init_args.dirpath=ckpts",
           "--trainer.callbacks.init_args.filename={step}", "--trainer.callbacks.init_args.save_top_k=-1"]
    run_cli("fit", *run, "--trainer.max_steps=2")
    fused = torch.load(tmp_path / "ckpts/step=2.ckpt", weights_only=True)
    assert all(group["fused"] for group in fused["optimizer_states"][0]["param_groups"])
    clipped = run_cli("fit", *run, "--trainer.max_steps=4", "--trainer.gradient_clip_val=0.5",
                      f"--ckpt_path={tmp_path / 'ckpts/step=2.ckpt'}")
    assert clipped.trainer.global_step == 4
    for group in fused["optimizer_states"][0]["param_groups"]:
        group["fused"] = None  # as saved before fused Adam
    torch.save(fused, tmp_path / "before_fused.ckpt")
    resumed = run_cli("fit", *run, "--trainer.max_steps=4", f"--ckpt_path={tmp_path / 'before_fused.ckpt'}")
    assert resumed.trainer.global_step == 4
    assert resumed.trainer.optimizers[0].param_groups[0]["fused"] is None  # restored as saved: torch's default step


@pytest.mark.parametrize("saved, resumed", [("NCHW", "NHWC"), ("NHWC", "NCHW")])
def test_fused_adam_resumed_in_the_other_memory_layout_steps_like_adam(saved, resumed):
    """A checkpoint keeps its moments' strides; torch's fused CPU Adam reads parameter, gradient and moments as flat
    arrays. Unless the loaded moments take the parameters' layout, the resumed step is off by ~0.1 at lr 0.1."""
    layout = {"NCHW": torch.contiguous_format, "NHWC": torch.channels_last}

    def resumed_step(fused: bool, to: str) -> tuple[torch.Tensor, torch.optim.Optimizer, torch.Tensor]:
        torch.manual_seed(0)
        source = torch.nn.Conv2d(8, 16, 3).to(memory_format=layout[saved])
        optimizer = torch.optim.Adam(source.parameters(), lr=0.1, fused=fused)
        for _ in range(3):
            optimizer.zero_grad()
            source(torch.randn(4, 8, 9, 9)).square().mean().backward()
            optimizer.step()
        state = optimizer.state_dict()
        conv = torch.nn.Conv2d(8, 16, 3)
        conv.load_state_dict(source.state_dict())
        conv.to(memory_format=layout[to])
        resumed_optimizer = keep_state_in_parameter_layout(torch.optim.Adam(conv.parameters(), lr=0.1, fused=fused))
        resumed_optimizer.load_state_dict(state)
        resumed_optimizer.zero_grad()
        conv(torch.randn(4, 8, 9, 9, generator=torch.Generator().manual_seed(1))).square().mean().backward()
        resumed_optimizer.step()
        return conv.weight.detach(), resumed_optimizer, conv.weight

    reference, _, _ = resumed_step(fused=False, to=saved)
    weight, optimizer, param = resumed_step(fused=True, to=resumed)
    moments = optimizer.state[param]
    assert param.is_contiguous(memory_format=layout[resumed]) and not param.is_contiguous(memory_format=layout[saved])
    assert all(moments[k].stride() == param.stride() for k in ("exp_avg", "exp_avg_sq"))
    torch.testing.assert_close(weight, reference, rtol=0, atol=1e-6)
