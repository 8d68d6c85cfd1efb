"""MASA: the attention projections of all layers shared through a dictionary of matrix atoms.

Per projection p ∈ {Q, K, V, O} there is one dictionary of S atoms D^p_s (each the shape of one
layer's weight) and layer l uses W^p_l = Σ_s c^p_{l,s} D^p_s. While training, the coefficients come
from a 3-layer MLP over a learned per-layer embedding (the paper's parametrisation); `freeze()` then
replaces the MLP by the plain coefficient table it predicts. A step builds all L weights of a
projection with one einsum (cached for that forward) and every layer runs a plain `F.linear`.

Parameters per projection: S·(d_out·d_in) atoms + L·S coefficients, against L·d_out·d_in unshared,
i.e. a reduction of 1 − S(d_out·d_in + L)/(L·d_out·d_in) once frozen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PROJECTIONS = ("q", "k", "v", "o")
VARIANTS = {"masa-qkvo": ("q", "k", "v", "o"), "masa-qkv": ("q", "k", "v")}


class MatrixDictionary(nn.Module):
    """S atoms of shape [out, in] shared by `n_layers` layers, with per-layer coefficients."""

    def __init__(self, n_layers: int, out_features: int, in_features: int, n_atoms: int,
                 embed_dim: int = 32, hidden_dim: int = 64) -> None:
        super().__init__()
        if not 1 <= n_atoms <= n_layers:
            raise ValueError(f"n_atoms must be in [1, n_layers={n_layers}], got {n_atoms}")
        self.n_layers, self.n_atoms = n_layers, n_atoms
        # Init: each atom like one nn.Linear weight; a layer then starts as a mix of ~S of them, so the
        # coefficient MLP's output is scaled to keep W_l at nn.Linear's variance (the paper gives no init).
        bound = 1.0 / in_features**0.5
        self.atoms = nn.Parameter(torch.empty(n_atoms, out_features, in_features).uniform_(-bound, bound))
        self.layer_embedding = nn.Parameter(torch.randn(n_layers, embed_dim))
        self.coefficient_mlp = nn.Sequential(nn.Linear(embed_dim, hidden_dim), nn.GELU(),
                                             nn.Linear(hidden_dim, hidden_dim), nn.GELU(),
                                             nn.Linear(hidden_dim, n_atoms))
        self.register_buffer("frozen_coefficients", None, persistent=True)
        self._weights: torch.Tensor | None = None
        self._versions: tuple[int, ...] = ()

    @property
    def frozen(self) -> bool:
        return self.frozen_coefficients is not None

    def coefficients(self) -> torch.Tensor:
        """C [L, S]."""
        if self.frozen:
            return self.frozen_coefficients
        return self.coefficient_mlp(self.layer_embedding) / self.n_atoms**0.5

    @torch.no_grad()
    def freeze(self) -> None:
        """Keep the coefficients the MLP predicts now as a trainable table and drop the MLP."""
        table = self.coefficient_mlp(self.layer_embedding) / self.n_atoms**0.5
        del self.frozen_coefficients
        self.frozen_coefficients = nn.Parameter(table.clone())
        self.coefficient_mlp = None
        self.layer_embedding = None

    def weights(self) -> torch.Tensor:
        """All layers' weights [L, out, in], built once per forward (see `reset`) and again whenever a
        parameter changed in place since (an optimizer step, a load): tensors' version counters tell."""
        versions = tuple(p._version for p in self.parameters())
        if self._weights is None or versions != self._versions:
            self._weights = torch.einsum("ls,soi->loi", self.coefficients(), self.atoms)
            self._versions = versions
        return self._weights

    def reset(self) -> None:
        self._weights = None


class SharedLinear(nn.Module):
    """One layer's view of a `MatrixDictionary`: a bias-free linear with weight W_l."""

    def __init__(self, dictionary: MatrixDictionary, layer: int) -> None:
        super().__init__()
        self.layer = layer
        object.__setattr__(self, "dictionary", dictionary)  # not a child: the model owns it once

    @property
    def weight(self) -> torch.Tensor:
        return self.dictionary.weights()[self.layer]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class MASA(nn.Module):
    """The dictionaries of one model; `apply_masa` installs it and resets the weight cache per forward."""

    def __init__(self, dictionaries: dict[str, MatrixDictionary]) -> None:
        super().__init__()
        self.dictionaries = nn.ModuleDict(dictionaries)

    def reset(self) -> None:
        for d in self.dictionaries.values():
            d.reset()

    def install(self, model: nn.Module) -> None:
        """Attach to `model`: rebuild the weights at each forward that may train; inference (eval mode,
        no grad) reuses the built weights until a parameter changes, so decoding a token costs no einsum."""
        model.masa = self

        def before_forward(module, args):
            if module.training or torch.is_grad_enabled():
                self.reset()

        model.register_forward_pre_hook(before_forward)

    def freeze(self) -> None:
        for d in self.dictionaries.values():
            d.freeze()


