"""The base LightningDataModule every domain extends: splits, seeded loaders, one collate hook.

A domain implements `build_dataset(split)` and, if its samples need padding, `collate`. Everything
about reproducibility (split assignment, shuffling order, per-worker RNG state) lives here once.
"""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

SPLITS = ("train", "val", "test", "predict")
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}


def seed_worker(worker_id: int) -> None:
    """Give each loader worker its own numpy/random state derived from torch's per-worker seed."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/val partition of range(n); the same seed always gives the same split."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(n * val_fraction))
    return sorted(order[n_val:]), sorted(order[:n_val])


class BaseDataModule(L.LightningDataModule):
    """Builds one dataset per split on demand and serves deterministic data loaders."""

    def __init__(self, batch_size: int = 8, num_workers: int = 0, seed: int = 0, pin_memory: bool = False) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.datasets: dict[str, Dataset] = {}

    def build_dataset(self, split: str) -> Dataset:
        """Return the dataset of `split` (one of train/val/test/predict)."""
        raise NotImplementedError(f"{type(self).__name__} must implement build_dataset(split)")

    def collate(self, samples: list) -> object:
        return torch.utils.data.default_collate(samples)

    def setup(self, stage: str | None = None) -> None:
        for split in STAGE_SPLITS.get(stage or "fit", ()):
            if split not in self.datasets:
                self.datasets[split] = self.build_dataset(split)

    def dataset(self, split: str) -> Dataset:
        if split not in self.datasets:
            self.datasets[split] = self.build_dataset(split)
        return self.datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(split)
        if len(dataset) == 0:  # type: ignore[arg-type]
            raise ValueError(f"{type(self).__name__}: the {split} split is empty")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            collate_fn=self.collate,
            pin_memory=self.pin_memory,
            worker_init_fn=seed_worker,
            # A split-specific generator: shuffling and worker seeds repeat run to run.
            generator=torch.Generator().manual_seed(self.seed + SPLITS.index(split)),
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", shuffle=False)
