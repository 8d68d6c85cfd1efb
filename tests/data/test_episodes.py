import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.data.episodes import EpisodeDataset, EpisodeWriter
from pipelines.data.errors import DataError
from pipelines.data.video import write_video

FPS, H, W = 10, 32, 48
CAM = "observation.images.top"
LENGTHS = [5, 7]


def episode_frames(e: int, n: int):
    state = np.arange(n * 2, dtype=np.float32).reshape(n, 2) + 100 * e
    action = np.arange(n, dtype=np.float32)[:, None] + 100 * e
    images = np.stack([np.full((H, W, 3), 20 + 50 * e + 10 * t, np.uint8) for t in range(n)])
    return state, action, images


def grey_level(image) -> float:
    return float(image.mean()) * 255


@pytest.fixture(scope="module")
def v3_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("episodes") / "v3"
    writer = EpisodeWriter(root, fps=FPS, features={"observation.state": ["x", "y"], "action": ["a"]},
                           cameras={CAM: (H, W)}, robot_type="toy")
    for e, n in enumerate(LENGTHS):
        state, action, images = episode_frames(e, n)
        writer.add_episode(f"task {e}", {"observation.state": state, "action": action}, {CAM: images})
    return writer.finalize()


def test_v3_layout_on_disk(v3_root):
    for rel in ("meta/info.json", "meta/stats.json", "meta/tasks.parquet", "meta/episodes/chunk-000/file-000.parquet",
                "data/chunk-000/file-000.parquet", f"videos/{CAM}/chunk-000/file-000.mp4"):
        assert (v3_root / rel).is_file(), rel
    info = json.loads((v3_root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == sum(LENGTHS)
    assert info["features"][CAM]["shape"] == [H, W, 3]
    episodes = pq.read_table(v3_root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["dataset_from_index"] for e in episodes] == [0, 5]
    assert episodes[1][f"videos/{CAM}/from_timestamp"] == pytest.approx(0.5)
    tasks = pq.read_table(v3_root / "meta/tasks.parquet").to_pandas()  # LeRobot keeps the task as the index
    assert list(tasks.index) == ["task 0", "task 1"]
    stats = json.loads((v3_root / "meta/stats.json").read_text())
    assert stats["action"]["max"] == [106.0] and np.array(stats[CAM]["mean"]).shape == (3, 1, 1)


def test_v3_frames_decode_to_what_was_written(v3_root):
    ds = EpisodeDataset(v3_root)
    assert len(ds) == sum(LENGTHS) and ds.num_episodes == 2
    for i, (e, t) in enumerate([(e, t) for e, n in enumerate(LENGTHS) for t in range(n)]):
        item = ds[i]
        state, action, _ = episode_frames(e, LENGTHS[e])
        np.testing.assert_array_equal(item["observation.state"].numpy(), state[t])
        assert item["task"] == f"task {e}" and int(item["frame_index"]) == t
        assert item[CAM].shape == (3, H, W)
        assert grey_level(item[CAM]) == pytest.approx(20 + 50 * e + 10 * t, abs=4)


def test_delta_timestamps_windows_pad_at_episode_end(v3_root):
    ds = EpisodeDataset(v3_root, delta_timestamps={"action": [0, 0.1, 0.2], CAM: [-0.1, 0.0]})
    item = ds[3]  # episode 0, frame 3 of 5
    assert item["action"].reshape(-1).tolist() == [3, 4, 4]
    assert item["action_is_pad"].tolist() == [False, False, True]
    first = ds[5]  # first frame of episode 1: the previous camera frame is padding
    assert first[f"{CAM}_is_pad"].tolist() == [True, False]
    assert [grey_level(f) for f in first[CAM]] == pytest.approx([70, 70], abs=4)


def test_episode_selection(v3_root):
    ds = EpisodeDataset(v3_root, episodes=[1])
    assert len(ds) == 7 and int(ds[0]["episode_index"]) == 1


def write_v21(root):
    """A LeRobot v2.1 dataset built by hand: one parquet and one mp4 per episode, jsonl metadata."""
    info = {"codebase_version": "v2.1", "fps": FPS, "chunks_size": 1000, "total_episodes": 2,
            "data_path": "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
            "video_path": "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
            "features": {"observation.state": {"dtype": "float32", "shape": [2]},
                         "action": {"dtype": "float32", "shape": [1]},
                         CAM: {"dtype": "video", "shape": [H, W, 3]},
                         **{k: {"dtype": "int64", "shape": [1]} for k in
                            ("frame_index", "episode_index", "index", "task_index")},
                         "timestamp": {"dtype": "float32", "shape": [1]}}}
    (root / "meta").mkdir(parents=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "stack"}\n')
    start = 0
    lines = []
    for e, n in enumerate(LENGTHS):
        state, action, images = episode_frames(e, n)
        table = pa.table({"observation.state": list(state), "action": list(action),
                          "timestamp": pa.array(np.arange(n) / FPS, pa.float32()),
                          "frame_index": np.arange(n), "episode_index": np.full(n, e),
                          "index": np.arange(start, start + n), "task_index": np.zeros(n, np.int64)})
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / f"data/chunk-000/episode_{e:06d}.parquet")
        write_video(root / f"videos/chunk-000/{CAM}/episode_{e:06d}.mp4", list(images), fps=FPS)
        lines.append(json.dumps({"episode_index": e, "tasks": ["stack"], "length": n}))
        start += n
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_v21_is_readable(tmp_path):
    ds = EpisodeDataset(write_v21(tmp_path / "v21"))
    assert len(ds) == 12 and ds.tasks == ["stack"]
    item = ds[6]  # episode 1, frame 1
    assert item["observation.state"].tolist() == [102.0, 103.0]
    assert grey_level(item[CAM]) == pytest.approx(80, abs=5)


def test_bad_datasets(tmp_path, v3_root):
    with pytest.raises(FileNotFoundError, match="info.json"):
        EpisodeDataset(tmp_path / "empty")
    (tmp_path / "old/meta").mkdir(parents=True)
    (tmp_path / "old/meta/info.json").write_text(json.dumps({"codebase_version": "v1.6", "fps": 10, "features": {},
                                                             "data_path": "x"}))
    with pytest.raises(DataError, match="v1.6"):
        EpisodeDataset(tmp_path / "old")
    (tmp_path / "old/meta/info.json").write_text("{broken")
    with pytest.raises(DataError, match="not valid JSON"):
        EpisodeDataset(tmp_path / "old")
    with pytest.raises(DataError, match="unknown features"):
        EpisodeDataset(v3_root, delta_timestamps={"acton": [0.0]})
    with pytest.raises(FileExistsError):
        EpisodeWriter(v3_root, fps=FPS, features={})


def test_writer_rejects_mismatched_episode(tmp_path):
    writer = EpisodeWriter(tmp_path / "ds", fps=FPS, features={"action": ["a"]})
    with pytest.raises(DataError, match="shape"):
        writer.add_episode("t", {"action": np.zeros((4, 3))})
    with pytest.raises(DataError, match="features"):
        writer.add_episode("t", {"state": np.zeros((4, 1))})
