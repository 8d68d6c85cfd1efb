import os

import pytest

# Lightning's "tip" banners and Ray's usage stats only add noise (and network attempts) in tests.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small synthetic image-folder dataset shared by the CLI and config tests."""
    from pipelines.data.synth_shapes import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=64, n_val=32, seed=0)
