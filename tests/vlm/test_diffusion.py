"""The block-diffusion layout against its definition, and the invariants that show no answer leaks."""

import pytest
import torch

from pipelines.nn.decoder import Decoder, DecoderConfig
from vlm.diffusion import (
    IGNORE,
    block_diffusion_mask,
    diffusion_loss,
    naive_transplant_batch,
    nbdiff_batch,
    padded_length,
    stratified_block_times,
)

VOCAB, MASK, EOS = 64, 63, 2


def reference_mask(length: int, block: int) -> torch.Tensor:
    """The rules of the issue, one entry at a time: rows are queries, [noisy ; clean]."""
    size = 2 * length
    mask = torch.zeros(size, size, dtype=torch.bool)
    for q in range(size):
        for k in range(size):
            q_noisy, k_noisy = q < length, k < length
            qi, ki = q % length, k % length
            if q_noisy and k_noisy:
                mask[q, k] = qi // block == ki // block
            elif q_noisy:
                mask[q, k] = ki // block < qi // block
            elif not k_noisy:
                mask[q, k] = ki <= qi
    return mask


@pytest.mark.parametrize("length,block", [(8, 2), (7, 3), (6, 1), (5, 8), (16, 4)])
def test_mask_matches_the_layout_entry_by_entry(length, block):
    assert torch.equal(block_diffusion_mask(length, block), reference_mask(length, block))


def test_mask_example_from_the_notes():
    # L=4, B=2, from the NBDiff figure: rows n0, n2, c0, c3.
    m = block_diffusion_mask(4, 2).int()
    assert m[0].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert m[2].tolist() == [0, 0, 1, 1, 1, 1, 0, 0]
    assert m[4].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert m[7].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def tiny_model(seed: int = 0) -> Decoder:
    torch.manual_seed(seed)
    return Decoder(DecoderConfig.tiny(vocab_size=VOCAB)).eval()


def two_stream_logits(model, noisy, clean, block):
    length = clean.shape[1]
    ids = torch.cat([noisy, clean], 1)
    pos = torch.arange(length).repeat(2)[None]
    with torch.no_grad():
        return model(ids, position_ids=pos, mask=block_diffusion_mask(length, block)[None, None])


def test_clean_stream_equals_a_plain_causal_forward():
    model = tiny_model()
    clean = torch.randint(3, 60, (1, 12))
    noisy = torch.where(torch.rand(1, 12) < 0.5, torch.full_like(clean, MASK), clean)
    logits = two_stream_logits(model, noisy, clean, block=4)
    with torch.no_grad():
        causal = model(clean)
    torch.testing.assert_close(logits[:, 12:], causal, atol=1e-5, rtol=0)


def test_noisy_logits_see_no_later_block_and_no_same_block_clean_token():
    model = tiny_model(1)
    length, block = 12, 4
    clean = torch.randint(3, 60, (1, length))
    noisy = torch.where(torch.rand(1, length) < 0.5, torch.full_like(clean, MASK), clean)
    base = two_stream_logits(model, noisy, clean, block)
    for k in range(length // block):
        lo, hi = k * block, (k + 1) * block
        clean2, noisy2 = clean.clone(), noisy.clone()
        clean2[:, lo:] = torch.randint(3, 60, (1, length - lo))  # this block's and later clean tokens
        noisy2[:, hi:] = torch.randint(3, 60, (1, length - hi))  # later noisy blocks
        changed = two_stream_logits(model, noisy2, clean2, block)
        torch.testing.assert_close(changed[:, lo:hi], base[:, lo:hi], atol=1e-6, rtol=0)
    # …while an earlier clean block does reach a later noisy block (the test can fail).
    clean3 = clean.clone()
    clean3[:, 0] = (clean[:, 0] + 1) % 60 + 3
    assert not torch.allclose(two_stream_logits(model, noisy, clean3, block)[:, 4:8], base[:, 4:8])


def test_packed_training_layout_gives_the_full_layouts_noisy_logits():
    """Dropping the (never noised, never attended) noisy prompt copy changes nothing."""
    model = tiny_model(2)
    block = 3
    prompt, response = list(range(10, 16)), list(range(20, 29))  # 6 prompt tokens: block-aligned
    batch = nbdiff_batch([(prompt, response)], block, MASK, EOS, generator=torch.Generator().manual_seed(0))
    r = len(response)
    with torch.no_grad():
        packed = model(batch.input_ids, position_ids=batch.position_ids, mask=batch.mask)
    noisy_response = batch.input_ids[:, :r]
    clean = torch.tensor([prompt + response])
    noisy = torch.cat([torch.tensor([prompt]), noisy_response], 1)
    full = two_stream_logits(model, noisy, clean, block)
    torch.testing.assert_close(packed[:, :r], full[:, len(prompt):len(prompt) + r], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, r:], full[:, len(prompt) + r:], atol=1e-5, rtol=1e-5)


