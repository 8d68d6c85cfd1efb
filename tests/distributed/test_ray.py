"""Ray orchestration on a local 2-CPU Ray, started once for the module."""

import functools
import sys
import threading
import time

import pytest
import ray

from pipelines.cli import lightning_cli
from pipelines.distributed.cluster import RayClusterError, check_reachable, require_cpus
from pipelines.distributed.ray_fit import RayFitError, ray_fit
from pipelines.distributed.rollout_pool import RolloutJob, RolloutPool
from pipelines.distributed.toy import ToyPolicy, ToyReachEnv

CONFIG = "configs/core/shapes_tiny.yaml"

# Ray workers cannot import this test module; ship its helpers (envs, factories) by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module", autouse=True)
def local_ray(tmp_path_factory):
    import os

    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "60")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 2**20,
             _temp_dir=str(tmp_path_factory.mktemp("ray")))
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pipelines"])


class CrashOnceEnv(ToyReachEnv):
    """Dies (as a segfaulting simulator would) on step 5 of a seed-3 episode, once per marker file."""

    def __init__(self, task, marker):
        super().__init__(task, step_cost_s=0.001)
        self.marker, self.seed = marker, None

    def reset(self, seed=None):
        self.seed = seed
        return super().reset(seed)

    def step(self, action):
        if self.seed == 3 and self.t == 5 and not self.marker.exists():
            self.marker.write_text("crashed")
            import os

            os._exit(1)
        return super().step(action)


JOBS = [RolloutJob(task, seed) for task in ("left", "right") for seed in range(6)]


def make_env(task):
    return ToyReachEnv(task, step_cost_s=0.001)


def test_rollout_table_does_not_depend_on_worker_count():
    tables = []
    for workers in (1, 2):
        with RolloutPool(make_env, ToyPolicy, num_workers=workers, max_steps=40) as pool:
            tables.append([{k: v for k, v in row.items() if k != "seconds"}
                           for row in pool.run(JOBS, {"gain": 0.4}, progress=False)])
    assert tables[0] == tables[1]
    assert [(r["task"], r["seed"]) for r in tables[0]] == sorted((j.task, j.seed) for j in JOBS)
    assert 0 < sum(r["success"] for r in tables[0]) <= len(JOBS)


def test_policy_weights_reach_the_workers():
    with RolloutPool(make_env, ToyPolicy, num_workers=2, max_steps=40) as pool:
        weak = pool.run(JOBS, {"gain": 0.01}, progress=False)
        strong = pool.run(JOBS, {"gain": 0.5}, progress=False)
    assert sum(r["success"] for r in strong) > sum(r["success"] for r in weak)


def test_worker_dying_mid_episode_reruns_it_exactly_once(tmp_path):
    marker = tmp_path / "crashed"
    with RolloutPool(make_env, ToyPolicy, num_workers=1, max_steps=40) as pool:
        reference = pool.run(JOBS, {"gain": 0.4}, progress=False)
    env = functools.partial(CrashOnceEnv, marker=marker)
    with RolloutPool(env, ToyPolicy, num_workers=2, max_steps=40) as pool:
        rows = pool.run(JOBS, {"gain": 0.4}, progress=False)
    assert marker.exists()
    assert [(r["task"], r["seed"]) for r in rows] == [(r["task"], r["seed"]) for r in reference]
    assert [r["return"] for r in rows] == [r["return"] for r in reference]  # the re-run is the same episode
    assert sorted(r["attempts"] for r in rows) == [1] * (len(JOBS) - 1) + [2]  # the crashed episode, run twice


class SignallingEnv(ToyReachEnv):
    """Slow episodes that announce seed 5's start through a file, so a test can kill mid-episode."""

    def __init__(self, task, signal):
        super().__init__(task, step_cost_s=0.004, stop_on_success=False)
        self.signal = signal

    def reset(self, seed=None):
        if seed == 5:
            self.signal.touch()
        return super().reset(seed)


def test_killing_actors_mid_episode_loses_no_episode(tmp_path):
    signal = tmp_path / "seed5-started"
    jobs = [RolloutJob("t", seed) for seed in range(16)]
    with RolloutPool(functools.partial(SignallingEnv, signal=signal), ToyPolicy, num_workers=2, max_steps=30) as pool:
        def kill_when_signalled():
            deadline = time.time() + 60
            while not signal.exists() and time.time() < deadline:
                time.sleep(0.005)
            for worker in pool.workers:  # both are mid-episode: 10 of 16 jobs are still to run
                ray.kill(worker, no_restart=False)

        killer = threading.Thread(target=kill_when_signalled)
        killer.start()
        rows = pool.run(jobs, {"gain": 0.4}, progress=False)
        killer.join()
    assert [r["seed"] for r in rows] == list(range(16))  # every job exactly once
    assert any(r["attempts"] > 1 for r in rows)


