"""The family contract (docs/adding_a_model.md), checked for every family the registry finds and every config: nothing
here lists the families or the configs, so a new family file and its config are covered as they land."""

from __future__ import annotations

import functools

import pytest
import torch
import yaml
from conftest import config_model, cpu_trainer, experiment_configs, unit_loader
from test_gan import tiny_vit_checkpoint

from command_line.parser import init_parameters
from lightning_modules.base import FamilyModule, GenerativeModule
from lightning_modules.metrics import SampleQualityMonitor
from lightning_modules.registry import families, project_class

FAMILIES = families()
CONFIG_CLASSES = {config.stem: yaml.safe_load(config.read_text())["model"]["class_path"]
                  for config in experiment_configs()}


def test_the_registry_finds_every_family_by_its_file_alone():
    names = {cls.__name__ for cls in FAMILIES}
    assert {"ViTClassifier", "VAEModule", "BetaVAEModule", "GANModule", "DiffusionModule",
            "FlowMatchingModule"} <= names  # FlowMatchingModule is in no list: its file is enough
    assert not {"FamilyModule", "GenerativeModule"} & names


@pytest.mark.parametrize("family", FAMILIES, ids=lambda cls: cls.__name__)
def test_every_family_meets_the_contract(family):
    assert issubclass(family, FamilyModule)
    assert family.inference_args <= init_parameters(family)  # what predict may choose is an argument
    assert family.precision_on_bf16_cpu in ("32-true", "bf16-mixed")
    used_by = [name for name, class_path in CONFIG_CLASSES.items() if project_class(class_path, FamilyModule) is family]
    assert used_by, f"{family.__name__}: no config in configs/ trains it"
    if issubclass(family, GenerativeModule):
        assert "noise_seed" in family.inference_args


@functools.cache
def model(config_name: str):
    return config_model(next(c for c in experiment_configs() if c.stem == config_name))


GENERATIVE = [name for name, class_path in CONFIG_CLASSES.items()
              if issubclass(project_class(class_path, FamilyModule), GenerativeModule)]


@pytest.mark.parametrize("config", GENERATIVE)
def test_every_generative_config_generates_n_images_in_unit_range_reproducibly(config):
    module = model(config)
    shape = tuple(module.hparams.image_shape)
    images = module.generate(3, torch.Generator().manual_seed(3))
    assert images.shape == (3, *shape) and images.dtype == torch.float32 and images.device == module.device
    assert images.min() >= 0 and images.max() <= 1 and images.std() > 0
    assert torch.equal(images, module.generate(3, torch.Generator().manual_seed(3)))
    assert not torch.equal(images, module.generate(3, torch.Generator().manual_seed(4)))
    grids = module.sample_images(torch.zeros(2, *shape), torch.Generator().manual_seed(0))
    assert grids and all(g.min() >= 0 and g.max() <= 1 for g in grids.values())
    assert module.training  # generate leaves the module in the mode it found it in


@pytest.mark.parametrize("config", sorted(CONFIG_CLASSES))
def test_every_configs_model_names_the_test_metrics_results_report(config):
    """RESULTS.md labels a row's metrics with the names its model gives them (a GAN's are its FID callback's)."""
    metrics = model(config).reported_metrics()
    assert all(key.startswith("test/") and label and fmt.format(0.5) for key, (label, fmt) in metrics.items())


GENERATIVE_FAMILIES = {cls: next(name for name, class_path in CONFIG_CLASSES.items()
                                 if project_class(class_path, FamilyModule) is cls)
                       for cls in FAMILIES if issubclass(cls, GenerativeModule)}


@pytest.mark.parametrize("family", GENERATIVE_FAMILIES, ids=lambda cls: cls.__name__)
def test_fid_kid_callback_logs_for_every_generative_family_and_stays_out_of_checkpoints(tmp_path, family):
    """FID/KID need only ``generate``: one config of each generative family, trained for a step on random images."""
    module = config_model(next(c for c in experiment_configs() if c.stem == GENERATIVE_FAMILIES[family]))
    channels, size, _ = module.hparams.image_shape
    vit = tiny_vit_checkpoint(tmp_path / "vit.ckpt", channels=channels, size=16)
    monitor = SampleQualityMonitor(num_samples=10, classifier_checkpoint=str(vit), kid_subset_size=4)
    trainer = cpu_trainer(max_epochs=1, limit_val_batches=2, num_sanity_val_steps=0, callbacks=[monitor])
    trainer.fit(module, unit_loader(module), unit_loader(module, n=24))
    assert monitor.seen == 10  # two validation batches of 8, capped at num_samples
    for name in ("val/fid_vit", "val/kid_vit", "val/kid_std_vit"):
        assert torch.isfinite(trainer.callback_metrics[name]), name
    trainer.test(module, unit_loader(module))
    assert torch.isfinite(trainer.callback_metrics["test/fid_vit"])
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    saved = torch.load(tmp_path / "model.ckpt", weights_only=True)
    assert set(saved["state_dict"]) == set(module.state_dict())
    assert not any(key.startswith("SampleQualityMonitor") for key in saved.get("callbacks", {}))
