"""FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) of generated images, on features of a fixed network, and
``SampleQualityMonitor``, the callback that computes them for every generative model (``docs/design.md``).

Features, named in the metric (``fid_inception`` / ``fid_vit``): ``inception``, the standard Inception-v3 pool
features (torch-fidelity's port; weights from ``inception_weights`` or torch hub's cache, downloaded there once),
the only ones comparable with published FIDs; ``mnist_vit``, the MNIST ruler shipped in ``weights/`` with its sha256
pinned in ``weights/SHA256SUMS`` (``RULERS``), which every MNIST FID in RESULTS.md uses; or ``classifier``, the
class-token features of any ``ViTClassifier`` checkpoint trained on the same dataset, comparable only with itself."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Literal, NamedTuple
from urllib.error import URLError

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from lightning_modules.images import to_unit_range
from training.pretrained import verified
from training.rng import seeded_generator
from networks.vit import VisionTransformer

FeatureChoice = Literal["auto", "inception", "mnist_vit", "classifier"]


class Ruler(NamedTuple):
    """Feature-network weights shipped with module14 and pinned by sha256: FIDs on them compare across machines."""

    file: str  # in weights/, pinned in weights/SHA256SUMS
    what: str


# A ruler never changes with the row it came from: a new one is a deliberate change (`python benchmarks/results.py
# --export-ruler` writes and pins it), after which every MNIST FID in RESULTS.md is measured again.
RULERS = {
    "mnist_vit": Ruler("mnist_vit.pt", "the vit_mnist row's ViT of commit f6e07ed (99.33% test accuracy): 16 tokens "
                                       "of width 96, depth 4"),
}


INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)


def inception_cache_path() -> Path:
    """Where torch-fidelity (and torchmetrics through it) keep the FID Inception weights: torch hub's cache."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_URL.rsplit("/", 1)[-1]


def inception_weights_file(weights_path: str | None) -> Path:
    """The FID Inception weights: ``weights_path`` when given, else the cached copy, downloaded once if missing."""
    if weights_path:
        if not Path(weights_path).is_file():
            raise FileNotFoundError(
                f"Inception weights not found at '{weights_path}'. Leave inception_weights unset to use (and on first "
                f"use download) torch hub's cached copy, or use features: classifier with a ViTClassifier checkpoint."
            )
        return Path(weights_path)
    cached = inception_cache_path()
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(INCEPTION_URL, str(cached), progress=False)
        except (URLError, OSError) as err:
            raise FileNotFoundError(
                f"the FID Inception weights {cached.name} are not cached and could not be downloaded ({err}). On a "
                f"machine with a network, download {INCEPTION_URL} and put it at {cached} (or pass inception_weights), "
                f"or use features: classifier with a ViTClassifier checkpoint (fid_vit) on this machine."
            ) from err
    return cached


class InceptionFeatures(nn.Module):
    """Inception-v3 2048-d pool features of images in [0, 1] (grayscale is repeated to RGB).

    ``weights_path``: a local weights file; ``None`` uses torch hub's cached copy (see ``inception_weights_file``).
    """

    name = "inception"
    num_features = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        if importlib.util.find_spec("torch_fidelity") is None:
            raise ModuleNotFoundError(
                "Inception features need torch-fidelity, which the base install leaves out: "
                "pip install 'module14[inception]' (or use features: classifier with a ViTClassifier checkpoint)."
            )
        from torchmetrics.image.fid import NoTrainInceptionV3
        weights = inception_weights_file(weights_path)
        self.net = NoTrainInceptionV3(
            name="inception-v3-compat", features_list=[str(self.num_features)],
            feature_extractor_weights_path=str(weights),
        )
        refuse_non_finite_weights(self.net, str(weights))

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.net((images.clamp(0, 1) * 255).round().to(torch.uint8)).reshape(images.shape[0], -1)


