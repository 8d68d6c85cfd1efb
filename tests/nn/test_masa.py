"""MASA against its oracle: per-layer nn.Linear weights set to Σ c·D give the same model."""

import copy

import pytest
import torch

from pipelines.nn.decoder import Decoder, DecoderConfig
from pipelines.nn.masa import apply_masa, masa_reduction


def tiny(n_layers: int = 6) -> Decoder:
    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=64, dim=48, n_layers=n_layers, n_heads=6, n_kv_heads=2, hidden_dim=96,
                        max_seq_len=64)
    return Decoder(cfg)


@pytest.mark.parametrize("variant", ["masa-qkvo", "masa-qkv"])
def test_frozen_masa_equals_materialised_linears(variant):
    model = tiny()
    masa = apply_masa(model, list(model.blocks), variant, n_atoms=2)
    masa.freeze()
    ids = torch.randint(0, 64, (2, 10))
    with torch.no_grad():
        out = model(ids)
        plain = tiny()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("masa.")}, strict=False)
        for layer, block in enumerate(plain.blocks):
            for p in ("q", "k", "v", "o"):
                shared = getattr(model.blocks[layer].attn, f"{p}_proj")
                getattr(block.attn, f"{p}_proj").weight.copy_(shared.weight)
        torch.testing.assert_close(plain(ids), out, atol=1e-6, rtol=0)


def test_gqa_shapes_and_parameter_count_formula():
    model = tiny(n_layers=6)
    before = sum(p.numel() for b in model.blocks for n, p in b.attn.named_parameters())
    masa = apply_masa(model, list(model.blocks), "masa-qkvo", n_atoms=2)
    masa.freeze()
    assert masa.dictionaries["k"].atoms.shape == (2, 16, 48)  # K smaller than Q under GQA
    after = sum(p.numel() for p in masa.parameters())
    expected = sum(s * (o * i + 6) for s, o, i in [(2, 48, 48), (2, 16, 48), (2, 16, 48), (2, 48, 48)])
    assert after == expected
    per_projection = 1 - masa.dictionaries["q"].atoms.numel() / (6 * 48 * 48) - 2 * 6 / (6 * 48 * 48)
    assert masa_reduction(6, 48, 48, 2) == pytest.approx(per_projection)
    assert 1 - after / before == pytest.approx(1 - expected / before)


def test_training_updates_atoms_and_coefficient_mlp_once_per_step():
    model = tiny()
    masa = apply_masa(model, list(model.blocks), "masa-qkv", n_atoms=3)
    calls = []
    original = torch.einsum
    torch.einsum = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
    try:
        loss = model(torch.randint(0, 64, (2, 8))).logsumexp(-1).mean()
    finally:
        torch.einsum = original
    assert len(calls) == 3, "one einsum per shared projection per forward"
    loss.backward()
    assert masa.dictionaries["q"].atoms.grad.abs().sum() > 0
    assert masa.dictionaries["q"].coefficient_mlp[0].weight.grad.abs().sum() > 0
    snapshot = copy.deepcopy(masa.dictionaries["q"].coefficients().detach())
    masa.freeze()
    torch.testing.assert_close(masa.dictionaries["q"].coefficients(), snapshot)


def test_bad_settings_are_refused():
    model = tiny()
    with pytest.raises(ValueError, match="variant"):
        apply_masa(model, list(model.blocks), "masa-qk")
    with pytest.raises(ValueError, match="n_atoms"):
        apply_masa(tiny(), list(tiny().blocks), "masa-qkvo", n_atoms=99)


def test_matrix_pca_via_gram_equals_svd_and_leaves_the_tail_energy():
    from pipelines.nn.masa import matrix_pca

    torch.manual_seed(0)
    weights = torch.randn(8, 12, 10, dtype=torch.float64) + torch.randn(1, 12, 10, dtype=torch.float64)
    atoms, coeffs, eigenvalues = matrix_pca(weights, 3)
    flat = weights.reshape(8, -1)
    u, s, vh = torch.linalg.svd(flat.T, full_matrices=False)
    svd_rank3 = (u[:, :3] * s[:3]) @ vh[:3]
    ours = torch.einsum("ls,soi->loi", coeffs, atoms).reshape(8, -1).T
    torch.testing.assert_close(ours, svd_rank3, atol=1e-9, rtol=0)
    torch.testing.assert_close(eigenvalues, s**2, atol=1e-9, rtol=1e-9)
    error = ((weights - torch.einsum("ls,soi->loi", coeffs, atoms)) ** 2).sum()
    torch.testing.assert_close(error, (s[3:] ** 2).sum(), atol=1e-9, rtol=1e-9)
    gram = atoms.reshape(3, -1) @ atoms.reshape(3, -1).T
    torch.testing.assert_close(gram, torch.eye(3, dtype=torch.float64), atol=1e-9, rtol=0)


