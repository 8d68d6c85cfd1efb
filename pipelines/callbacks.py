"""Callbacks every run gets from the CLI."""

from __future__ import annotations

import math

import lightning as L


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the checkpoints written so far are left untouched."""


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN/inf training loss with a message naming the step.

    Without this a NaN silently poisons the weights and the next checkpoint overwrites `last.ckpt`.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(loss)):
            raise NonFiniteLossError(
                f"training loss is {float(loss)} at global step {trainer.global_step} (epoch {trainer.current_epoch}, "
                f"batch {batch_idx}); lower the learning rate or check the data. Checkpoints saved before this "
                "step are intact."
            )