def test_nbdiff_batch_noise_targets_and_weights():
    gen = torch.Generator().manual_seed(3)
    prompt, response = [5, 6, 7], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]  # 10 tokens → 12 at B=4
    b = nbdiff_batch([(prompt, response)] * 64, 4, MASK, EOS, generator=gen)
    r = 12
    noisy = b.input_ids[:, :r]
    padded = torch.tensor(response + [EOS, EOS])
    assert (noisy[:, ::4] == padded[::4]).all(), "a block's first token is never masked"
    assert (b.input_ids[:, r:r + 3] == torch.tensor(prompt)).all(), "the prompt is never noised"
    assert (b.input_ids[:, r + 3:] == padded).all(), "responses are padded with EOS, never truncated"
    masked = noisy == MASK
    assert masked.any() and (~masked[:, 1:]).any()
    # Shift: the target of masked position j sits at noisy position j-1, and it is the clean token.
    for row in range(64):
        hits = masked[row].nonzero().squeeze(-1)
        assert torch.equal(b.mdm_targets[row, hits - 1], padded[hits])
        assert int((b.mdm_targets[row, :r] != IGNORE).sum()) == len(hits)
    assert (b.mdm_weights[b.mdm_targets != IGNORE] >= 1.0 / r).all(), "weights are 1/(t·R) with t <= 1"
    # L_AR: every response token (padding included) once, predicted from the clean position before it.
    assert torch.equal(b.ar_targets[0, r + 2: r + 2 + r], padded)
    torch.testing.assert_close(b.ar_weights.sum(1), torch.ones(64))


def test_block_size_one_is_plain_ar_training():
    b = nbdiff_batch([([1, 2], [5, 6, 7])], 1, MASK, EOS)
    assert (b.input_ids != MASK).all() and (b.mdm_targets == IGNORE).all()


def test_stratified_times_cover_the_unit_interval():
    t = stratified_block_times(8, torch.Generator().manual_seed(0))
    assert sorted((t * 8).floor().long().tolist()) == list(range(8))
    assert (t > 0).all() and (t <= 1).all()


def test_padding_never_truncates():
    assert [padded_length(n, 4) for n in (1, 4, 5, 8)] == [4, 4, 8, 8]


def test_naive_transplant_is_bidirectional_over_the_context():
    b = naive_transplant_batch([([1, 2, 3], [5, 6, 7, 8])], 2, MASK, EOS, generator=torch.Generator().manual_seed(0))
    assert b.mask.all() and (b.ar_targets == IGNORE).all()
    assert (b.input_ids[0, :3] == torch.tensor([1, 2, 3])).all()


def test_loss_is_finite_and_trains_every_weight_it_should():
    model = tiny_model()
    model.train()
    batch = nbdiff_batch([([1, 2, 3], list(range(10, 30))), ([4], list(range(30, 37)))], 4, MASK, EOS,
                         generator=torch.Generator().manual_seed(0))
    loss, parts = diffusion_loss(model, batch, ar_weight=0.5)
    assert torch.isfinite(loss) and parts["mdm"] > 0 and parts["ar"] > 0
    torch.testing.assert_close(loss, parts["mdm"] + 0.5 * parts["ar"])
    loss.backward()
    assert model.embed.weight.grad[MASK].abs().sum() > 0, "the [MASK] embedding learns"
