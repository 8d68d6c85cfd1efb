"""Rollout throughput of the Ray worker pool with 1 and 2 workers on a toy env of known step cost.

    python benchmarks/ray_rollouts.py [--episodes 48] [--step-ms 4] [--horizon 50]

Each episode costs horizon × step_ms of busy CPU, so the ideal rate is cores / episode cost; the
ratio of 2 workers to 1 is the scaling (target ≥ 1.7× on 2 cores). Pool start-up (actor
creation, first environment) is measured apart from steady-state throughput.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

import ray

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from pipelines.distributed.rollout_pool import RolloutJob, RolloutPool  # noqa: E402
from pipelines.distributed.toy import ToyPolicy, ToyReachEnv  # noqa: E402


def measure(workers: int, jobs: list[RolloutJob], make_env, horizon: int) -> dict:
    start = time.perf_counter()
    pool = RolloutPool(make_env, ToyPolicy, num_workers=workers, max_steps=horizon)
    pool.run([RolloutJob("warm", i) for i in range(workers)], {"gain": 0.4}, progress=False)  # actors up, envs built
    startup = time.perf_counter() - start
    start = time.perf_counter()
    rows = pool.run(jobs, {"gain": 0.4}, progress=True)
    seconds = time.perf_counter() - start
    pool.shutdown()
    return {"workers": workers, "episodes": len(rows), "seconds": round(seconds, 3),
            "episodes_per_s": round(len(rows) / seconds, 3), "startup_s": round(startup, 3),
            "success_rate": sum(r["success"] for r in rows) / len(rows)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--episodes", type=int, default=48)
    parser.add_argument("--step-ms", type=float, default=4.0)
    parser.add_argument("--horizon", type=int, default=50)
    args = parser.parse_args()
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    make_env = functools.partial(ToyReachEnv, step_cost_s=args.step_ms / 1000, horizon=args.horizon,
                                 stop_on_success=False)
    jobs = [RolloutJob("reach", seed) for seed in range(args.episodes)]
    episode_cost = args.horizon * args.step_ms / 1000
    runs = [measure(w, jobs, make_env, args.horizon) for w in (1, 2)]
    ratio = runs[1]["episodes_per_s"] / runs[0]["episodes_per_s"]
    ideal = 1 / episode_cost
    table = "\n".join(
        ["| workers | episodes/s | ideal (1 core each) | pool start-up (s) |", "|---|---|---|---|"]
        + [f"| {r['workers']} | {r['episodes_per_s']:.2f} | {ideal * r['workers']:.2f} | {r['startup_s']:.2f} |"
           for r in runs]
        + [f"| **2 / 1** | **{ratio:.2f}×** | 2.00× | |"])
    print(table)
    write_results("ray_rollouts", {"episode_cost_s": episode_cost, "runs": runs, "ratio": round(ratio, 3)},
                  [{"name": "episodes/s, 2 workers / 1 worker", "value": round(ratio, 3), "target": ">= 1.7",
                    "met": ratio >= 1.7}],
                  table + f"\n\n{args.episodes} episodes of {args.horizon} steps × {args.step_ms} ms busy CPU "
                  f"({episode_cost:.2f} s each).")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    ax.plot([1, 2], [r["episodes_per_s"] for r in runs], "o-", label="measured")
    ax.plot([1, 2], [ideal, 2 * ideal], "--", color="gray", label="ideal")
    ax.set(xlabel="workers", ylabel="episodes/s", xticks=[1, 2], title="Ray rollout pool scaling")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "ray_rollouts.png", dpi=100)


if __name__ == "__main__":
    main()
