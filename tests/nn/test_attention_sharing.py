"""Attention sharing from the decoder config: MASA and the baselines, budgets, save/load."""

import pytest
import torch

from pipelines.nn.attention_sharing import (
    AttentionSharing,
    LowRankLinear,
    attention_parameters,
    freeze_masa,
    low_rank_for_budget,
)
from pipelines.nn.checkpoint import load_decoder, save_decoder
from pipelines.nn.decoder import Decoder, DecoderConfig


def config(**sharing) -> DecoderConfig:
    return DecoderConfig(vocab_size=64, dim=48, n_layers=6, n_heads=6, n_kv_heads=2, hidden_dim=96, max_seq_len=64,
                         attention_sharing=AttentionSharing(**sharing) if sharing else None)


def test_vanilla_attention_parameter_count():
    model = Decoder(config())
    assert attention_parameters(model) == 6 * (48 * 48 * 2 + 48 * 16 * 2)


def test_repeat_all_over_reuses_the_first_layers_weights():
    model = Decoder(config(kind="repeat-all-over", atoms=2))
    assert model.blocks[4].attn.q_proj.weight is model.blocks[0].attn.q_proj.weight
    assert model.blocks[5].attn.o_proj.weight is model.blocks[1].attn.o_proj.weight
    assert attention_parameters(model) == 2 * (48 * 48 * 2 + 48 * 16 * 2)
    model(torch.randint(0, 64, (1, 5))).sum().backward()
    assert model.blocks[0].attn.q_proj.weight.grad is not None


def test_low_rank_budget_matches_masa_qkvo():
    dense = 6 * (48 * 48 * 2 + 48 * 16 * 2)
    rank = low_rank_for_budget(48, 48, 16, fraction=1 / 3)
    model = Decoder(config(kind="low-rank", rank=rank))
    assert isinstance(model.blocks[0].attn.k_proj, LowRankLinear)
    assert attention_parameters(model) / 6 == pytest.approx(dense / 6 / 3, rel=0.1)
    masa = Decoder(config(kind="masa-qkvo", atoms=2))
    masa.masa.freeze()
    assert attention_parameters(masa) == pytest.approx(dense / 3, rel=0.01)


def test_frozen_masa_decoder_saves_and_reloads(tmp_path):
    torch.manual_seed(0)
    model = Decoder(config(kind="masa-qkv", atoms=3))
    freeze_masa(model)
    ids = torch.randint(0, 64, (1, 7))
    with torch.no_grad():
        expected = model(ids)
    save_decoder(tmp_path / "m", model)
    again = load_decoder(tmp_path / "m")
    assert again.cfg.attention_sharing == AttentionSharing(kind="masa-qkv", atoms=3, frozen=True)
    with torch.no_grad():
        torch.testing.assert_close(again(ids), expected)


def test_unknown_kind_and_missing_rank_are_refused():
    with pytest.raises(ValueError, match="kind"):
        config(kind="masa")
    with pytest.raises(ValueError, match="rank"):
        config(kind="low-rank")
