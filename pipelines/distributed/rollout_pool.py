"""Policy rollouts fanned out over Ray actors, each holding one environment and one policy copy.

The pool knows nothing of any simulator: it is given `make_env(task) -> env` (gymnasium-style
`reset(seed=...)` / `step(action)`) and `make_policy() -> policy` (`reset(seed)`, `act(obs, task)`,
`load_state_dict`). An evaluation is a list of jobs (task, seed, episode); the result is one row
per job. Each episode is seeded by its job alone, so the table is the same for any number of
workers. A worker that dies mid-episode is restarted by Ray and the episode is run again; results
are keyed by job, so no episode is lost or counted twice.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from tqdm import tqdm

from pipelines.distributed.cluster import connect, require_cpus


@dataclass(frozen=True, order=True)
class RolloutJob:
    task: str
    seed: int
    episode: int = 0


def run_episode(env, policy, job: RolloutJob, max_steps: int) -> dict:
    """One episode; success is the env's `info["success"]` at any step (MetaWorld's convention)."""
    start = time.perf_counter()
    obs, info = env.reset(seed=job.seed)
    policy.reset(seed=job.seed)
    total, success, steps = 0.0, False, 0
    for steps in range(1, max_steps + 1):  # noqa: B007
        obs, reward, terminated, truncated, info = env.step(policy.act(obs, job.task))
        total += float(reward)
        success = success or bool(info.get("success", False))
        if terminated or truncated:
            break
    return {**asdict(job), "success": success, "return": total, "steps": steps,
            "seconds": time.perf_counter() - start}


@ray.remote(max_restarts=-1, max_task_retries=0)
class RolloutWorker:
    """Holds one environment (rebuilt when the task changes) and one policy copy."""

    def __init__(self, make_env: Callable, make_policy: Callable, max_steps: int) -> None:
        self.make_env, self.max_steps = make_env, max_steps
        self.policy = make_policy()
        self.env, self.env_task, self.weights_version = None, None, None

    def run(self, job: RolloutJob, weights_ref: list, version: int) -> dict:
        # The weights arrive as an ObjectRef inside a list so Ray does not resolve them per call;
        # they are fetched once per evaluation (and again after a restart).
        if weights_ref[0] is not None and version != self.weights_version:
            self.policy.load_state_dict(ray.get(weights_ref[0]))
            self.weights_version = version
        if self.env is None or self.env_task != job.task:
            if self.env is not None:
                self.env.close()
            self.env, self.env_task = self.make_env(job.task), job.task
        return run_episode(self.env, self.policy, job, self.max_steps)


class RolloutPool:
    def __init__(self, make_env: Callable, make_policy: Callable, num_workers: int = 2, max_steps: int = 500,
                 cpus_per_worker: float = 1, address: str | None = None, runtime_env: dict | None = None) -> None:
        resources = connect(address)
        require_cpus(resources, num_workers * cpus_per_worker, f"a rollout pool of {num_workers} workers")
        options = {"num_cpus": cpus_per_worker}
        if runtime_env:
            options["runtime_env"] = runtime_env  # e.g. {"env_vars": {"MUJOCO_GL": "egl"}}
        self.workers = [RolloutWorker.options(**options).remote(make_env, make_policy, max_steps)
                        for _ in range(num_workers)]
        self._version = 0

    def run(self, jobs: Sequence[RolloutJob], policy_state: dict | None = None, progress: bool = True,
            max_attempts: int = 3) -> list[dict]:
        """Every job exactly once, sorted by (task, seed, episode)."""
        if len(set(jobs)) != len(jobs):
            raise ValueError("jobs contain duplicates; give repeated episodes distinct `episode` numbers")
        self._version += 1
        weights = [ray.put(policy_state) if policy_state is not None else None]
        todo = list(jobs)[::-1]
        attempts: dict[RolloutJob, int] = {}
        results: dict[RolloutJob, dict] = {}
        running: dict[ray.ObjectRef, tuple[RolloutJob, object]] = {}
        idle = list(self.workers)
        bar = tqdm(total=len(jobs), desc="rollouts", unit="ep", disable=not progress)
        while todo or running:
            while todo and idle:
                job, worker = todo.pop(), idle.pop()
                attempts[job] = attempts.get(job, 0) + 1
                running[worker.run.remote(job, weights, self._version)] = (job, worker)
            [ref], _ = ray.wait(list(running), num_returns=1)
            job, worker = running.pop(ref)
            idle.append(worker)  # a dead actor is restarted by Ray (max_restarts) and reused
            try:
                row = ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                if attempts[job] >= max_attempts:
                    raise RuntimeError(f"rollout {job} failed {attempts[job]} times; last error: {err}") from err
                todo.append(job)  # re-run the episode from its seed; the partial one is discarded
                continue
            results[job] = {**row, "attempts": attempts[job]}
            bar.update(1)
            bar.set_postfix(success=f"{sum(r['success'] for r in results.values()) / len(results):.2f}")
        bar.close()
        return [results[job] for job in sorted(results)]

    def shutdown(self) -> None:
        for worker in self.workers:
            ray.kill(worker)
        self.workers = []

    def __enter__(self) -> RolloutPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()
