import os

import pytest

# Lightning's "tip" banners and Ray's usage stats only add noise (and network attempts) in tests.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    """A small synthetic image-folder dataset shared by the CLI and config tests."""
    from pipelines.data.synth_shapes import write_shapes_dataset

    return write_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n_train=64, n_val=32, seed=0)


@pytest.fixture(scope="session")
def chat_text_root(tmp_path_factory):
    """A few conversations and some real text in the `pipelines vlm data` layout (no AR model needed)."""
    import json

    from pipelines.data.text import reference_manual_text
    from vlm.instruct import conversation, make_tasks

    root = tmp_path_factory.mktemp("data") / "chat_text"
    root.mkdir()
    for split, n in (("train", 12), ("heldout", 6)):
        items = [conversation(t.key, t.prompt, t.truth) for t in make_tasks(n, split)]
        (root / f"{split}.json").write_text(json.dumps(items))
        (root / f"text_{split}.txt").write_text(reference_manual_text(split)[:4000])
    return root


@pytest.fixture(scope="session")
def text_corpus_root(tmp_path_factory):
    """A `pipelines data text` folder over a slice of real text, with a 300-token BPE."""
    from pipelines.data.text import reference_manual_text
    from pipelines.data.text_corpus import write_text_corpus

    source = tmp_path_factory.mktemp("data")
    text = reference_manual_text("heldout")
    (source / "train.txt").write_text(text[:40_000])
    (source / "val.txt").write_text(text[40_000:50_000])
    root = source / "corpus"
    write_text_corpus(root, vocab_size=300, train_file=source / "train.txt", val_file=source / "val.txt")
    return root
