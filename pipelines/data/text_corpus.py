"""Plain text for training a language model from scratch: a corpus folder and its DataModule.

A corpus folder holds `train.txt`, `val.txt` (each one stream of text) and the BPE tokenizer trained
on `train.txt` (`tokenizer.json` + `tokenizer_config.json`). `pipelines data text` writes one, either
from your own two text files or from real English that ships with Python and this project's
dependencies, so it needs no download: CPython's language-reference topics plus the docstrings of the
standard library, numpy, torch, matplotlib, pandas and sympy (about 16 MB, 5M tokens of 4096-BPE).
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import json
import sysconfig
import zlib
from pathlib import Path

import torch
from torch.utils.data import Dataset

from pipelines.data.datamodule import BaseDataModule
from pipelines.data.errors import DataError, require_file
from pipelines.data.text import TextTokenizer

SPLIT_FILES = {"train": "train.txt", "val": "val.txt", "test": "val.txt"}
MIN_DOCSTRING_CHARS = 200  # shorter ones are mostly one-line summaries, not prose


# Installed packages whose docstrings join the bundled corpus (all pinned or pulled in by this
# project's dependencies); one that is not installed is skipped and the manifest says so.
DOC_PACKAGES = ("numpy", "torch", "matplotlib", "pandas", "sympy")


def python_docs_documents(split: str, packages: tuple[str, ...] = DOC_PACKAGES) -> list[str]:
    """Documents of the bundled-Python corpus: CPython's reference topics ("val": every fifth, as
    `reference_manual_text("heldout")`), then the distinct docstrings of the standard library and
    `packages` ("val": those whose CRC-32 is 0 mod 5). A text that occurs twice is kept once."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    from pydoc_data.topics import topics

    held_out = split == "val"
    names = sorted(topics)
    train_topics = {topics[name] for i, name in enumerate(names) if i % 5}
    documents = [topics[name] for i, name in enumerate(names) if (i % 5 == 0) == held_out]
    if held_out:  # a few topics are one text under two names: keep those out of validation
        documents = [doc for doc in documents if doc not in train_topics]
    seen = set(documents) | train_topics
    for root in [Path(sysconfig.get_paths()["stdlib"])] + [p for p in map(package_root, packages) if p]:
        for doc in docstrings(root):
            if doc not in seen and (zlib.crc32(doc.encode()) % 5 == 0) == held_out:
                documents.append(doc)
            seen.add(doc)
    return list(dict.fromkeys(documents))


def package_root(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


def docstrings(root: Path) -> list[str]:
    """Module/class/function docstrings of the sources under `root` (tests, IDLE and nested
    site-packages excluded), in file order; the exact set depends on the installed versions."""
    skip = {"test", "tests", "testing", "idlelib", "site-packages", "dist-packages", "lib2to3"}
    docs = []
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few stdlib files are deliberately not valid Python 3
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= MIN_DOCSTRING_CHARS:
                    docs.append(doc)
    return docs


def write_text_corpus(out: Path, vocab_size: int = 4096, train_file: Path | None = None,
                      val_file: Path | None = None) -> dict:
    """Write a corpus folder; without files, the bundled-Python corpus. Returns its sizes."""
    if (train_file is None) != (val_file is None):
        raise DataError("give both --train_file and --val_file, or neither (for the bundled corpus)")
    if train_file is None:
        train, val = ("\n\n".join(python_docs_documents(s)) for s in ("train", "val"))
        source = {"bundled": ["pydoc_data.topics", "stdlib"] + [p for p in DOC_PACKAGES if package_root(p)],
                  "versions": {p: importlib.metadata.version(p) for p in DOC_PACKAGES if package_root(p)}}
    else:
        train, val = (require_file(f, "text file").read_text(encoding="utf-8") for f in (train_file, val_file))
        source = {"train_file": str(train_file), "val_file": str(val_file)}
    if not train.strip() or not val.strip():
        raise DataError("the train and validation text must both be non-empty")
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text(train, encoding="utf-8")
    (out / "val.txt").write_text(val, encoding="utf-8")
    chunks = [train[i:i + 10_000] for i in range(0, len(train), 10_000)]
    tokenizer = TextTokenizer.train_bpe(chunks, vocab_size=vocab_size)
    tokenizer.save_pretrained(out)
    sizes = {"train_chars": len(train), "val_chars": len(val), "vocab_size": tokenizer.vocab_size,
             "train_tokens": len(tokenizer.encode(train)), "val_tokens": len(tokenizer.encode(val)), "source": source}
    (out / "corpus.json").write_text(json.dumps(sizes, indent=2))
    return sizes


class TokenWindows(Dataset):
    """Non-overlapping windows of `seq_len + 1` tokens (inputs and their next-token targets)."""

    def __init__(self, ids: torch.Tensor, seq_len: int) -> None:
        self.ids, self.seq_len = ids, seq_len
        self.n = (len(ids) - 1) // seq_len

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        start = index * self.seq_len
        return self.ids[start:start + self.seq_len + 1]


class TextCorpusDataModule(BaseDataModule):
    """Next-token windows over a corpus folder written by `pipelines data text` (or your own).

    Args:
        root: The corpus folder (train.txt, val.txt, tokenizer files).
        seq_len: Tokens per training window.
        batch_size: Windows per batch.
    """

    def __init__(self, root: str = "runs/data/text", seq_len: int = 256, batch_size: int = 16,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        self.seq_len = seq_len
        self._tokenizer: TextTokenizer | None = None

    @property
    def tokenizer(self) -> TextTokenizer:
        if self._tokenizer is None:
            if not self.root.is_dir():
                raise DataError(f"corpus folder {self.root} does not exist; write one with "
                                f"`pipelines data text --out {self.root}`")
            self._tokenizer = TextTokenizer.from_pretrained(self.root)
        return self._tokenizer

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    def build_dataset(self, split: str) -> Dataset:
        if split not in SPLIT_FILES:
            raise DataError(f"TextCorpusDataModule has no {split!r} split")
        tokenizer = self.tokenizer
        text = require_file(self.root / SPLIT_FILES[split], f"{split} text").read_text(encoding="utf-8")
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        windows = TokenWindows(ids, self.seq_len)
        if len(windows) == 0:
            raise DataError(f"{self.root / SPLIT_FILES[split]} has {len(ids)} tokens, fewer than one window of "
                            f"seq_len + 1 = {self.seq_len + 1}")
        return windows
