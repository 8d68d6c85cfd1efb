import numpy as np
import pytest

from pipelines.data.errors import DataError
from pipelines.data.video import VideoReader, crop_box, write_video

FPS, N, H, W = 25, 20, 48, 64


def frame_value(i: int) -> int:
    return 10 + 12 * i  # a distinct flat grey level per frame


def decoded_index(frame: np.ndarray) -> int:
    """Which frame this is: the nearest grey level (lossy coding shifts levels by a few units)."""
    return round((float(frame.mean()) - 10) / 12)


@pytest.fixture(scope="module")
def video_path(tmp_path_factory):
    frames = [np.full((H, W, 3), frame_value(i), np.uint8) for i in range(N)]
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", frames, fps=FPS)


def test_header_and_frame_count(video_path):
    with VideoReader(video_path) as video:
        assert video.frame_count == N
        assert video.fps == pytest.approx(FPS)
        assert (video.width, video.height) == (W, H)
        assert video.duration == pytest.approx(N / FPS)
        assert sum(1 for _ in video.frames()) == N


@pytest.mark.parametrize("index", [0, 7, 19, 3])  # the last one forces a backward seek
def test_seek_by_timestamp_returns_that_frame(video_path, index):
    with VideoReader(video_path) as video:
        video.frame_at(0.5)  # move the decoder somewhere else first
        frame = video.frame_at(index / FPS)
    assert decoded_index(frame) == index


def test_frames_window(video_path):
    with VideoReader(video_path) as video:
        indices = [decoded_index(f) for f in video.frames(start=0.2, end=0.4)]
    assert indices == [5, 6, 7, 8, 9]


def test_crop_box_matches_array_slicing():
    frame = np.random.default_rng(0).integers(0, 255, (100, 200, 3), dtype=np.uint8)
    crop = crop_box(frame, (0.25, 0.1, 0.75, 0.6))
    np.testing.assert_array_equal(crop, frame[10:60, 50:150])
    small = crop_box(frame, (0.25, 0.1, 0.75, 0.6), size=112, grayscale=True)
    assert small.shape == (112, 112) and small.dtype == np.uint8


@pytest.mark.parametrize("box", [(0.5, 0.1, 1.3, 0.6), (-0.2, 0, 0.5, 0.5), (0.6, 0.1, 0.4, 0.5), (0, 0, float("nan"), 1)])
def test_out_of_range_box_is_refused(box):
    with pytest.raises(DataError, match="box"):
        crop_box(np.zeros((10, 10, 3), np.uint8), box)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        VideoReader(tmp_path / "nope.mp4")


def test_corrupt_file(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(DataError, match="bad.mp4"):
        VideoReader(bad)
    assert bad.read_bytes().startswith(b"\x00\x01garbage")  # the input is left as it was


def test_timestamp_outside_video(video_path):
    with VideoReader(video_path) as video, pytest.raises(DataError, match="outside the video"):
        video.frame_at(10.0)
