"""ViT image classifier (Dosovitskiy et al. 2021): cross-entropy, AdamW with warm-up + cosine decay, accuracy."""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from lightning_modules.base import FamilyModule
from networks.vit import VisionTransformer
from training.optim import total_training_steps, warmup_cosine


class ViTClassifier(FamilyModule):
    """Vision Transformer trained with cross-entropy.

    ``image_shape``, ``num_classes`` and ``normalization_mean_std`` come from the datamodule when run through the CLI.
    The network's arguments are ``VisionTransformer``'s (defaults ViT-B/16); the configs use small ViTs for MNIST and
    CIFAR-10.

    Args:
        image_shape: (channels, height, width) of the input images.
        num_classes: number of classes.
        normalization_mean_std: the per-channel (mean, std) the training images were standardised with; recorded in
            the checkpoint so that FID on this classifier's features (``ClassifierFeatures``) can standardise alike.
        label_smoothing: cross-entropy label smoothing in [0, 1).
        lr: peak AdamW learning rate; weight_decay: AdamW decay on weight matrices only.
        warmup_fraction: fraction of all training steps spent in linear warm-up before the cosine decay.
        compile: run the network through ``torch.compile`` (see ``training/compiling.py``).
        **network: ``VisionTransformer``'s arguments, stated there (``patch_size``, ``embed_dim``, ``depth``,
            ``num_heads``, ``mlp_ratio``, ``dropout``, ``attn_dropout``); the CLI offers them as ``--model.init_args.*``.
    """

    # On a CPU with native bf16 (benchmarks/precision.py, with networks/attention.py's kernels): vit_mnist 60 ms fp32
    # vs 42 bf16, vit_cifar10 1496 vs 802.
    precision_on_bf16_cpu: ClassVar[str] = "bf16-mixed"

    def __init__(
        self,
        image_shape: tuple[int, int, int] = (3, 224, 224),
        num_classes: int = 1000,
        normalization_mean_std: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
        label_smoothing: float = 0.0,
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.05,
        compile: bool = False,
        **network,
    ) -> None:
        super().__init__()
        if num_classes is None or num_classes < 2:
            raise ValueError(
                f"ViTClassifier needs a dataset with single-label classes (num_classes={num_classes}); "
                f"use MNISTDataModule or CIFAR10DataModule."
            )
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1).")
        self.save_hyperparameters()
        channels, height, width = image_shape
        if height != width:
            raise ValueError(f"ViT expects square images, got {height}x{width}.")
        self.net = VisionTransformer(img_size=height, in_channels=channels, num_classes=num_classes, **network)
        # Accuracy over images (micro), not torchmetrics' default mean of per-class recalls. No compute groups: they
        # merge metrics whose states match after the first batch, and top-1 and top-5 match whenever it is all correct.
        metrics = {"acc": MulticlassAccuracy(num_classes, top_k=1, average="micro")}
        if num_classes >= 5:
            metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        self.train_metrics = MetricCollection(metrics, prefix="train/", compute_groups=False)
        self.val_metrics = self.train_metrics.clone(prefix="val/")
        self.test_metrics = self.train_metrics.clone(prefix="test/")
        self.example_input_array = torch.zeros(2, *image_shape)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # (B, num_classes) logits

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str, metrics: MetricCollection) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
        metrics.update(logits, y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, sync_dist=True)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train", self.train_metrics)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "val", self.val_metrics)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._shared_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        x, y = batch
        probs = self(x).float().softmax(dim=-1)
        return {"pred": probs.argmax(dim=-1), "probs": probs, "label": y}

    def reported_metrics(self) -> dict[str, tuple[str, str]]:
        return {"test/acc": ("test accuracy", "{:.2%}")}

    def configure_optimizers(self):
        optimizer = self.adam(self.net, self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = total_training_steps(self.trainer)
        scheduler = warmup_cosine(optimizer, round(self.hparams.warmup_fraction * total), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
