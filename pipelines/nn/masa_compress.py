"""Training-free MASA compression of a pretrained decoder's attention (the paper's §"pretrained" recipe).

1. Group consecutive layers by logit-lens drift on calibration text (`masa.logit_lens_drift`).
2. Per group and projection, fit S atoms by matrix PCA (`masa.matrix_pca`), S from the budget.
3. Refine each layer's residual with a whitened low-rank term fitted to its calibration inputs
   (`masa.whitened_low_rank`); W_l = Σ_s c_{l,s} D_s + U_l V_l.
The target is an attention-parameter reduction; `refine_share` of each group's budget goes to the
refinement ranks, the rest to atoms (the paper's rank split across Q/K/V/O is not published: the
same share for every projection is our choice).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.nn.masa import (
    MASA,
    PROJECTIONS,
    MatrixDictionary,
    group_layers,
    logit_lens_drift,
    matrix_pca,
    whitened_low_rank,
)


class RefinedSharedLinear(nn.Module):
    """Layer `index` of a group dictionary plus its own rank-r correction `up @ down`."""

    def __init__(self, dictionary: MatrixDictionary, index: int, rank: int) -> None:
        super().__init__()
        self.index = index
        object.__setattr__(self, "dictionary", dictionary)  # owned once, by the model's MASA module
        out_features, in_features = dictionary.atoms.shape[1:]
        self.down = nn.Parameter(torch.zeros(rank, in_features))
        self.up = nn.Parameter(torch.zeros(out_features, rank))

    @property
    def weight(self) -> torch.Tensor:
        return self.dictionary.weights()[self.index] + self.up @ self.down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = F.linear(x, self.dictionary.weights()[self.index])
        return shared + F.linear(F.linear(x, self.down), self.up) if self.up.shape[1] else shared


def build_grouped_masa(model: nn.Module, blocks: list[nn.Module], layout: dict) -> MASA:
    """Install empty per-group dictionaries and refinements described by `layout`:
    {"groups": [[layers]], "atoms": {p: [S per group]}, "ranks": {p: [r per layer]}}."""
    dictionaries = {}
    for p in layout["atoms"]:
        for g, (layers, n_atoms) in enumerate(zip(layout["groups"], layout["atoms"][p], strict=True)):
            first = getattr(blocks[layers[0]].attn, f"{p}_proj")
            out_features, in_features = first.weight.shape
            dictionary = MatrixDictionary(len(layers), out_features, in_features, n_atoms)
            dictionary.freeze()
            dictionaries[f"{p}{g}"] = dictionary
            for index, layer in enumerate(layers):
                setattr(blocks[layer].attn, f"{p}_proj",
                        RefinedSharedLinear(dictionary, index, layout["ranks"][p][layer]))
    masa = MASA(dictionaries)
    masa.install(model)
    return masa


@torch.no_grad()
def input_grams(model: nn.Module, calibration: list[list[int]], projections=PROJECTIONS) -> dict:
    """XᵀX of every layer's projection inputs over the calibration tokens: {(p, layer): [in, in]}."""
    grams: dict = {}
    hooks = []
    for layer, block in enumerate(model.blocks):
        for p in projections:
            def hook(module, args, output, key=(p, layer)):
                x = args[0].reshape(-1, args[0].shape[-1]).double()
                grams[key] = grams.get(key, 0) + x.T @ x
            hooks.append(getattr(block.attn, f"{p}_proj").register_forward_hook(hook))
    try:
        for seq in calibration:
            model(torch.as_tensor(list(seq))[None].to(model.embed.weight.device), last_logits_only=True)
    finally:
        for h in hooks:
            h.remove()
    return grams


