"""The text corpus folder and its next-token windows."""

import pytest
import torch

from pipelines.data.errors import DataError
from pipelines.data.text_corpus import (
    TextCorpusDataModule,
    TokenWindows,
    python_docs_documents,
    write_text_corpus,
)


def test_windows_tile_the_token_stream_with_shifted_targets():
    ids = torch.arange(23)
    windows = TokenWindows(ids, seq_len=5)
    assert len(windows) == 4  # (23 - 1) // 5: every input position has a next token
    for i in range(len(windows)):
        w = windows[i]
        assert len(w) == 6
        assert torch.equal(w, ids[5 * i:5 * i + 6])  # inputs w[:-1], targets w[1:] = the next tokens
    inputs = torch.cat([windows[i][:-1] for i in range(len(windows))])
    assert torch.equal(inputs, ids[:20])  # no token skipped or repeated as an input


def test_corpus_round_trip_and_batches(text_corpus_root):
    dm = TextCorpusDataModule(root=str(text_corpus_root), seq_len=32, batch_size=3)
    assert dm.vocab_size == 300
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (3, 33) and batch.dtype == torch.long
    val_text = (text_corpus_root / "val.txt").read_text()
    first = dm.dataset("val")[0]
    assert val_text.startswith(dm.tokenizer.decode(first.tolist()))  # byte-level BPE round-trips the text


def test_bundled_corpus_splits_are_disjoint_real_text():
    # Standard library only (the installed packages add ~10x more of the same kind, slowly).
    train, val = python_docs_documents("train", packages=()), python_docs_documents("val", packages=())
    assert len(train) > 1000 and len(val) > 200
    assert not set(train) & set(val)
    assert 0.1 < len(val) / (len(train) + len(val)) < 0.3
    with pytest.raises(ValueError, match="split"):
        python_docs_documents("test")


def test_corpus_errors_name_the_problem(tmp_path):
    (tmp_path / "train.txt").write_text("some text " * 50)
    with pytest.raises(DataError, match="both --train_file and --val_file"):
        write_text_corpus(tmp_path / "out", train_file=tmp_path / "train.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="non-empty"):
        write_text_corpus(tmp_path / "out", train_file=tmp_path / "train.txt", val_file=tmp_path / "empty.txt")
    with pytest.raises(DataError, match="pipelines data text --out"):
        TextCorpusDataModule(root=str(tmp_path / "missing")).setup("fit")


def test_too_short_split_is_refused(tmp_path, text_corpus_root):
    import shutil

    root = tmp_path / "corpus"
    shutil.copytree(text_corpus_root, root)
    (root / "val.txt").write_text("tiny")
    with pytest.raises(DataError, match="fewer than one window"):
        TextCorpusDataModule(root=str(root), seq_len=64).setup("fit")
    (root / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match="val text"):
        TextCorpusDataModule(root=str(root), seq_len=64).setup("fit")