class ClassifierFeatures(nn.Module):
    """Final class-token features (B, D) of a trained ``ViTClassifier`` checkpoint, for images in [0, 1].

    Images are standardised with the mean/std the classifier was trained with (its ``normalization_mean_std``
    hyperparameter) and resized to the classifier's input size when they differ (e.g. MNIST padded to 32 px).
    """

    name = "vit"

    def __init__(self, checkpoint: str) -> None:
        super().__init__()
        if not Path(checkpoint).is_file():
            raise FileNotFoundError(
                f"classifier checkpoint '{checkpoint}' not found. Train one on the same dataset first, e.g. "
                f"`module14 fit --config configs/vit_mnist.yaml`, and point classifier_checkpoint at its .ckpt."
            )
        ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        hp = ckpt.get("hyper_parameters", {})
        if not {"image_shape", "num_classes", "embed_dim"} <= hp.keys():
            raise ValueError(
                f"'{checkpoint}' is not a ViTClassifier checkpoint written by module14 (its hyperparameters lack the "
                f"network's description); train the classifier with `module14 fit --config configs/vit_mnist.yaml`."
            )
        if hp.get("normalization_mean_std") is None:
            raise ValueError(
                f"'{checkpoint}' does not record the mean/std its images were standardised with "
                f"(normalization_mean_std; checkpoints of module14 before it was linked from the data lack it). "
                f"Train the classifier again with `module14 fit` (e.g. configs/vit_mnist.yaml)."
            )
        channels, size, _ = hp["image_shape"]
        self.net = VisionTransformer(
            img_size=size, patch_size=hp["patch_size"], in_channels=channels, num_classes=hp["num_classes"],
            embed_dim=hp["embed_dim"], depth=hp["depth"], num_heads=hp["num_heads"], mlp_ratio=hp["mlp_ratio"],
            dropout=0.0,
        )
        state = {k.removeprefix("net."): v for k, v in ckpt["state_dict"].items() if k.startswith("net.")}
        self.net.load_state_dict(state)
        refuse_non_finite_weights(self.net, checkpoint)
        self.net.eval().requires_grad_(False)
        mean, std = hp["normalization_mean_std"]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.channels, self.size = channels, size
        self.num_features = hp["embed_dim"]

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # a fixed feature extractor never leaves eval mode (dropout, etc.)

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] != self.channels:
            raise ValueError(
                f"the feature classifier takes {self.channels}-channel images, got {images.shape[1]}: use a "
                f"classifier trained on the same dataset as the generative model."
            )
        if images.shape[-1] != self.size:
            images = F.interpolate(images.float(), size=(self.size, self.size), mode="bilinear", antialias=True)
        return self.net.forward_features((images.float() - self.mean) / self.std)


