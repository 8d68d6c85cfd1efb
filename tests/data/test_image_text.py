import numpy as np
import pytest

from pipelines.data.errors import DataError
from pipelines.data.image import load_image, scan_image_folder, write_image
from pipelines.data.text import TextTokenizer


def test_image_roundtrip_is_lossless_for_png(tmp_path):
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    path = write_image(tmp_path / "x.png", image)
    np.testing.assert_array_equal(load_image(path), image)
    assert load_image(path, size=16, grayscale=True).shape == (16, 16)


def test_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.png"):
        load_image(tmp_path / "gone.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="no class sub-folders"):
        scan_image_folder(tmp_path)


def test_scan_image_folder_assigns_sorted_class_ids(tmp_path):
    for cls in ("zebra", "ant"):
        write_image(tmp_path / cls / "0.png", np.zeros((4, 4, 3), np.uint8))
    paths, labels, classes = scan_image_folder(tmp_path)
    assert classes == ["ant", "zebra"] and labels == [0, 1] and paths[0].parent.name == "ant"


TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "def f(x):\n    return x ** 2  # squares\n",
    "naïve café — 東京 🚀 emoji",
    "spaces    and\ttabs\n\n\nnewlines   ",
]


@pytest.fixture(scope="module")
def tokenizer():
    return TextTokenizer.train_bpe(TEXTS * 20, vocab_size=300)


@pytest.mark.parametrize("text", TEXTS + ["unseen words: Zürich, ξ, 42!"])
def test_bpe_round_trip_is_exact(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_and_padding(tokenizer, tmp_path):
    ids = tokenizer.encode("fox", add_bos=True, add_eos=True)
    assert ids[0] == tokenizer.bos_id and ids[-1] == tokenizer.eos_id
    batch, mask = tokenizer.pad([[5, 6, 7], [8]], side="left")
    assert batch.tolist() == [[5, 6, 7], [tokenizer.pad_id, tokenizer.pad_id, 8]]
    assert mask.tolist() == [[True] * 3, [False, False, True]]
    batch, mask = tokenizer.pad([[5, 6, 7], [8]], side="right")
    assert batch[1].tolist() == [8, tokenizer.pad_id, tokenizer.pad_id]
    reloaded = TextTokenizer.from_file(tokenizer.save(tmp_path / "tok.json"), bos_token="<bos>", eos_token="<eos>",
                                       pad_token="<pad>")
    assert reloaded.encode(TEXTS[2]) == tokenizer.encode(TEXTS[2])


def test_tokenizer_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataError, match="bad.json"):
        TextTokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(DataError, match="<nope>"):
        TextTokenizer(TextTokenizer.train_bpe(["abc"], vocab_size=260).tokenizer, bos_token="<nope>")
