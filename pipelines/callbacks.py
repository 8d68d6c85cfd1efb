"""Callbacks every run gets from the CLI."""

from __future__ import annotations

import math

import lightning as L

from pipelines.errors import PipelinesError


class NonFiniteLossError(PipelinesError, RuntimeError):
    """Training produced a NaN/inf loss; the checkpoints written so far are left untouched."""


class StopOnNonFiniteLoss(L.Callback):
    """Stop at the first NaN/inf training loss, before its backward pass, naming the step.

    Without this a NaN silently poisons the weights and the next checkpoint overwrites `last.ckpt`;
    checking before backward means not even the in-memory weights take the bad update.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLossError(
                f"training loss is {value} at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "lower the learning rate or check the data. Checkpoints saved before this step are intact."
            )
