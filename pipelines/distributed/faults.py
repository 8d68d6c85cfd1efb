"""Fault injection for checking recovery: kill the training process once, at a chosen step.

    pipelines ray fit --config X.yaml --trainer.callbacks+=pipelines.distributed.faults.FailOnceAtStep \
        --trainer.callbacks.step 3 --trainer.callbacks.marker /tmp/failed-once
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L


class FailOnceAtStep(L.Callback):
    """Hard-exit the process (as a crashed node would) when global_step reaches `step`, once.

    The marker file records that the failure happened, so the restarted run goes on.
    """

    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, Path(marker)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.step and not self.marker.exists():
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"failed at step {trainer.global_step}\n")
            os._exit(1)
