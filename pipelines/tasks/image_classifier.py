"""Image classification with the shared ViT encoder: the core's smallest complete training job."""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from pipelines.nn.vision import VisionEncoder


class ImageClassifier(L.LightningModule):
    def __init__(self, num_classes: int, image_size: int = 32, patch_size: int = 8, in_channels: int = 3,
                 dim: int = 64, n_layers: int = 2, n_heads: int = 4, lr: float = 3e-3,
                 weight_decay: float = 0.01) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = VisionEncoder(image_size=image_size, patch_size=patch_size, in_channels=in_channels,
                                     dim=dim, n_layers=n_layers, n_heads=n_heads)
        self.head = torch.nn.Linear(dim, num_classes)

    def setup(self, stage: str) -> None:
        # The class count is written in the config twice (model and data); catch a mismatch early.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        data_classes = getattr(datamodule, "num_classes", None)
        if data_classes is not None and data_classes != self.hparams.num_classes:
            raise ValueError(f"model.num_classes={self.hparams.num_classes} but the data has {data_classes} "
                             f"classes ({', '.join(datamodule.classes)})")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.pool(images))

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], split: str) -> torch.Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(-1) == labels).float().mean()
        on_step = split == "train"
        # sync_dist: under DDP each rank sees a shard; epoch metrics are averaged over all ranks.
        self.log(f"{split}/loss", loss, prog_bar=True, on_step=on_step, on_epoch=True, batch_size=len(labels),
                 sync_dist=True)
        self.log(f"{split}/acc", acc, prog_bar=split != "train", on_step=on_step, on_epoch=True,
                 batch_size=len(labels), sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).argmax(-1)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