def test_layer_groups_cut_at_the_largest_drifts():
    from pipelines.nn.masa import group_layers

    drift = torch.tensor([0.1, 0.9, 0.2, 0.05, 0.7])  # 6 layers
    assert group_layers(drift, 3) == [[0, 1], [2, 3, 4], [5]]
    assert group_layers(drift, 1) == [[0, 1, 2, 3, 4, 5]]
    # The cut before layer 5 would leave it alone; the next allowed cut (drift 0.05) is taken instead.
    assert group_layers(drift, 3, min_size=2) == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(ValueError):
        group_layers(drift, 7)


def test_logit_lens_drift_matches_a_direct_computation():
    from pipelines.nn.masa import logit_lens_drift

    model = tiny(n_layers=4).eval()
    seq = [3, 9, 27, 17, 51]
    drift = logit_lens_drift(model, [seq])
    with torch.no_grad():
        x = model.embed(torch.tensor([seq]))
        pos = torch.arange(5)[None]
        from pipelines.nn.transformer import rope_cos_sin

        rope = rope_cos_sin(pos, model.cfg.head_dim, model.cfg.rope_base)
        dists = []
        for block in model.blocks:
            x = block(x, rope=rope, is_causal=True)
            dists.append(torch.softmax(model.lm_head(model.norm(x.mean(1))), -1)[0])
    expected = torch.stack([(p * (p.log() - q.log())).sum() for p, q in zip(dists[:-1], dists[1:], strict=True)])
    torch.testing.assert_close(drift, expected, atol=1e-5, rtol=1e-4)
    assert (drift >= 0).all()


def test_whitened_low_rank_minimises_the_output_error():
    from pipelines.nn.masa import whitened_low_rank

    torch.manual_seed(0)
    delta = torch.randn(16, 12, dtype=torch.float64)
    x = torch.randn(200, 12, dtype=torch.float64) * torch.linspace(0.1, 3.0, 12, dtype=torch.float64)
    up, down = whitened_low_rank(delta, x.T @ x, rank=4, damping=0.0)
    ours = ((delta - up @ down) @ x.T).norm()
    singular = torch.linalg.svdvals(delta @ torch.linalg.cholesky(x.T @ x))
    torch.testing.assert_close(ours, singular[4:].pow(2).sum().sqrt(), atol=1e-8, rtol=1e-8)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    plain = ((delta - (u[:, :4] * s[:4]) @ vh[:4]) @ x.T).norm()
    assert ours < plain, "whitening beats plain SVD on the outputs"


def test_inference_reuses_the_built_weights_training_rebuilds_them():
    model = tiny()
    apply_masa(model, list(model.blocks), "masa-qkvo", n_atoms=2)
    ids = torch.randint(0, 64, (1, 6))
    calls = []
    original = torch.einsum
    torch.einsum = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
    try:
        model.eval()
        with torch.no_grad():
            first = model(ids)
            model(ids)
        assert len(calls) == 4, "eval + no_grad: built once"
        model.train()
        model(ids)
        assert len(calls) == 8, "training: rebuilt every forward"
    finally:
        torch.einsum = original
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), first)


def test_inference_after_an_optimizer_step_sees_the_new_weights():
    model = tiny()
    apply_masa(model, list(model.blocks), "masa-qkv", n_atoms=2)
    ids = torch.randint(0, 64, (1, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    model(ids).logsumexp(-1).mean().backward()
    optimizer.step()
    model.eval()
    with torch.no_grad():
        after_step = model(ids)
        for d in model.masa.dictionaries.values():
            d.reset()
        torch.testing.assert_close(model(ids), after_step)  # no stale weights from before the step
