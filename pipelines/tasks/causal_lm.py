"""Next-token language modelling of a decoder trained from scratch (the MASA paper's setup).

The decoder's shape and its attention parametrisation (`decoder.attention_sharing`: vanilla, MASA,
low-rank, repeat-all-over; GQA through `n_kv_heads`) are plain YAML. Optimisation follows the MASA
paper: AdamW (0.9, 0.999), weight decay 0.1 on matrices, 10% linear warm-up then cosine decay; the
YAML sets gradient clipping at 1. When training ends the model is exported to `<run>/model/` with
MASA coefficients frozen into a plain table, ready for `pipelines lm generate --model`.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from pipelines.nn.attention_sharing import freeze_masa, match_attention_init
from pipelines.nn.checkpoint import save_decoder
from pipelines.nn.decoder import Decoder, DecoderConfig
from pipelines.tasks.optim import adamw_with_decay_groups


class CausalLM(L.LightningModule):
    """Args:
        decoder: The decoder's shape and attention parametrisation.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay on weight matrices (not on norms, biases or embeddings).
        warmup_fraction: Share of the run spent warming the learning rate up linearly.
        min_lr_fraction: The cosine decays to this fraction of the peak.
        init_std: Standard deviation of every initial weight (Llama's initializer_range).
        export: Write `<run>/model/` (decoder + tokenizer) when training ends.
    """

    def __init__(self, decoder: DecoderConfig, lr: float = 1e-3, weight_decay: float = 0.1,
                 warmup_fraction: float = 0.1, min_lr_fraction: float = 0.1, init_std: float = 0.02,
                 export: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = Decoder(decoder)
        self.init_from_scratch(init_std)
        self._step_start: float | None = None
        self._val_nll, self._val_tokens = 0.0, 0

    @torch.no_grad()
    def init_from_scratch(self, std: float) -> None:
        """Llama's from-scratch init: every linear and the (tied) embedding N(0, std²). The default
        nn.Embedding N(0, 1) would give a tied head initial logits of std √d. Attention projections are
        then rescaled so each layer's applied weight has that std under every parametrisation."""
        masa = getattr(self.model, "masa", None)
        coefficient_mlps = set() if masa is None else {id(m) for m in masa.modules()}
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear | torch.nn.Embedding) and id(module) not in coefficient_mlps:
                torch.nn.init.normal_(module.weight, std=std)
        if masa is not None:
            # Coefficients of RMS 1/√S and atoms at a dense weight's scale: then W_l = Σ c·D has std
            # ≈ std, and Adam's fixed-size steps move atoms as fast (relatively) as dense weights.
            # (Small predicted coefficients would instead leave large atoms that barely move.)
            for dictionary in masa.dictionaries.values():
                torch.nn.init.normal_(dictionary.atoms, std=std)
                last = dictionary.coefficient_mlp[-1]
                scale = dictionary.n_atoms**-0.5 / float(dictionary.coefficients().pow(2).mean().sqrt())
                last.weight.mul_(scale)
                last.bias.mul_(scale)
                dictionary.reset()
        match_attention_init(list(self.model.blocks), std)

    def setup(self, stage: str) -> None:
        # The vocabulary is written twice (tokenizer and config): catch a mismatch before training.
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        vocab = getattr(datamodule, "vocab_size", None)
        if vocab is not None and vocab != self.model.cfg.vocab_size:
            raise ValueError(f"model.decoder.vocab_size={self.model.cfg.vocab_size} but the corpus tokenizer has "
                             f"{vocab} tokens; set them equal")
        seq_len = getattr(datamodule, "seq_len", None)
        if seq_len is not None and seq_len > self.model.cfg.max_seq_len:
            raise ValueError(f"data.seq_len={seq_len} exceeds model.decoder.max_seq_len={self.model.cfg.max_seq_len}")

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids)

    def token_nll(self, windows: torch.Tensor) -> torch.Tensor:
        """Summed next-token NLL of a batch of windows [B, T+1]."""
        logits = self.model(windows[:, :-1])
        return F.cross_entropy(logits.flatten(0, 1).float(), windows[:, 1:].flatten(), reduction="sum")

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        self._step_start = time.perf_counter()

    def training_step(self, windows: torch.Tensor, batch_idx: int) -> torch.Tensor:
        n_tokens = windows[:, 1:].numel()
        loss = self.token_nll(windows) / n_tokens
        self.log("train/loss", loss, prog_bar=True, batch_size=len(windows))
        return loss

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # Wall time of forward+backward+step; the first steps (allocator warm-up) are not counted.
        if self._step_start is not None and self.global_step > 2:
            seconds = time.perf_counter() - self._step_start
            self.log("train/tokens_per_second", batch[:, 1:].numel() / seconds, batch_size=len(batch))

    def validation_step(self, windows: torch.Tensor, batch_idx: int) -> None:
        self._val_nll += float(self.token_nll(windows))
        self._val_tokens += windows[:, 1:].numel()

    def on_validation_epoch_end(self) -> None:
        if self._val_tokens:
            loss = self._val_nll / self._val_tokens
            self.log("val/loss", loss, prog_bar=True)
            self.log("val/ppl", math.exp(min(loss, 50.0)), prog_bar=True)
        self._val_nll, self._val_tokens = 0.0, 0

    def on_train_end(self) -> None:
        if not self.hparams.export or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        tokenizer = getattr(self.trainer.datamodule, "tokenizer", None)
        self.export(Path(self.trainer.default_root_dir) / "model", tokenizer)

    def export(self, folder: Path, tokenizer=None) -> Path:
        """Save the decoder for inference: MASA coefficients frozen (the MLP is a training device)."""
        model = copy.deepcopy(self.model).cpu()
        sharing = model.cfg.attention_sharing
        if sharing is not None and sharing.kind.startswith("masa-") and not sharing.frozen:
            freeze_masa(model)
        return save_decoder(folder, model, tokenizer, overwrite=True)

    def configure_optimizers(self):
        optimizer = adamw_with_decay_groups(self.model, self.hparams.lr, self.hparams.weight_decay, betas=(0.9, 0.999))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = max(1, int(self.hparams.warmup_fraction * total))
        floor = self.hparams.min_lr_fraction

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
