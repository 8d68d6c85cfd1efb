"""(prompt, response) token pairs for block-diffusion training: chat conversations plus real text.

A batch is a plain list of pairs; the LightningModule lays them out and noises them, because the
layout depends on the block size, which the curriculum changes mid-run.
"""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from pipelines.data.datamodule import BaseDataModule
from pipelines.data.errors import DataError, require_file
from vlm.instruct import chat_prompt, read_conversations

DOC_START = "<|endoftext|>"  # a real-text chunk is "continued" from the document separator


class PairDataset(Dataset):
    def __init__(self, pairs: list[tuple[list[int], list[int]]]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[list[int], list[int]]:
        return self.pairs[index]


class ChatTextDataModule(BaseDataModule):
    """Reads a folder written by `pipelines vlm data` (or your own in the same layout):
    train.json / heldout.json (LLaVA-style conversations) and text_train.txt / text_heldout.txt.

    Args:
        root: The data folder.
        tokenizer: "smollm2", a .gguf file or a saved tokenizer folder (must match the model's source).
        max_response_tokens: Longer answers are cut there and lose their EOS (reported, not hidden).
        text_chunk_tokens: Real text is cut into chunks of this many tokens.
        text_chunks: How many real-text chunks join the train split (val: a quarter as many).
    """

    def __init__(self, root: str = "runs/data/nbdiff", tokenizer: str = "smollm2", max_response_tokens: int = 96,
                 text_chunk_tokens: int = 64, text_chunks: int = 200, batch_size: int = 8, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        self.tokenizer_source = tokenizer
        self.max_response_tokens = max_response_tokens
        self.text_chunk_tokens = text_chunk_tokens
        self.text_chunks = text_chunks
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from vlm.model import load_tokenizer

            self._tokenizer = load_tokenizer(self.tokenizer_source)
        return self._tokenizer

    def build_dataset(self, split: str) -> Dataset:
        name = {"train": "train", "val": "heldout", "test": "heldout"}.get(split)
        if name is None:
            raise DataError(f"ChatTextDataModule has no {split!r} split")
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist; write one with `pipelines vlm data --out {self.root}`")
        tok = self.tokenizer
        eos = tok.eos_id
        pairs = []
        for prompt, answer in read_conversations(self.root / f"{name}.json"):
            response = tok.encode(answer) + [eos]
            pairs.append((chat_prompt(tok, prompt), response[: self.max_response_tokens]))
        text = require_file(self.root / f"text_{name}.txt", "real-text file").read_text()
        ids = tok.encode(text)
        n_chunks = self.text_chunks if split == "train" else max(1, self.text_chunks // 4)
        doc_start = tok.tokenizer.token_to_id(DOC_START)
        if doc_start is None:
            raise DataError(f"the tokenizer has no {DOC_START} token to start real-text chunks with")
        size = self.text_chunk_tokens
        for start in range(0, min(len(ids) - size, n_chunks * size), size):
            pairs.append(([doc_start], ids[start:start + size]))
        return PairDataset(pairs)

    def collate(self, samples: list) -> list[tuple[list[int], list[int]]]:
        return list(samples)