class _Precomputed(nn.Module):
    """Identity "feature extractor": SampleQuality computes features once and hands them to FID and KID."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features


def kid_subset_size(n: int) -> int:
    """KID's subset size for n samples: Bińkowski et al.'s 1000, or n / 2 below 2000 (so the subsets differ)."""
    return min(1000, n // 2)


class NonFiniteFeaturesError(ValueError):
    """FID/KID would be computed from NaN or infinite images, features or feature-network weights."""


def refuse_non_finite_weights(network: nn.Module, source: str) -> None:
    """A feature network with a NaN or infinite weight gives NaN features: refused, naming the file and a tensor."""
    for name, value in network.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteFeaturesError(
                f"the FID/KID feature network from '{source}' holds NaN or infinite weights ({name}): every FID and "
                f"KID on it would be NaN. Use another checkpoint of the classifier (or retrain it).")


class SampleQuality(nn.Module):
    """FID and KID between generated and real images, on Inception or the project's own classifier features.

    Args:
        features: ``inception``, ``mnist_vit`` (the shipped MNIST ruler), ``classifier`` (needs
            ``classifier_checkpoint``) or ``auto`` (inception when ``inception_weights`` is given, else the
            classifier: never a download).
        inception_weights: local path of the FID Inception weights; unset, torch hub's cached copy (downloaded once).
        classifier_checkpoint: a ViTClassifier checkpoint trained on the same dataset.
        kid_subset_size: KID subset size (lowered to the sample count if fewer are available).
        seed: seed of KID's random subsets, so the same images always give the same KID (the global RNG is untouched).

    ``update(images, real)`` takes images in [0, 1]; ``compute()`` returns ``{"fid_<features>", "kid_<features>",
    "kid_std_<features>"}``.
    """

    def __init__(
        self,
        features: FeatureChoice = "auto",
        inception_weights: str | None = None,
        classifier_checkpoint: str | None = None,
        kid_subset_size: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if features == "auto":
            features = "inception" if inception_weights else "classifier" if classifier_checkpoint else "auto"
        if features == "inception":
            self.extractor: nn.Module = InceptionFeatures(inception_weights)
        elif features in RULERS:
            self.extractor = ClassifierFeatures(str(verified(RULERS[features].file)))
        elif features == "classifier" and classifier_checkpoint:
            self.extractor = ClassifierFeatures(classifier_checkpoint)
        else:
            raise ValueError(
                f"FID/KID with features={features!r} needs "
                + ("classifier_checkpoint" if features == "classifier" else "inception_weights or classifier_checkpoint")
                + ": a ViTClassifier checkpoint trained on the same dataset (e.g. from configs/vit_mnist.yaml), "
                "features: mnist_vit (the MNIST ruler shipped in weights/) or features: inception (the standard FID "
                "network). Or turn the metrics off."
            )
        self.name = self.extractor.name
        self.kid_subset_size, self.seed = kid_subset_size, seed
        self.fid = FrechetInceptionDistance(feature=_Precomputed(self.extractor.num_features))
        self.kid = KernelInceptionDistance(feature=_Precomputed(self.extractor.num_features), subset_size=kid_subset_size)

    @classmethod
    def on(cls, ruler_or_checkpoint: str, **kwargs) -> "SampleQuality":
        """On a shipped ruler's name (``mnist_vit``) or a ViTClassifier checkpoint's path: the benchmarks'
        ``--classifier``."""
        if ruler_or_checkpoint in RULERS:
            return cls(features=ruler_or_checkpoint, **kwargs)
        return cls(features="classifier", classifier_checkpoint=ruler_or_checkpoint, **kwargs)

    @torch.no_grad()
    def update(self, images: Tensor, real: bool) -> None:
        """Adds the features of ``images`` (in [0, 1]); non-finite images or features are refused, naming which: one
        NaN makes FID and KID NaN."""
        which = "real" if real else "generated"
        if not torch.isfinite(images).all():
            raise NonFiniteFeaturesError(
                f"FID/KID: the {which} images hold NaN or infinite pixels"
                + ("" if real else " (the model's samples diverged: check its last checkpoint's weights)")
                + "; FID and KID of them would be NaN.")
        features = self.extractor(images.to(self.fid.real_features_sum.device)).double()
        if not torch.isfinite(features).all():
            raise NonFiniteFeaturesError(
                f"FID/KID: the feature network ({self.name}) gives NaN or infinite features for the {which} images; "
                f"FID and KID of them would be NaN. Check the feature network's weights.")
        self.fid.update(features, real=real)
        self.kid.update(features, real=real)

    def compute(self) -> dict[str, Tensor]:
        n = min(int(self.fid.real_features_num_samples), int(self.fid.fake_features_num_samples))
        self.kid.subset_size = max(2, min(self.kid_subset_size, n))
        with torch.random.fork_rng(devices=[]):  # torchmetrics draws the subsets with torch.randperm on the CPU
            torch.manual_seed(self.seed)
            kid_mean, kid_std = self.kid.compute()
        return {f"fid_{self.name}": self.fid.compute(), f"kid_{self.name}": kid_mean, f"kid_std_{self.name}": kid_std}

    def reset(self) -> None:
        self.fid.reset()
        self.kid.reset()


class SampleQualityMonitor(Callback):
    """FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) of a generative model's ``generate(n, generator)``
    samples against the validation images (every ``every_n_epochs`` epochs) and the test images (``test``).

    Logs ``val/`` or ``test/`` + ``fid_<features>``, ``kid_<features>`` and ``kid_std_<features>``. The feature
    network belongs to this callback, not to the model, so it is never saved in a checkpoint.

    Args:
        num_samples: real and as many generated images compared, over all ranks (each rank takes its share of the
            validation/test batches; torchmetrics gathers the statistics).
        every_n_epochs: evaluate at every n-th validation epoch.
        features, inception_weights, classifier_checkpoint, kid_subset_size: see ``SampleQuality``.
        seed: seed of the generated images' noise (with the rank) and of KID's subsets: the same noise and subsets at
            every evaluation.
    """

    def __init__(
        self,
        num_samples: int = 1000,
        every_n_epochs: int = 1,
        features: FeatureChoice = "auto",
        inception_weights: str | None = None,
        classifier_checkpoint: str | None = None,
        kid_subset_size: int = 100,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_samples < 2 or every_n_epochs < 1:
            raise ValueError(
                f"SampleQualityMonitor(num_samples={num_samples}, every_n_epochs={every_n_epochs}): FID/KID need "
                f"num_samples >= 2 and every_n_epochs >= 1. To turn them off, leave the callback out."
            )
        self.num_samples, self.every_n_epochs, self.seed = num_samples, every_n_epochs, seed
        self._settings = dict(features=features, inception_weights=inception_weights,
                              classifier_checkpoint=classifier_checkpoint, kid_subset_size=kid_subset_size, seed=seed)
        self.metric: SampleQuality | None = None  # built in setup: loading the feature network can fail clearly there
        self.seen = 0  # real images this rank fed to the metric in this evaluation
        self._active = False
        self._noise: torch.Generator | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if not callable(getattr(pl_module, "generate", None)):
            raise TypeError(
                f"SampleQualityMonitor needs a generative model with generate(n, generator); {type(pl_module).__name__} "
                f"has none. Remove SampleQualityMonitor from trainer.callbacks for this model."
            )
        if self.metric is None:
            self.metric = SampleQuality(**self._settings)
        self.metric.to(pl_module.device)

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule, active: bool) -> None:
        self._active, self.seen = active, 0
        self._noise = seeded_generator(pl_module.device, self.seed, trainer.global_rank)
        self.metric.reset()

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        due = (trainer.current_epoch + 1) % self.every_n_epochs == 0
        self._start(trainer, pl_module, due and not trainer.sanity_checking)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module, True)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, pl_module, batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._update(trainer, pl_module, batch)

    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, batch) -> None:
        """This rank's share: up to ceil(num_samples / world_size) real images and as many generated ones."""
        per_rank = math.ceil(self.num_samples / trainer.world_size)
        real = batch[0] if isinstance(batch, (list, tuple)) else batch
        take = min(len(real), per_rank - self.seen)
        if not self._active or take <= 0:
            return
        self.seen += take
        self.metric.update(to_unit_range(real[:take], pl_module.value_range), real=True)
        self.metric.update(pl_module.generate(take, self._noise), real=False)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._log(pl_module, "test")

    def _log(self, pl_module: L.LightningModule, stage: str) -> None:
        if self._active:
            values = self.metric.compute()  # synchronised across ranks by torchmetrics
            pl_module.log_dict({f"{stage}/{name}": value for name, value in values.items()})
            self.metric.reset()
        self._active = False
