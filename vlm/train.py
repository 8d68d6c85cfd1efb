"""LightningModule that adapts an AR decoder to block diffusion, with NBDiff's block-size curriculum.

The curriculum is a list of stages (block size, steps). The module reads the stage from the global
step, so a stage starts from the previous stage's weights (and optimizer state), and a resumed run
lands in the right stage. At each stage's end the model is exported to `<run>/stages/B<size>/`,
ready for `pipelines vlm generate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch

from pipelines.tasks.optim import adamw_with_decay_groups
from vlm.diffusion import diffusion_loss, naive_transplant_batch, nbdiff_batch
from vlm.model import add_mask_token, load_source, save_block_diffusion

RECIPES = ("nbdiff", "naive")


@dataclass
class CurriculumStage:
    block_size: int
    steps: int


class BlockDiffusionLM(L.LightningModule):
    """Args:
        source: The AR model: "smollm2" (bundled SmolLM2-135M-Instruct), a .gguf file, a saved decoder
            folder, or "tiny" (random, for tests).
        curriculum: Stages of (block_size, steps); NBDiff grows B = 1 → 2 → 4 → 8 → 16.
        recipe: "nbdiff" ([noisy ; clean] layout, causal clean stream, L_AR) or "naive" (the transplant
            baseline: bidirectional attention over the context, no L_AR; use one stage).
        ar_loss_weight: λ in L = L_MDM + λ·L_AR.
        padding_weight: Loss weight of the EOS padding (1 keeps it fully supervised; BARD uses 0.5).
        min_mask_rate: Lower clamp of the per-block mask ratio (1/t weights stay bounded).
        export_stages: Write each finished stage's model to <run>/stages/B<size>/.
    """

    def __init__(self, source: str = "smollm2", curriculum: list[CurriculumStage] | None = None,
                 recipe: str = "nbdiff", ar_loss_weight: float = 1.0, padding_weight: float = 1.0,
                 min_mask_rate: float = 1e-3, lr: float = 2e-5, weight_decay: float = 0.0, warmup_steps: int = 10,
                 export_stages: bool = True) -> None:
        super().__init__()
        if recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
        curriculum = curriculum or [CurriculumStage(4, 100)]
        curriculum = [CurriculumStage(**s) if isinstance(s, dict) else s for s in curriculum]
        for stage in curriculum:
            if stage.block_size < 1 or stage.steps < 1:
                raise ValueError(f"curriculum stage {stage} needs block_size >= 1 and steps >= 1")
        self.save_hyperparameters()
        self.curriculum = curriculum
        self.recipe = recipe
        self.ar_loss_weight = ar_loss_weight
        self.model, self.tokenizer = load_source(source)
        self.model.train()  # loaders return eval-mode models; Lightning keeps submodule modes as they are
        self.mask_id = add_mask_token(self.model, self.tokenizer)
        self.eos_id = self.tokenizer.eos_id
        if self.eos_id is None:
            raise ValueError(f"source {source!r} has no EOS token; responses could never stop")

    def stage_at(self, step: int) -> CurriculumStage:
        """The stage of a global step; past the last stage the last block size stays."""
        for stage, end in zip(self.curriculum, self.stage_ends(), strict=True):
            if step < end:
                return stage
        return self.curriculum[-1]

    def stage_ends(self) -> list[int]:
        ends, total = [], 0
        for stage in self.curriculum:
            total += stage.steps
            ends.append(total)
        return ends

    @property
    def block_size(self) -> int:
        return self.stage_at(self.global_step).block_size

    def make_batch(self, pairs, generator: torch.Generator | None = None):
        build = nbdiff_batch if self.recipe == "nbdiff" else naive_transplant_batch
        kwargs = dict(min_mask_rate=self.hparams.min_mask_rate)
        if self.recipe == "nbdiff":
            kwargs["padding_weight"] = self.hparams.padding_weight
        return build(pairs, self.block_size, self.mask_id, self.eos_id, generator=generator, **kwargs
                     ).to(self.device)

    def training_step(self, pairs, batch_idx: int) -> torch.Tensor:
        batch = self.make_batch(pairs)
        ar_weight = self.ar_loss_weight if self.recipe == "nbdiff" else 0.0
        loss, parts = diffusion_loss(self.model, batch, ar_weight)
        size = len(pairs)
        self.log("train/loss", loss, prog_bar=True, batch_size=size)
        self.log("train/mdm", parts["mdm"], batch_size=size)
        self.log("train/ar", parts["ar"], batch_size=size)
        self.log("train/block_size", float(self.block_size), prog_bar=True, batch_size=size)
        return loss

    def validation_step(self, pairs, batch_idx: int) -> None:
        # Fixed noise per batch, so validation curves compare across steps.
        generator = torch.Generator().manual_seed(batch_idx)
        batch = self.make_batch(pairs, generator)
        loss, parts = diffusion_loss(self.model, batch, self.ar_loss_weight)
        size = len(pairs)
        self.log("val/loss", loss, prog_bar=True, batch_size=size)
        self.log("val/mdm", parts["mdm"], batch_size=size)
        # The clean stream is the AR model: its next-token NLL is the "did we keep the LM" number.
        clean = nbdiff_batch(pairs, 1, self.mask_id, self.eos_id, generator=generator).to(self.device)
        self.log("val/ar_nll", diffusion_loss(self.model, clean, 1.0)[1]["ar"], batch_size=size)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if not self.hparams.export_stages or self.trainer.sanity_checking:
            return
        for stage, end in zip(self.curriculum, self.stage_ends(), strict=True):
            if self.global_step == end:
                self.export(Path(self.trainer.default_root_dir) / "stages" / f"B{stage.block_size}", stage.block_size)

    def export(self, folder: Path, block_size: int) -> Path:
        return save_block_diffusion(folder, self.model, self.tokenizer, block_size, self.mask_id, self.recipe,
                                    overwrite=True)

    def configure_optimizers(self):
        optimizer = adamw_with_decay_groups(self.model, self.hparams.lr, self.hparams.weight_decay, betas=(0.9, 0.95))
        warmup = max(1, self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