def fit_args(shapes_root, runs, *extra):
    return ["--config", CONFIG, "--data.init_args.root", str(shapes_root), "--runs_dir", str(runs),
            "--trainer.enable_progress_bar", "false", *extra]


def final_val_loss(run_dir):
    import csv

    rows = [r for r in csv.DictReader(open(run_dir / "metrics.csv")) if r.get("val/loss")]
    return float(rows[-1]["val/loss"])


def test_two_worker_fit_matches_single_process(shapes_root, tmp_path):
    # Same global batch (2 × 16 vs 32) and seed; only the order in which samples are drawn differs
    # (DistributedSampler vs RandomSampler), so the curves agree to within sampling noise.
    single = lightning_cli(["fit", *fit_args(shapes_root, tmp_path / "single", "--trainer.max_epochs", "6")])
    result = ray_fit(fit_args(shapes_root, tmp_path / "ray", "--trainer.max_epochs", "6",
                              "--data.init_args.batch_size", "16"), num_workers=2, max_failures=0)
    single_loss, ray_loss = final_val_loss(single.run_dir), final_val_loss(result.run_dir)
    assert abs(single_loss - ray_loss) < 0.15, (single_loss, ray_loss)
    assert (result.run_dir / "checkpoints" / "last.ckpt").is_file() and (result.run_dir / "config.yaml").is_file()
    assert result.metrics["step"] == 12  # 64 images / (2 × 16) = 2 steps per epoch


def test_worker_group_restarts_from_the_last_checkpoint(shapes_root, tmp_path):
    marker = tmp_path / "failed-once"
    result = ray_fit(fit_args(shapes_root, tmp_path, "--trainer.max_steps", "8", "--data.init_args.batch_size", "16",
                              "--trainer.callbacks+=pipelines.distributed.faults.FailOnceAtStep",
                              "--trainer.callbacks.step", "5", "--trainer.callbacks.marker", str(marker)),
                     num_workers=2, max_failures=1)
    assert marker.exists()  # it did fail once
    assert result.metrics["step"] == 8
    steps = [int(r.split(",")[1]) for r in (result.run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert min(steps) < 5 and max(steps) >= 7  # rows from before the crash were kept


def test_resume_from_a_local_checkpoint_continues_the_step_count(shapes_root, tmp_path):
    local = lightning_cli(["fit", *fit_args(shapes_root, tmp_path, "--trainer.max_steps", "4", "--name", "r")])
    result = ray_fit(fit_args(shapes_root, tmp_path, "--trainer.max_steps", "6", "--data.init_args.batch_size", "16"),
                     num_workers=2, resume=str(local.run_dir / "checkpoints" / "last.ckpt"), max_failures=0)
    assert result.run_dir == (tmp_path / "r").absolute()
    assert result.metrics["step"] == 6


def test_worker_config_error_reaches_the_user(tmp_path):
    start = time.perf_counter()
    with pytest.raises(RayFitError, match="image folder not found"):
        ray_fit(["--config", CONFIG, "--data.init_args.root", str(tmp_path / "absent"), "--runs_dir", str(tmp_path)],
                num_workers=2, max_failures=0)
    assert time.perf_counter() - start < 120


def test_config_typo_fails_on_the_driver(tmp_path):
    with pytest.raises(SystemExit):
        ray_fit(["--config", CONFIG, "--model.init_args.lrr", "1", "--runs_dir", str(tmp_path)], num_workers=2)


def test_more_workers_than_cpus_is_refused(shapes_root, tmp_path):
    with pytest.raises(RayClusterError, match="needs 3 CPUs but the Ray cluster has 2"):
        ray_fit(fit_args(shapes_root, tmp_path), num_workers=3)
    with pytest.raises(RayClusterError, match="needs 4 CPUs"):
        require_cpus({"CPU": 2.0}, 4, "a pool")


def test_unreachable_address_is_a_clear_error():
    with pytest.raises(RayClusterError, match="cannot reach the Ray cluster at 127.0.0.1:9"):
        check_reachable("127.0.0.1:9", timeout_s=2)
    with pytest.raises(RayClusterError, match="not host:port"):
        check_reachable("nonsense")