def apply_masa(model: nn.Module, blocks: list[nn.Module], variant: str = "masa-qkvo", n_atoms: int | None = None,
               embed_dim: int = 32, hidden_dim: int = 64) -> MASA:
    """Replace the chosen projections of every block's `attn` by shared dictionary views.

    `blocks` are the transformer blocks (each with `attn.{q,k,v,o}_proj` linears, biases unsupported);
    `n_atoms` defaults to L/3 (the paper's S for Transformer-S). The weights are rebuilt at the start
    of each `model` forward, so one optimizer step sees one einsum per projection.
    """
    if variant not in VARIANTS:
        raise ValueError(f"MASA variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    n_layers = len(blocks)
    n_atoms = n_atoms or max(1, round(n_layers / 3))
    dictionaries = {}
    for p in VARIANTS[variant]:
        first = getattr(blocks[0].attn, f"{p}_proj")
        if first.bias is not None:
            raise ValueError(f"MASA shares bias-free projections; {p}_proj has a bias")
        dictionary = MatrixDictionary(n_layers, first.out_features, first.in_features, n_atoms, embed_dim, hidden_dim)
        dictionaries[p] = dictionary
        for layer, block in enumerate(blocks):
            setattr(block.attn, f"{p}_proj", SharedLinear(dictionary, layer))
    masa = MASA(dictionaries)
    masa.install(model)
    return masa


def masa_reduction(n_layers: int, out_features: int, in_features: int, n_atoms: int) -> float:
    """1 − S(d_out·d_in + L)/(L·d_out·d_in): the fraction of one projection's parameters saved (frozen)."""
    dh = out_features * in_features
    return 1.0 - n_atoms * (dh + n_layers) / (n_layers * dh)


def matrix_pca(weights: torch.Tensor, n_atoms: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training-free dictionary for pretrained layers: atoms, coefficients and the eigenvalues.

    Minimises Σ_l ‖W_l − Σ_s ⟨D_s, W_l⟩ D_s‖²_F over Frobenius-orthonormal atoms. With the columns
    of W = [vec W_1 … vec W_L], the atoms are the top-S eigenvectors of WWᵀ; they come from the small
    L×L Gram matrix G = WᵀW = VΛVᵀ as D = W V_S Λ_S^{-1/2} (no d×d eigenproblem), and C = Λ_S^{1/2} V_Sᵀ.
    The squared error left is the tail Σ_{s>S} λ_s. No centring, as in the paper.
    """
    n_layers = weights.shape[0]
    if not 1 <= n_atoms <= n_layers:
        raise ValueError(f"n_atoms must be in [1, {n_layers}], got {n_atoms}")
    flat = weights.reshape(n_layers, -1).double().T  # [d·h, L]
    eigenvalues, eigenvectors = torch.linalg.eigh(flat.T @ flat)  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0).clamp(min=0), eigenvectors.flip(1)
    top_values, top_vectors = eigenvalues[:n_atoms], eigenvectors[:, :n_atoms]
    atoms = (flat @ top_vectors) / top_values.clamp(min=1e-30).sqrt()  # [d·h, S], orthonormal columns
    coefficients = atoms.T @ flat  # [S, L] = Λ^{1/2} Vᵀ
    shape = weights.shape[1:]
    return (atoms.T.reshape(n_atoms, *shape).to(weights.dtype), coefficients.T.to(weights.dtype),
            eigenvalues.to(weights.dtype))


@torch.no_grad()
def logit_lens_drift(model: nn.Module, calibration: list[list[int]]) -> torch.Tensor:
    """KL(p_l ‖ p_{l+1}) between consecutive blocks' logit-lens distributions, averaged over sequences.

    p_l = softmax(lm_head(norm(mean over tokens of block l's output))): the paper's grouping signal;
    consecutive blocks with a small drift do similar work and can share one dictionary.
    """
    outputs: list[torch.Tensor] = []
    hooks = [block.register_forward_hook(lambda m, i, o: outputs.append(o.mean(1))) for block in model.blocks]
    drift = torch.zeros(len(model.blocks) - 1)
    try:
        for seq in calibration:
            outputs.clear()
            model(torch.as_tensor(list(seq))[None].to(model.embed.weight.device), last_logits_only=True)
            logp = torch.stack([torch.log_softmax(model.lm_head(model.norm(h)).float(), -1)[0] for h in outputs])
            drift += (logp[:-1].exp() * (logp[:-1] - logp[1:])).sum(-1).cpu()
    finally:
        for hook in hooks:
            hook.remove()
    return drift / max(len(calibration), 1)


def group_layers(drift: torch.Tensor, n_groups: int, min_size: int = 1) -> list[list[int]]:
    """Consecutive layer groups, cut at the largest drifts between neighbours (up to n_groups − 1
    cuts), skipping any cut that would leave a group smaller than `min_size`."""
    n_layers = len(drift) + 1
    if not 1 <= n_groups <= n_layers:
        raise ValueError(f"n_groups must be in [1, {n_layers}], got {n_groups}")
    cuts: list[int] = []
    for index in torch.argsort(drift, descending=True, stable=True).tolist():
        if len(cuts) == n_groups - 1:
            break
        bounds = sorted([0, *cuts, index + 1, n_layers])
        if all(b - a >= min_size for a, b in zip(bounds[:-1], bounds[1:], strict=True)):
            cuts.append(index + 1)
    bounds = sorted([0, *cuts, n_layers])
    return [list(range(a, b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def whitened_low_rank(residual: torch.Tensor, input_gram: torch.Tensor, rank: int, damping: float = 1e-4
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-r correction `up @ down` ≈ residual that minimises the *output* error on calibration inputs.

    With XᵀX = L Lᵀ (Cholesky, damped), ‖(ΔW − UV)Xᵀ‖_F = ‖(ΔW − UV)L‖_F, so the best rank-r fit is
    the truncated SVD of ΔW·L mapped back by L⁻¹ (MASA's local refinement, SVD-LLM's whitening).
    """
    gram = input_gram.double()
    gram = gram + damping * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    chol = torch.linalg.cholesky(gram)
    u, s, vh = torch.linalg.svd(residual.double() @ chol, full_matrices=False)
    up = u[:, :rank] * s[:rank]
    down = torch.linalg.solve_triangular(chol, vh[:rank], upper=False, left=False)  # V_rᵀ L⁻¹
    return up.to(residual.dtype), down.to(residual.dtype)
