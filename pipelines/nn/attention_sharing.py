"""How a transformer's attention projections are parametrised: the MASA dictionary or a baseline.

`apply_attention_sharing(model, blocks, cfg)` rewrites the blocks' `attn.{q,k,v,o}_proj` in place,
so any transformer in the project (decoder, ViT) chooses from YAML. The baselines are the ones the
MASA paper compares at a matched attention-parameter budget:
- "low-rank": each projection W = B·A of rank r (two linears);
- "repeat-all-over": only S distinct layers' projections, layer l reusing set l mod S;
- GQA needs no rewrite: it is `n_kv_heads` in the config.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.nn.masa import VARIANTS, apply_masa

KINDS = ("vanilla", "masa-qkvo", "masa-qkv", "low-rank", "repeat-all-over", "masa-pca")


@dataclass
class AttentionSharing:
    """kind: one of KINDS; atoms: S for MASA and repeat-all-over (default L/3); rank: r for low-rank;
    frozen: MASA coefficients as a plain table (after training; what a saved MASA model holds);
    layout: for "masa-pca" (a compressed pretrained model), its groups, atoms and refinement ranks."""

    kind: str = "vanilla"
    atoms: int | None = None
    rank: int | None = None
    frozen: bool = False
    layout: dict | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"attention sharing kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "low-rank" and not self.rank:
            raise ValueError("attention sharing 'low-rank' needs a rank")
        if self.kind == "masa-pca" and not self.layout:
            raise ValueError("attention sharing 'masa-pca' needs the layout written by `compress_attention_masa`")


class LowRankLinear(nn.Module):
    """W = up · down with inner dimension `rank` (no bias)."""

    def __init__(self, in_features: int, out_features: int, rank: int) -> None:
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False)
        self.up = nn.Linear(rank, out_features, bias=False)

    def forward(self, x):
        return self.up(self.down(x))


class TiedLinear(nn.Module):
    """A view of another layer's linear (repeat-all-over): same weight object, not a copy."""

    def __init__(self, source: nn.Linear) -> None:
        super().__init__()
        object.__setattr__(self, "source", source)  # not a child: owned by the layer it comes from

    @property
    def weight(self):
        return self.source.weight

    def forward(self, x):
        return F.linear(x, self.source.weight, self.source.bias)


def apply_attention_sharing(model: nn.Module, blocks: list[nn.Module], sharing: AttentionSharing) -> nn.Module:
    n_layers = len(blocks)
    if sharing.kind == "vanilla":
        return model
    if sharing.kind == "masa-pca":
        from pipelines.nn.masa_compress import build_grouped_masa

        build_grouped_masa(model, blocks, sharing.layout)
    elif sharing.kind in VARIANTS:
        masa = apply_masa(model, blocks, sharing.kind, sharing.atoms)
        if sharing.frozen:
            masa.freeze()
    elif sharing.kind == "low-rank":
        # One rank for all, or per projection (`layout={"ranks": {"q": r, …}}`, the SVD baseline's).
        ranks = (sharing.layout or {}).get("ranks", {})
        for block in blocks:
            for p in ("q", "k", "v", "o"):
                old = getattr(block.attn, f"{p}_proj")
                setattr(block.attn, f"{p}_proj",
                        LowRankLinear(old.in_features, old.out_features, ranks.get(p, sharing.rank)))
    else:  # repeat-all-over
        unique = sharing.atoms or max(1, round(n_layers / 3))
        if not 1 <= unique <= n_layers:
            raise ValueError(f"repeat-all-over needs 1 <= atoms <= {n_layers}, got {unique}")
        for layer in range(unique, n_layers):
            for p in ("q", "k", "v", "o"):
                setattr(blocks[layer].attn, f"{p}_proj", TiedLinear(getattr(blocks[layer % unique].attn, f"{p}_proj")))
    return model


def attention_parameters(model: nn.Module) -> int:
    """Distinct parameters of the attention projections (MASA dictionaries included, shared ones once)."""
    seen, total = set(), 0
    for name, param in model.named_parameters():
        if ("attn." in name and "_proj" in name) or name.startswith("masa."):
            if id(param) not in seen:
                seen.add(id(param))
                total += param.numel()
    return total


def low_rank_for_budget(dim: int, q_out: int, kv_out: int, fraction: float) -> int:
    """The rank whose four factorised projections hold `fraction` of the dense ones' parameters."""
    dense = dim * (2 * q_out + 2 * kv_out)  # q, o: dim×q_out; k, v: dim×kv_out
    per_rank = (dim + q_out) * 2 + (dim + kv_out) * 2
    return max(1, int(round(fraction * dense / per_rank)))


def freeze_masa(model: nn.Module) -> None:
    """Freeze a MASA model's coefficients (drop the MLP) and record it in its config for saving."""
    masa = getattr(model, "masa", None)
    if masa is None:
        raise ValueError("the model has no MASA dictionaries to freeze")
    masa.freeze()
    model.cfg.attention_sharing.frozen = True


@torch.no_grad()
def match_attention_init(blocks: list[nn.Module], std: float) -> None:
    """Rescale every attention projection so that the weight a layer actually applies has standard
    deviation `std` at initialisation, whatever its parametrisation.

    Without this, variants trained from scratch start at different scales (a rank-r product of two
    N(0, σ²) factors has std √r·σ², a MASA layer's std depends on its predicted coefficients), and a
    short run then measures that difference instead of the parametrisation.
    """
    from pipelines.nn.masa import SharedLinear

    dictionaries = {}
    for block in blocks:
        for p in ("q", "k", "v", "o"):
            proj = getattr(block.attn, f"{p}_proj")
            if isinstance(proj, SharedLinear):
                dictionaries[id(proj.dictionary)] = proj.dictionary
            elif isinstance(proj, LowRankLinear):
                factor = (std / float((proj.up.weight @ proj.down.weight).std())) ** 0.5
                proj.up.weight.mul_(factor)
                proj.down.weight.mul_(factor)
            elif isinstance(proj, nn.Linear):
                proj.weight.mul_(std / float(proj.weight.std()))
            # TiedLinear: the layer it points to is rescaled once, as itself
    for dictionary in dictionaries.values():
        dictionary.atoms.mul_(std / float(dictionary.weights().std()))
        dictionary.reset()