@torch.no_grad()
def compress_attention_masa(model: nn.Module, calibration: list[list[int]], ratio: float, n_groups: int = 5,
                            refine_share: float = 0.1, projections=PROJECTIONS) -> dict:
    """Compress `model`'s attention in place to (1 − ratio) of its parameters; returns the layout and counts."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if not 0.0 <= refine_share < 1.0:
        raise ValueError(f"refine_share must be in [0, 1), got {refine_share}")
    blocks = list(model.blocks)
    # A group of n layers fits one atom (d·h + n parameters) in its budget only if n ≥ 1/(1 − ratio).
    min_size = math.floor(1.0 / (1.0 - ratio)) + 1
    groups = group_layers(logit_lens_drift(model, calibration), n_groups, min_size=min(min_size, len(blocks)))
    grams = input_grams(model, calibration, projections)
    layout: dict = {"groups": groups, "atoms": {}, "ranks": {}}
    fitted: dict = {}
    before = after = 0
    for p in projections:
        layout["atoms"][p], layout["ranks"][p] = [], [0] * len(blocks)
        for layers in groups:
            weights = torch.stack([getattr(blocks[layer].attn, f"{p}_proj").weight for layer in layers])
            n, out_features, in_features = weights.shape
            dh = out_features * in_features
            budget = (1.0 - ratio) * n * dh
            n_atoms = max(1, min(n, math.floor((1.0 - refine_share) * budget / (dh + n))))
            rank = max(0, math.floor((budget - n_atoms * (dh + n)) / (n * (out_features + in_features))))
            atoms, coefficients, _ = matrix_pca(weights.double(), n_atoms)
            approx = torch.einsum("ls,soi->loi", coefficients, atoms)
            refinements = [whitened_low_rank(weights[i].double() - approx[i], grams[(p, layer)], rank)
                           for i, layer in enumerate(layers)]
            layout["atoms"][p].append(n_atoms)
            for layer in layers:
                layout["ranks"][p][layer] = rank
            fitted[p, tuple(layers)] = (atoms, coefficients, refinements)
            before += n * dh
            after += n_atoms * (dh + n) + n * rank * (out_features + in_features)
    build_grouped_masa(model, blocks, layout)
    dtype = model.embed.weight.dtype
    for (p, layers), (atoms, coefficients, refinements) in fitted.items():
        dictionary = model.masa.dictionaries[f"{p}{groups.index(list(layers))}"]
        dictionary.atoms.copy_(atoms.to(dtype))
        dictionary.frozen_coefficients.copy_(coefficients.to(dtype))
        for layer, (up, down) in zip(layers, refinements, strict=True):
            proj = getattr(blocks[layer].attn, f"{p}_proj")
            proj.up.copy_(up.to(dtype))
            proj.down.copy_(down.to(dtype))
    model.masa.reset()
    if hasattr(model, "cfg"):  # a Decoder: record the layout so save_decoder/load_decoder round-trip it
        from pipelines.nn.attention_sharing import AttentionSharing

        model.cfg.attention_sharing = AttentionSharing(kind="masa-pca", frozen=True, layout=layout)
    return {"layout": layout, "attention_parameters_before": before, "attention_parameters_after": after,
            "reduction": 1.0 - after / before}


@torch.no_grad()
def compress_attention_svd(model: nn.Module, ratio: float, projections=PROJECTIONS) -> dict:
    """The baseline at the same budget: every layer's projection replaced by its own rank-k SVD,
    k = ⌊(1 − ratio)·out·in / (out + in)⌋ (so no sharing across layers)."""
    from pipelines.nn.attention_sharing import AttentionSharing, LowRankLinear

    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    ranks, before, after = {}, 0, 0
    for p in projections:
        out_features, in_features = getattr(model.blocks[0].attn, f"{p}_proj").weight.shape
        rank = max(1, math.floor((1.0 - ratio) * out_features * in_features / (out_features + in_features)))
        ranks[p] = rank
        for block in model.blocks:
            weight = getattr(block.attn, f"{p}_proj").weight
            u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
            low = LowRankLinear(in_features, out_features, rank).to(weight.dtype)
            low.up.weight.copy_((u[:, :rank] * s[:rank]).to(weight.dtype))
            low.down.weight.copy_(vh[:rank].to(weight.dtype))
            setattr(block.attn, f"{p}_proj", low)
            before += out_features * in_features
            after += rank * (out_features + in_features)
    if hasattr(model, "cfg"):
        model.cfg.attention_sharing = AttentionSharing(kind="low-rank", rank=max(ranks.values()), layout={"ranks": ranks})
    return {"ranks": ranks, "attention_parameters_before": before, "attention_parameters_after": after,
            "reduction": 1.0 - after / before}
