"""Video frames through OpenCV: open, seek by timestamp, crop by a normalised box, resize, grayscale."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from pipelines.data.errors import DataError, require_file


class VideoReader:
    """Random access to the frames of one video file, addressed by timestamp in seconds.

    Frames come back as uint8 RGB arrays [H, W, 3]. Seeking goes by frame index (timestamp × fps):
    OpenCV's millisecond seek is unreliable on many containers, its frame seek is exact for the
    constant-frame-rate files that AVA preprocessing and our writers produce.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = require_file(path, "video")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise DataError(f"cannot decode video {self.path}: OpenCV could not open it (corrupt or unsupported)")
        self.fps = float(self._cap.get(cv2.CAP_PROP_FPS))
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.width = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        self.height = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.fps <= 0 or self.frame_count <= 0 or self.width <= 0:
            self.close()
            raise DataError(f"cannot decode video {self.path}: no frames or no frame rate in the container")
        self._next_index = 0

    @property
    def duration(self) -> float:
        return self.frame_count / self.fps

    def index_at(self, timestamp: float) -> int:
        """The frame shown at `timestamp` seconds (nearest frame start)."""
        if not math.isfinite(timestamp) or timestamp < -0.5 / self.fps or timestamp > self.duration:
            raise DataError(f"{self.path}: timestamp {timestamp:.3f}s is outside the video (0–{self.duration:.3f}s)")
        return min(max(round(timestamp * self.fps), 0), self.frame_count - 1)

    def frame(self, index: int) -> np.ndarray:
        if not 0 <= index < self.frame_count:
            raise DataError(f"{self.path}: frame {index} out of range (0–{self.frame_count - 1})")
        if index != self._next_index:  # sequential reads skip the (slow) seek
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        ok, bgr = self._cap.read()
        if not ok:
            raise DataError(f"cannot decode frame {index} of video {self.path} (truncated or corrupt)")
        self._next_index = index + 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def frame_at(self, timestamp: float) -> np.ndarray:
        return self.frame(self.index_at(timestamp))

    def frames(self, start: float = 0.0, end: float | None = None) -> Iterator[np.ndarray]:
        """Frames from `start` up to (not including) `end` seconds, decoded sequentially."""
        first = self.index_at(start)
        last = self.frame_count if end is None else min(self.frame_count, round(end * self.fps))
        for index in range(first, last):
            yield self.frame(index)

    def close(self) -> None:
        self._cap.release()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def crop_box(
    frame: np.ndarray,
    box: tuple[float, float, float, float],
    size: int | tuple[int, int] | None = None,
    grayscale: bool = False,
) -> np.ndarray:
    """Cut the normalised box (x1, y1, x2, y2 in [0, 1]) out of an RGB frame, optionally resize/grey it.

    Boxes are validated rather than clipped silently: an out-of-range box usually means the CSV's
    columns were read in the wrong order, which clipping would hide.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in (x1, y1, x2, y2)):
        raise DataError(f"box {box} is outside the normalised range [0, 1]")
    if x2 <= x1 or y2 <= y1:
        raise DataError(f"box {box} is empty or inverted (need x1 < x2 and y1 < y2)")
    h, w = frame.shape[:2]
    left, right = int(math.floor(x1 * w)), max(int(math.ceil(x2 * w)), int(math.floor(x1 * w)) + 1)
    top, bottom = int(math.floor(y1 * h)), max(int(math.ceil(y2 * h)), int(math.floor(y1 * h)) + 1)
    crop = frame[top:min(bottom, h), left:min(right, w)]
    if grayscale:
        crop = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if size is not None:
        wh = (size, size) if isinstance(size, int) else (size[1], size[0])
        crop = cv2.resize(crop, wh, interpolation=cv2.INTER_AREA if crop.shape[1] > wh[0] else cv2.INTER_LINEAR)
    return crop


def write_video(path: str | Path, frames: list[np.ndarray] | np.ndarray, fps: float) -> Path:
    """Write RGB uint8 frames to an mp4 (mp4v) with OpenCV; used by synthetic data and tests."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    if not frames:
        raise DataError(f"no frames to write to {path}")
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise DataError(f"OpenCV cannot write video {path}")
    try:
        for frame in frames:
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return path


def write_video_with_audio(
    path: str | Path,
    frames: list[np.ndarray] | np.ndarray,
    fps: int,
    audio: np.ndarray,
    sample_rate: int,
) -> Path:
    """Mux RGB frames (H.264) and mono float audio (AAC) into one container with PyAV."""
    import av  # local: only writers of test/synthetic media need it here

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = list(frames)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("libx264", rate=fps)
        vstream.width, vstream.height, vstream.pix_fmt = w, h, "yuv420p"
        astream = container.add_stream("aac", rate=sample_rate)
        astream.layout = "mono"
        for frame in frames:
            for packet in vstream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in vstream.encode():
            container.mux(packet)
        samples = np.asarray(audio, dtype=np.float32).reshape(1, -1)
        chunk = 1024
        for offset in range(0, samples.shape[1], chunk):
            aframe = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[:, offset:offset + chunk]),
                                                format="fltp", layout="mono")
            aframe.sample_rate = sample_rate
            aframe.pts = offset
            for packet in astream.encode(aframe):
                container.mux(packet)
        for packet in astream.encode():
            container.mux(packet)
    return path
