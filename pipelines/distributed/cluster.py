"""Connecting to Ray: a local instance sized to this machine, or an existing cluster, with clear errors."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import ray

from pipelines.errors import PipelinesError

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pipelines", "vlm", "asd", "vla")


class RayClusterError(PipelinesError, RuntimeError):
    """Ray could not be reached or cannot fit the requested work."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise RayClusterError(f"Ray address {address!r} is not host:port, 'auto' or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise RayClusterError(f"cannot reach the Ray cluster at {address}: {err} (is `ray start --head` running there, "
                              "and is the port open?)") from err


def connect(address: str | None = None, num_cpus: int | None = None) -> dict:
    """Start or join Ray; return the cluster's resources.

    No address: a local Ray with this machine's CPUs (or an already-initialised one, as in tests).
    'auto', host:port or ray://host:port: join that cluster, shipping our packages to its workers
    unless a job's runtime environment already carries them (`ray job submit --working-dir .`).
    """
    if ray.is_initialized():
        return ray.cluster_resources()
    if address is None and os.environ.get("RAY_ADDRESS"):
        address = "auto"  # inside `ray job submit` (or a shell pointed at a cluster): join that cluster
    if address is None:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, log_to_driver=True)
        return ray.cluster_resources()
    if address != "auto":
        check_reachable(address)
    in_job = bool(os.environ.get("RAY_JOB_ID") or os.environ.get("RAY_JOB_SUBMISSION_ID"))
    runtime_env = None if in_job else {
        "py_modules": [str(REPO_ROOT / p) for p in PACKAGES if (REPO_ROOT / p).is_dir()]}
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=True)
    except ConnectionError as err:
        raise RayClusterError(f"cannot connect to Ray at {address!r}: {err}") from err
    return ray.cluster_resources()


def require_cpus(resources: dict, needed: float, what: str) -> None:
    """Refuse work that cannot be scheduled: Ray would otherwise wait for CPUs forever."""
    available = resources.get("CPU", 0)
    if needed > available:
        raise RayClusterError(f"{what} needs {needed:g} CPUs but the Ray cluster has {available:g}; "
                              "lower --num-workers / --cpus-per-worker or add nodes")
