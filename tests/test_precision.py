"""Mixed-precision matrix on CPU: every family trains a few steps in fp32 and bf16-mixed with finite losses and
changing weights. (16-mixed needs a GPU: on CPU Lightning replaces it with bf16-mixed.)"""

from __future__ import annotations

import pytest
import torch
from conftest import TINY_VIT

CSV_LOGGER = ["--trainer.logger=CSVLogger", "--trainer.logger.init_args.save_dir=runs"]
FAMILIES = {
    "vit": ["--config", "configs/vit_mnist.yaml", *TINY_VIT],
    "gan": ["--config", "configs/dcgan_mnist.yaml", "--model.feature_maps=8"],
    "vae": ["--config", "configs/vae_cifar10.yaml"],
    "diffusion": ["--config", "configs/ddpm_mnist.yaml", "--model.init_args.model_channels=16",
                  "--model.init_args.norm_groups=8", "--model.init_args.sampling_steps=2"],
}


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trains_under_precision(run_cli, family, precision):
    cli = run_cli("fit", *FAMILIES[family], *CSV_LOGGER, f"--trainer.precision={precision}", "--trainer.max_steps=3",
                  "--trainer.limit_val_batches=0",
                  "--trainer.enable_model_summary=false", "--data.num_workers=0", "--data.batch_size=16", run=False)
    before = {k: v.clone() for k, v in cli.model.state_dict().items()}
    assert cli.trainer.precision == precision
    cli.trainer.fit(cli.model, cli.datamodule)
    losses = {k: v for k, v in cli.trainer.callback_metrics.items() if "loss" in k}
    assert losses and all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(before[k], v) for k, v in cli.model.state_dict().items() if v.is_floating_point())
