import torch
from torch.utils.data import Dataset

from pipelines.data import BaseDataModule, ImageFolderDataModule, split_indices


class RandomDraws(Dataset):
    """Each item draws from torch's RNG, so the values reveal how workers were seeded."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.tensor([i, torch.randint(0, 10**6, ()).item()])


class RandomDrawsModule(BaseDataModule):
    def build_dataset(self, split):
        return RandomDraws()


def epoch(dm):
    return torch.cat(list(dm.train_dataloader())).tolist()


def test_split_is_a_deterministic_partition():
    train, val = split_indices(100, 0.2, seed=3)
    assert len(val) == 20 and sorted(train + val) == list(range(100))
    assert split_indices(100, 0.2, seed=3) == (train, val)
    assert split_indices(100, 0.2, seed=4) != (train, val)


def test_loaders_repeat_exactly_with_workers():
    first = epoch(RandomDrawsModule(batch_size=4, num_workers=2, seed=7))
    second = epoch(RandomDrawsModule(batch_size=4, num_workers=2, seed=7))
    other = epoch(RandomDrawsModule(batch_size=4, num_workers=2, seed=8))
    assert first == second and first != other
    assert sorted(row[0] for row in first) == list(range(16))


def test_image_folder_datamodule(shapes_root):
    dm = ImageFolderDataModule(str(shapes_root), image_size=32, batch_size=8)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (8, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    assert dm.num_classes == 4 and len(dm.datasets["val"]) == 32


def test_missing_root_names_the_fix(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="pipelines data synth shapes"):
        ImageFolderDataModule(str(tmp_path / "nowhere")).setup("fit")
