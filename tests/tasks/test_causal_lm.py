"""Training a decoder from scratch: schedule, export with frozen MASA, config mistakes."""

import math
import sys

import lightning as L
import pytest
import torch

from pipelines.cli import lightning_cli
from pipelines.nn.attention_sharing import AttentionSharing, attention_parameters
from pipelines.nn.checkpoint import load_decoder
from pipelines.nn.decoder import DecoderConfig
from pipelines.tasks.causal_lm import CausalLM


def small(kind: str = "vanilla", vocab_size: int = 300) -> DecoderConfig:
    return DecoderConfig(vocab_size=vocab_size, dim=32, n_layers=6, n_heads=4, n_kv_heads=2, hidden_dim=64,
                         max_seq_len=64, attention_sharing=AttentionSharing(kind=kind))


def test_learning_rate_warms_up_then_decays_to_the_floor():
    module = CausalLM(small(), lr=1e-2, warmup_fraction=0.1, min_lr_fraction=0.1)
    module.trainer = type("T", (), {"estimated_stepping_batches": 100})()  # all the schedule reads
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(100):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1e-3)  # step 1 of 10 warm-up steps
    assert lrs[9] == pytest.approx(1e-2)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:], strict=False))  # cosine: never rises again
    assert lrs[-1] == pytest.approx(1e-3, rel=0.01)
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert id(module.model.embed.weight) not in decayed and id(module.model.norm.weight) not in decayed


def test_export_freezes_masa_and_keeps_the_outputs(tmp_path, text_corpus_root):
    module = CausalLM(small("masa-qkvo"))
    ids = torch.randint(0, 300, (2, 17))
    module.eval()
    with torch.no_grad():
        expected = module(ids)
    folder = module.export(tmp_path / "model")
    loaded = load_decoder(folder).eval()
    assert loaded.cfg.attention_sharing.frozen and loaded.masa.dictionaries["q"].coefficient_mlp is None
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), expected, atol=1e-5, rtol=1e-5)
    # Frozen: atoms + an L×S table per projection, the MASA formula's count.
    assert attention_parameters(loaded) == 4 * (2 * 32 * 32 + 6 * 2) - 2 * 2 * (32 * 32 - 32 * 16)
    assert not module.model.cfg.attention_sharing.frozen  # the training module keeps its MLP


def test_fit_lowers_validation_loss_and_exports(tmp_path, text_corpus_root, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pipelines"])
    cli = lightning_cli(["fit", "--config", "configs/lm/decoder_small.yaml",
                         "--data.init_args.root", str(text_corpus_root), "--data.init_args.seq_len", "32",
                         "--data.init_args.batch_size", "8", "--model.init_args.decoder.vocab_size", "300",
                         "--model.init_args.decoder.dim", "32", "--model.init_args.decoder.n_layers", "3",
                         "--model.init_args.decoder.hidden_dim", "64", "--model.init_args.decoder.max_seq_len", "32",
                         "--model.init_args.decoder.attention_sharing.kind", "masa-qkvo",
                         "--trainer.max_steps", "16", "--trainer.val_check_interval", "16",
                         "--trainer.limit_val_batches", "4", "--runs_dir", str(tmp_path), "--name", "lm"])
    import csv

    val = [float(r["val/loss"]) for r in csv.DictReader((tmp_path / "lm" / "metrics.csv").open()) if r["val/loss"]]
    assert val[-1] < math.log(300) - 0.3  # a uniform guess (the initial model) scores ln 300
    assert (tmp_path / "lm" / "model" / "tokenizer.json").exists()
    assert load_decoder(tmp_path / "lm" / "model").cfg.attention_sharing.frozen
    assert cli.trainer.state.finished


def test_vocabulary_mismatch_is_named(text_corpus_root):
    from pipelines.data.text_corpus import TextCorpusDataModule

    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="vocab_size=512 but the corpus tokenizer has 300"):
        trainer.fit(CausalLM(small(vocab_size=512)), TextCorpusDataModule(root=str(text_corpus_root), seq_len=16))


@pytest.mark.parametrize("kind", ["vanilla", "masa-qkvo", "masa-qkv", "low-rank", "repeat-all-over"])
def test_every_parametrisation_starts_at_the_same_weight_scale(kind):
    sharing = AttentionSharing(kind=kind, rank=4 if kind == "low-rank" else None)
    cfg = DecoderConfig(vocab_size=300, dim=32, n_layers=6, n_heads=4, n_kv_heads=2, hidden_dim=64,
                        max_seq_len=64, attention_sharing=sharing)
    module = CausalLM(cfg, init_std=0.02)
    for p in ("q", "k", "v", "o"):
        stds = []
        for block in module.model.blocks:
            proj = getattr(block.attn, f"{p}_proj")
            weight = proj.up.weight @ proj.down.weight if hasattr(proj, "up") else proj.weight
            stds.append(float(weight.detach().std()))
        rms = (sum(x * x for x in stds) / len(stds)) ** 0.5
        assert rms == pytest.approx(0.02, rel=0.1), (kind, p)
        # (MASA layers vary around it: each mixes the atoms by its own MLP-predicted coefficients.)
    assert float(module.model.embed.weight.std()) == pytest.approx(0.02, rel=0.05)
    if kind.startswith("masa"):  # atoms at a dense weight's scale, so Adam moves them at its pace
        for dictionary in module.model.masa.dictionaries.values():
            assert float(dictionary.atoms.detach().std()) == pytest.approx(0.02, rel=0.2)
