"""The optimizer every language-model recipe here uses: AdamW that leaves norms, biases and embeddings undecayed."""

from __future__ import annotations

import torch
from torch import nn


def adamw_with_decay_groups(model: nn.Module, lr: float, weight_decay: float,
                            betas: tuple[float, float]) -> torch.optim.AdamW:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "embed" in name else decay).append(param)
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)
