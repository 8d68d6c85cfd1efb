"""The NBDiff LightningModule: curriculum stages, stage exports that decode, bad input."""

import json
import sys

import pytest
import torch

from pipelines.cli import lightning_cli
from pipelines.data.errors import DataError
from vlm.data import ChatTextDataModule
from vlm.instruct import make_tasks, read_conversations
from vlm.model import add_mask_token, load_block_diffusion, load_source
from vlm.train import BlockDiffusionLM, CurriculumStage


def test_curriculum_stage_follows_the_global_step():
    module = BlockDiffusionLM.__new__(BlockDiffusionLM)
    module.curriculum = [CurriculumStage(1, 2), CurriculumStage(2, 3), CurriculumStage(4, 1)]
    sizes = [module.stage_at(step).block_size for step in range(8)]
    assert sizes == [1, 1, 2, 2, 2, 4, 4, 4]
    assert module.stage_ends() == [2, 5, 6]


def test_mask_token_extends_vocabulary_and_embeddings():
    model, tokenizer = load_source("tiny")
    vocab = model.cfg.vocab_size
    logits_before = model(torch.tensor([[5, 6, 7]])).detach()
    mask_id = add_mask_token(model, tokenizer)
    assert mask_id == vocab and model.cfg.vocab_size == vocab + 1
    assert tokenizer.encode("[MASK]") == [mask_id]
    assert model.lm_head.weight is model.embed.weight
    torch.testing.assert_close(model(torch.tensor([[5, 6, 7]]))[..., :vocab], logits_before)
    assert add_mask_token(model, tokenizer) == mask_id  # idempotent


def test_fit_runs_the_curriculum_and_exports_every_stage(chat_text_root, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pipelines"])
    cli = lightning_cli(["fit", "--config", "configs/vlm/nbdiff_tiny.yaml", "--data.init_args.root", str(chat_text_root),
                         "--runs_dir", str(tmp_path), "--trainer.limit_val_batches", "0"])
    assert cli.trainer.global_step == 6
    run = tmp_path / "nbdiff_tiny"
    for size in (1, 2, 4):
        model, tokenizer, info = load_block_diffusion(run / "stages" / f"B{size}")
        assert info == {"block_size": size, "mask_token_id": model.cfg.vocab_size - 1, "recipe": "nbdiff"}
    logged = (run / "metrics.csv").read_text().splitlines()[0]
    assert "train/mdm" in logged and "train/ar" in logged


def test_vlm_generate_decodes_an_exported_stage(chat_text_root, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setattr(sys, "argv", ["pipelines"])
    lightning_cli(["fit", "--config", "configs/vlm/nbdiff_tiny.yaml", "--data.init_args.root", str(chat_text_root),
                   "--runs_dir", str(tmp_path), "--trainer.limit_val_batches", "0"])
    main(["vlm", "generate", "--model", str(tmp_path / "nbdiff_tiny" / "stages" / "B4"), "--prompt", "Count to 5.",
          "--max_new_tokens", "12", "--threshold", "0.5"])
    err = capsys.readouterr().err
    assert "B=4" in err and "per denoising forward" in err
    with pytest.raises(SystemExit):
        main(["vlm", "generate", "--model", str(tmp_path / "nbdiff_tiny" / "stages" / "B4"), "--prompt", "x",
              "--threshold", "1.5"])
    assert "threshold" in capsys.readouterr().err


def test_unknown_recipe_and_empty_stage_are_refused():
    with pytest.raises(ValueError, match="recipe"):
        BlockDiffusionLM(source="tiny", recipe="diffusion")
    with pytest.raises(ValueError, match="steps"):
        BlockDiffusionLM(source="tiny", curriculum=[{"block_size": 4, "steps": 0}])


def test_conversation_file_errors_name_the_file_and_item(tmp_path):
    bad = tmp_path / "train.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="train.json"):
        read_conversations(bad)
    bad.write_text(json.dumps([{"id": "a", "conversations": [{"from": "gpt", "value": "hi"}]}]))
    with pytest.raises(DataError, match="item 0"):
        read_conversations(bad)
    with pytest.raises(FileNotFoundError, match="absent.json"):
        read_conversations(tmp_path / "absent.json")


def test_datamodule_pairs_end_with_eos_and_text_chunks_have_a_document_start(chat_text_root):
    dm = ChatTextDataModule(root=str(chat_text_root), tokenizer="tiny", text_chunk_tokens=16, text_chunks=3)
    train = dm.dataset("train")
    eos = dm.tokenizer.eos_id
    conversations = [p for p in train.pairs if len(p[0]) > 1]
    texts = [p for p in train.pairs if len(p[0]) == 1]
    assert len(conversations) == 12 and len(texts) == 3
    assert all(r[-1] == eos for _, r in conversations)
    assert all(len(r) == 16 for _, r in texts)
    with pytest.raises(DataError, match="pipelines vlm data"):
        ChatTextDataModule(root=str(chat_text_root / "absent")).dataset("train")


def test_heldout_tasks_are_unseen_combinations():
    train = {t.key for t in make_tasks(300, "train")}
    heldout = [t for t in make_tasks(40, "heldout")]
    assert not train & {t.key for t in heldout}
    assert {t.family for t in heldout} == {"count", "repeat", "capital", "plural", "add", "alphabet"}
    count = next(t for t in heldout if t.family == "count")
    start, end = (int(w.strip(",.")) for w in count.prompt.split()[4:7:2])
    assert count.check(", ".join(str(i) for i in range(start, end + 1)))
    assert not count.check(", ".join(str(i) for i in range(start, end)))
    assert all(t.check(t.truth) for t in heldout), "every family's check accepts its true answer"
    assert not any(t.check("I don't know.") for t in heldout)


def test_demo_stage_adapts_and_decodes(tmp_path):
    from pipelines.demo import run_demo

    run_demo(tmp_path, ["nbdiff"])
    metrics = json.loads((tmp_path / "demo_metrics.json").read_text())["nbdiff"]["metrics"]
    assert 0 < metrics["tokens_per_forward"] <= metrics["tokens_per_denoise_forward"]
    assert (tmp_path / "nbdiff" / "stages" / "B4" / "diffusion.json").exists()
    assert "Block diffusion" in (tmp_path / "REPORT.md").read_text()
