"""Image classification data in the class-per-folder layout, with optional train/val/test sub-folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from pipelines.data.datamodule import BaseDataModule, split_indices
from pipelines.data.image import load_image, scan_image_folder


class ImageFolderDataset(Dataset):
    """(image [C, H, W] float in [-1, 1], label) pairs from a list of files."""

    def __init__(self, paths: list[Path], labels: list[int], image_size: int, grayscale: bool = False) -> None:
        self.paths, self.labels = paths, labels
        self.image_size, self.grayscale = image_size, grayscale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = load_image(self.paths[index], size=self.image_size, grayscale=self.grayscale)
        if image.ndim == 2:
            image = image[..., None]
        tensor = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 127.5 - 1.0
        return tensor, self.labels[index]


class ImageFolderDataModule(BaseDataModule):
    """Reads `root/{train,val,test}/<class>/*.png`, or `root/<class>/*.png` split by `val_fraction`."""

    def __init__(self, root: str, image_size: int = 32, grayscale: bool = False, val_fraction: float = 0.2,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        self.root = Path(root)
        self.image_size, self.grayscale, self.val_fraction = image_size, grayscale, val_fraction
        self.classes: list[str] | None = None  # read from disk in setup(), not at config time

    @property
    def has_split_folders(self) -> bool:
        return (self.root / "train").is_dir()

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def _scan_classes(self) -> list[str]:
        if self.classes is None:
            if not self.root.is_dir():
                raise FileNotFoundError(
                    f"image folder not found: {self.root} (make a synthetic one with "
                    f"`pipelines data synth shapes --out {self.root}`)"
                )
            self.classes = scan_image_folder(self.root / "train" if self.has_split_folders else self.root)[2]
        return self.classes

    def setup(self, stage: str | None = None) -> None:
        self._scan_classes()  # before the model's setup(), which checks the class count
        super().setup(stage)

    def build_dataset(self, split: str) -> ImageFolderDataset:
        self._scan_classes()
        if self.has_split_folders:
            folder = self.root / ("val" if split == "predict" else split)
            paths, labels, classes = scan_image_folder(folder)
            if classes != self.classes:
                raise ValueError(f"{folder} has classes {classes}, but {self.root / 'train'} has {self.classes}")
        else:
            paths, labels, _ = scan_image_folder(self.root)
            train, val = split_indices(len(paths), self.val_fraction, self.seed)
            keep = train if split == "train" else val
            paths, labels = [paths[i] for i in keep], [labels[i] for i in keep]
        return ImageFolderDataset(paths, labels, self.image_size, self.grayscale)
