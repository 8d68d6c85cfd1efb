"""Shared data layer: readers for video, audio, images, text and episodes, and the base DataModule."""

from pipelines.data.datamodule import BaseDataModule, seed_worker, split_indices
from pipelines.data.errors import DataError
from pipelines.data.image_folder import ImageFolderDataModule, ImageFolderDataset

__all__ = [
    "BaseDataModule",
    "DataError",
    "ImageFolderDataModule",
    "ImageFolderDataset",
    "seed_worker",
    "split_indices",
]
