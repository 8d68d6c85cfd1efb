"""Robot episodes in the LeRobotDataset layout (v3.0 written and read, v2.1 read), via pyarrow + PyAV.

    meta/info.json  meta/stats.json  meta/tasks.parquet  meta/episodes/chunk-000/file-000.parquet
    data/chunk-000/file-000.parquet  videos/<camera>/chunk-000/file-000.mp4

In v3.0 many episodes share one parquet and one mp4; an episode's frames sit at
`from_timestamp + timestamp` in its video file. Users can bring datasets recorded with LeRobot
without installing it. Our writer puts every episode in file-000 of chunk-000 (LeRobot rolls files
over at 100 MB of data / 200 MB of video, far beyond what our generators make); the reader follows
whatever chunk/file indices the metadata names.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from pipelines.data.errors import DataError, require_file

V3_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
V3_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
V3_EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INDEX_FEATURES = {
    "timestamp": "float32",
    "frame_index": "int64",
    "episode_index": "int64",
    "index": "int64",
    "task_index": "int64",
}
STATS = ("min", "max", "mean", "std", "count")


# ----------------------------------------------------------------------------------------- writing


@dataclass
class _Episode:
    task: str
    length: int
    columns: dict[str, np.ndarray]
    videos: dict[str, np.ndarray] = field(default_factory=dict)


class EpisodeWriter:
    """Accumulate episodes, then `finalize()` writes a LeRobot v3.0 dataset under `root`.

    `features` describes the per-frame vectors, e.g. {"observation.state": ["x", "y", "z", "grip"],
    "action": ["dx", "dy", "dz", "grip"]}; `cameras` maps a camera key to (height, width).
    """

    def __init__(self, root: str | Path, fps: int, features: dict[str, Sequence[str]],
                 cameras: dict[str, tuple[int, int]] | None = None, robot_type: str | None = None,
                 codec: str = "libx264", gop: int = 2) -> None:
        self.root = Path(root)
        if (self.root / "meta" / "info.json").exists():
            raise FileExistsError(f"{self.root} already holds a dataset (meta/info.json); choose another folder")
        for key in [*features, *(cameras or {})]:
            if "/" in key:
                raise ValueError(f"feature name {key!r} must not contain '/'")
        self.fps, self.features, self.cameras = int(fps), dict(features), dict(cameras or {})
        self.robot_type, self.codec, self.gop = robot_type, codec, gop
        self.episodes: list[_Episode] = []

    def add_episode(self, task: str, frames: dict[str, np.ndarray], images: dict[str, np.ndarray] | None = None) -> None:
        """frames: {feature: [T, dim] array}; images: {camera: [T, H, W, 3] uint8}."""
        images = images or {}
        if set(frames) != set(self.features):
            raise DataError(f"episode has features {sorted(frames)}, expected {sorted(self.features)}")
        if set(images) != set(self.cameras):
            raise DataError(f"episode has cameras {sorted(images)}, expected {sorted(self.cameras)}")
        lengths = {len(v) for v in [*frames.values(), *images.values()]}
        if len(lengths) != 1 or 0 in lengths:
            raise DataError(f"episode arrays must share one non-zero length, got lengths {sorted(lengths)}")
        columns = {}
        for key, names in self.features.items():
            value = np.asarray(frames[key], dtype=np.float32)
            if value.ndim != 2 or value.shape[1] != len(names):
                raise DataError(f"feature {key!r} must have shape [T, {len(names)}], got {value.shape}")
            columns[key] = value
        for cam, (h, w) in self.cameras.items():
            if images[cam].shape[1:] != (h, w, 3) or images[cam].dtype != np.uint8:
                raise DataError(f"camera {cam!r} needs uint8 [T, {h}, {w}, 3], got {images[cam].dtype} {images[cam].shape}")
        self.episodes.append(_Episode(task, lengths.pop(), columns, dict(images)))

    def finalize(self) -> Path:
        if not self.episodes:
            raise DataError("no episodes to write")
        tasks = list(dict.fromkeys(ep.task for ep in self.episodes))
        task_index = {t: i for i, t in enumerate(tasks)}
        (self.root / "meta").mkdir(parents=True, exist_ok=True)

        video_spans = {cam: self._write_video(cam) for cam in self.cameras}
        table, episode_rows, all_columns = self._data_table(task_index, video_spans)
        data_file = self.root / V3_DATA_PATH.format(chunk_index=0, file_index=0)
        data_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, data_file)

        episodes_file = self.root / V3_EPISODES_PATH.format(chunk_index=0, file_index=0)
        episodes_file.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(episode_rows), episodes_file)
        pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task")).to_parquet(
            self.root / "meta" / "tasks.parquet")

        stats = {key: _vector_stats(value) for key, value in all_columns.items()}
        for cam in self.cameras:
            stats[cam] = _image_stats(np.concatenate([ep.videos[cam] for ep in self.episodes]))
        _write_json(self.root / "meta" / "stats.json", stats)
        _write_json(self.root / "meta" / "info.json", self._info(len(tasks), sum(e.length for e in self.episodes)))
        return self.root

    def _data_table(self, task_index: dict[str, int], video_spans: dict[str, list[tuple[float, float]]]):
        columns: dict[str, list[np.ndarray]] = {k: [] for k in [*self.features, *INDEX_FEATURES]}
        rows, start = [], 0
        for ep_i, ep in enumerate(self.episodes):
            n = ep.length
            per_frame = {
                **ep.columns,
                "timestamp": (np.arange(n) / self.fps).astype(np.float32),
                "frame_index": np.arange(n, dtype=np.int64),
                "episode_index": np.full(n, ep_i, dtype=np.int64),
                "index": np.arange(start, start + n, dtype=np.int64),
                "task_index": np.full(n, task_index[ep.task], dtype=np.int64),
            }
            for key, value in per_frame.items():
                columns[key].append(value)
            row = {"episode_index": ep_i, "tasks": [ep.task], "length": n, "data/chunk_index": 0,
                   "data/file_index": 0, "dataset_from_index": start, "dataset_to_index": start + n}
            for cam, spans in video_spans.items():
                row |= {f"videos/{cam}/chunk_index": 0, f"videos/{cam}/file_index": 0,
                        f"videos/{cam}/from_timestamp": spans[ep_i][0], f"videos/{cam}/to_timestamp": spans[ep_i][1]}
            for key, value in per_frame.items():
                for stat, v in _vector_stats(value).items():
                    row[f"stats/{key}/{stat}"] = v
            row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0}
            rows.append(row)
            start += n
        merged = {k: np.concatenate(v) for k, v in columns.items()}
        arrays = {}
        for key, value in merged.items():
            if value.ndim == 2:
                arrays[key] = pa.FixedSizeListArray.from_arrays(pa.array(value.reshape(-1)), value.shape[1])
            else:
                arrays[key] = pa.array(value)
        table = pa.table(arrays)
        hf_features = {k: {"feature": {"dtype": "float32", "_type": "Value"}, "length": len(names),
                           "_type": "Sequence"} for k, names in self.features.items()}
        hf_features |= {k: {"dtype": dtype, "_type": "Value"} for k, dtype in INDEX_FEATURES.items()}
        table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": hf_features}})})
        return table, rows, merged

    def _write_video(self, cam: str) -> list[tuple[float, float]]:
        """Concatenate the camera's episodes into one mp4; return each episode's (from, to) seconds."""
        path = self.root / V3_VIDEO_PATH.format(video_key=cam, chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        h, w = self.cameras[cam]
        spans, frame_no = [], 0
        with av.open(str(path), "w") as container:
            stream = container.add_stream(self.codec, rate=self.fps)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"g": str(self.gop), "crf": "18"}
            for ep in self.episodes:
                first = frame_no
                for image in ep.videos[cam]:
                    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                    frame.pts = frame_no
                    for packet in stream.encode(frame):
                        container.mux(packet)
                    frame_no += 1
                spans.append((first / self.fps, frame_no / self.fps))
            for packet in stream.encode():
                container.mux(packet)
        return spans

    def _info(self, total_tasks: int, total_frames: int) -> dict:
        features: dict[str, dict] = {}
        for key, names in self.features.items():
            features[key] = {"dtype": "float32", "shape": [len(names)], "names": list(names)}
        for cam, (h, w) in self.cameras.items():
            features[cam] = {
                "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                "info": {"video.height": h, "video.width": w, "video.codec": "h264" if self.codec == "libx264"
                         else self.codec, "video.pix_fmt": "yuv420p", "video.is_depth_map": False,
                         "video.fps": self.fps, "video.channels": 3, "has_audio": False},
            }
        for key, dtype in INDEX_FEATURES.items():
            features[key] = {"dtype": dtype, "shape": [1], "names": None}
        return {
            "codebase_version": "v3.0", "robot_type": self.robot_type, "total_episodes": len(self.episodes),
            "total_frames": total_frames, "total_tasks": total_tasks, "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"}, "data_path": V3_DATA_PATH,
            "video_path": V3_VIDEO_PATH if self.cameras else None, "features": features,
        }


def _vector_stats(value: np.ndarray) -> dict[str, list]:
    value = value.reshape(len(value), -1).astype(np.float64)
    return {"min": value.min(0).tolist(), "max": value.max(0).tolist(), "mean": value.mean(0).tolist(),
            "std": value.std(0).tolist(), "count": [len(value)]}


def _image_stats(frames: np.ndarray) -> dict[str, list]:
    """Per-channel stats on the [0, 1] scale, shaped (3, 1, 1) as LeRobot stores them."""
    pixels = frames.reshape(-1, 3).astype(np.float64) / 255.0
    shaped = lambda v: [[[float(c)]] for c in v]  # noqa: E731
    return {"min": shaped(pixels.min(0)), "max": shaped(pixels.max(0)), "mean": shaped(pixels.mean(0)),
            "std": shaped(pixels.std(0)), "count": [len(frames)]}


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=4, ensure_ascii=False))


# ----------------------------------------------------------------------------------------- reading


@dataclass
class EpisodeInfo:
    index: int
    tasks: list[str]
    length: int
    dataset_from_index: int
    videos: dict[str, tuple[Path, float]]  # camera → (mp4 file, from_timestamp)


class EpisodeDataset(Dataset):
    """Frames of a LeRobot v3.0 or v2.1 dataset as flat dicts with LeRobot's keys.

    `delta_timestamps` asks for windows, e.g. {"action": [0, 1/fps, 2/fps]} for an action chunk;
    steps outside the episode repeat the edge frame and are flagged in `<key>_is_pad`.
    Video frames come back as float [3, H, W] in [0, 1] (LeRobot's convention).
    """

    def __init__(self, root: str | Path, delta_timestamps: dict[str, Sequence[float]] | None = None,
                 episodes: Sequence[int] | None = None, tolerance_s: float = 1e-4) -> None:
        self.root = Path(root)
        info_path = require_file(self.root / "meta" / "info.json", "dataset metadata")
        try:
            self.info = json.loads(info_path.read_text())
        except json.JSONDecodeError as err:
            raise DataError(f"{info_path} is not valid JSON: {err}") from err
        self.version = self.info.get("codebase_version")
        for key in ("fps", "features", "data_path"):
            if key not in self.info:
                raise DataError(f"{info_path} lacks the key {key!r}")
        self.fps = int(self.info["fps"])
        self.features = self.info["features"]
        self.video_keys = [k for k, f in self.features.items() if f.get("dtype") == "video"]
        self.tolerance_s = tolerance_s
        if self.version == "v3.0":
            self.tasks, all_episodes = self._read_v3_meta()
        elif self.version == "v2.1":
            self.tasks, all_episodes = self._read_v21_meta()
        else:
            raise DataError(f"{info_path}: unsupported codebase_version {self.version!r} (need v3.0 or v2.1)")
        wanted = set(episodes) if episodes is not None else None
        self.episodes = [e for e in all_episodes if wanted is None or e.index in wanted]
        self._by_index = {e.index: e for e in self.episodes}
        self._columns = self._read_frames()
        self.delta_timestamps = dict(delta_timestamps or {})
        unknown = set(self.delta_timestamps) - set(self.features)
        if unknown:
            raise DataError(f"delta_timestamps names unknown features {sorted(unknown)}")
        self._decoders: dict[Path, _VideoDecoder] = {}

    # -- metadata
    def _read_v3_meta(self) -> tuple[list[str], list[EpisodeInfo]]:
        tasks_path = require_file(self.root / "meta" / "tasks.parquet", "task table")
        tasks_df = pd.read_parquet(tasks_path)
        if "task_index" not in tasks_df.columns:
            raise DataError(f"{tasks_path} has no task_index column (columns: {list(tasks_df.columns)})")
        names = tasks_df["task"] if "task" in tasks_df.columns else tasks_df.index.to_series()
        tasks = [str(t) for _, t in sorted(zip(tasks_df["task_index"], names, strict=True))]
        files = sorted((self.root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DataError(f"{self.root / 'meta' / 'episodes'} holds no episode parquet files")
        table = pa.concat_tables([pq.read_table(f) for f in files]).to_pylist()
        required = {"episode_index", "tasks", "length", "dataset_from_index"}
        missing = required - set(table[0])
        if missing:
            raise DataError(f"episode metadata in {files[0]} lacks columns {sorted(missing)}")
        episodes = []
        for row in sorted(table, key=lambda r: r["episode_index"]):
            videos = {}
            for cam in self.video_keys:
                path = self.root / self.info["video_path"].format(
                    video_key=cam, chunk_index=row[f"videos/{cam}/chunk_index"],
                    file_index=row[f"videos/{cam}/file_index"])
                videos[cam] = (path, float(row[f"videos/{cam}/from_timestamp"]))
            episodes.append(EpisodeInfo(row["episode_index"], list(row["tasks"]), row["length"],
                                        row["dataset_from_index"], videos))
        return tasks, episodes

    def _read_v21_meta(self) -> tuple[list[str], list[EpisodeInfo]]:
        task_rows = _read_jsonl(self.root / "meta" / "tasks.jsonl")
        tasks = [r["task"] for r in sorted(task_rows, key=lambda r: r["task_index"])]
        chunks = int(self.info.get("chunks_size", 1000))
        episodes, start = [], 0
        for row in sorted(_read_jsonl(self.root / "meta" / "episodes.jsonl"), key=lambda r: r["episode_index"]):
            ep = row["episode_index"]
            videos = {cam: (self.root / self.info["video_path"].format(
                episode_chunk=ep // chunks, video_key=cam, episode_index=ep), 0.0) for cam in self.video_keys}
            episodes.append(EpisodeInfo(ep, list(row["tasks"]), row["length"], start, videos))
            start += row["length"]
        return tasks, episodes

    def _data_files(self) -> list[Path]:
        if self.version == "v3.0":
            files = sorted((self.root / "data").glob("chunk-*/file-*.parquet"))
        else:
            chunks = int(self.info.get("chunks_size", 1000))
            files = [self.root / self.info["data_path"].format(episode_chunk=e.index // chunks, episode_index=e.index)
                     for e in self.episodes]
        if not files:
            raise DataError(f"{self.root / 'data'} holds no parquet files")
        return [require_file(f, "episode data") for f in files]

    def _read_frames(self) -> dict[str, np.ndarray]:
        """Load every non-video column into numpy, keeping the rows of the selected episodes, by index."""
        try:
            table = pa.concat_tables([pq.read_table(f) for f in self._data_files()], promote_options="default")
        except pa.ArrowInvalid as err:
            raise DataError(f"cannot read episode data under {self.root / 'data'}: {err}") from err
        wanted = [k for k, f in self.features.items() if f.get("dtype") not in ("video", "image", "string")]
        missing = [k for k in wanted if k not in table.column_names]
        if missing:
            raise DataError(f"episode data under {self.root / 'data'} lacks columns {missing}")
        columns = {k: _column_to_numpy(table.column(k)) for k in wanted}
        keep = np.isin(columns["episode_index"], [e.index for e in self.episodes])
        order = np.argsort(columns["index"][keep], kind="stable")
        return {k: v[keep][order] for k, v in columns.items()}

    # -- access
    def __len__(self) -> int:
        return len(self._columns["index"])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    def __getitem__(self, i: int) -> dict[str, object]:
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range (dataset has {len(self)})")
        ep_index = int(self._columns["episode_index"][i])
        episode = self._by_index[ep_index]
        local = int(self._columns["frame_index"][i])
        row0 = i - local  # whole episodes are kept, sorted by index, so the episode starts here
        t0 = float(self._columns["timestamp"][i])
        item: dict[str, object] = {}
        for key in self._columns:
            if key in self.delta_timestamps:
                frames, pad = self._window(local, episode.length, self.delta_timestamps[key])
                item[key] = torch.from_numpy(self._columns[key][row0 + frames])
                item[f"{key}_is_pad"] = torch.from_numpy(pad)
            else:
                item[key] = torch.from_numpy(np.asarray(self._columns[key][i]))
        for cam in self.video_keys:
            path, offset = episode.videos[cam]
            if cam in self.delta_timestamps:
                frames, pad = self._window(local, episode.length, self.delta_timestamps[cam])
                times = [offset + f / self.fps for f in frames]
                item[cam] = self._decoder(path).frames_at(times, self.tolerance_s)
                item[f"{cam}_is_pad"] = torch.from_numpy(pad)
            else:
                item[cam] = self._decoder(path).frames_at([offset + t0], self.tolerance_s)[0]
        item["task"] = self.tasks[int(self._columns["task_index"][i])]
        return item

    def _window(self, local: int, length: int, deltas: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        steps = np.array([local + round(d * self.fps) for d in deltas])
        return np.clip(steps, 0, length - 1), (steps < 0) | (steps >= length)

    def _decoder(self, path: Path) -> _VideoDecoder:
        if path not in self._decoders:
            self._decoders[path] = _VideoDecoder(path)
        return self._decoders[path]

    def __getstate__(self) -> dict:
        # Open containers cannot cross into DataLoader workers; each worker opens its own.
        return {**self.__dict__, "_decoders": {}}


def _read_jsonl(path: Path) -> list[dict]:
    path = require_file(path, "episode metadata")
    try:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON lines: {err}") from err


def _column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    column = column.combine_chunks()
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type):
        flat = column.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(column), -1)
    return column.to_numpy(zero_copy_only=False)


class _VideoDecoder:
    """Decode frames nearest to given timestamps (seconds, float64), as LeRobot's PyAV backend does."""

    def __init__(self, path: Path) -> None:
        self.path = require_file(path, "episode video")
        try:
            self.container = av.open(str(path))
        except av.error.FFmpegError as err:
            raise DataError(f"cannot open episode video {path}: {err}") from err
        if not self.container.streams.video:
            raise DataError(f"{path} has no video stream")
        self.stream = self.container.streams.video[0]

    def frames_at(self, timestamps: Sequence[float], tolerance_s: float) -> torch.Tensor:
        first, last = min(timestamps), max(timestamps)
        # Seek to the keyframe before `first`, then decode forward past `last`.
        self.container.seek(max(int(first / self.stream.time_base), 0), stream=self.stream, backward=True)
        times, images = [], []
        try:
            for frame in self.container.decode(self.stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * self.stream.time_base)
                if t >= first - tolerance_s:
                    times.append(t)
                    images.append(frame.to_ndarray(format="rgb24"))
                if t >= last - tolerance_s:
                    break
        except av.error.FFmpegError as err:
            raise DataError(f"cannot decode {self.path} near {first:.3f}s: {err}") from err
        if not times:
            raise DataError(f"{self.path}: no frame near {first:.4f}s (video ends earlier)")
        times_arr = np.array(times, dtype=np.float64)
        out = []
        for t in timestamps:
            j = int(np.abs(times_arr - t).argmin())
            if abs(times_arr[j] - t) > tolerance_s:
                raise DataError(f"{self.path}: nearest frame to {t:.4f}s is at {times_arr[j]:.4f}s "
                                f"(tolerance {tolerance_s}s); the video and the parquet disagree")
            out.append(images[j])
        return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0
