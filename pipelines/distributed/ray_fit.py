"""`pipelines ray fit`: the YAML of `pipelines fit`, trained by Ray Train on a local Ray or a cluster.

Each worker builds the same LightningCLI objects (model, data, trainer) from the same arguments,
with Ray's DDP strategy, cluster environment and report callback swapped in. Metrics and
checkpoints land in the same `runs/<name>/` folder as a local fit (written by rank 0); Ray keeps
its own reported checkpoints under `runs/<name>/ray/` to restart a failed worker group from.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import ray
import ray.train
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from pipelines.distributed.cluster import connect, require_cpus
from pipelines.errors import PipelinesError
from pipelines.runs import fresh_run_dir, run_dir_of_checkpoint


class RayFitError(PipelinesError, RuntimeError):
    """Distributed training failed; the message carries the worker's own error."""


def _train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker."""
    if os.path.isdir(config["cwd"]):  # same machine or shared FS: relative data paths resolve as on the driver
        os.chdir(config["cwd"])
    from ray.train.lightning import (
        RayDDPStrategy,
        RayLightningEnvironment,
        RayTrainReportCallback,
        prepare_trainer,
    )

    from pipelines.cli import lightning_cli

    cli = lightning_cli(
        config["cli_args"], run=False, run_dir=Path(config["run_dir"]),
        trainer_overrides={"strategy": RayDDPStrategy(), "plugins": [RayLightningEnvironment()], "devices": "auto",
                           "accelerator": "gpu" if config["use_gpu"] else "cpu"},
        extra_callbacks=[RayTrainReportCallback()],
    )
    trainer = prepare_trainer(cli.trainer)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:  # a fresh start, or --resume from a Lightning checkpoint
        trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=config["resume"])
        return
    with checkpoint.as_directory() as folder:  # a restart after a failure: Ray's latest report
        local = Path(tempfile.mkdtemp()) / RayTrainReportCallback.CHECKPOINT_NAME
        shutil.copy(Path(folder) / RayTrainReportCallback.CHECKPOINT_NAME, local)
    trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(local))


def _resolve_run(cli_args: list[str], resume: str | None) -> Path:
    """Parse the config on the driver (typos fail here, fast) and fix the run folder for all workers."""
    from pipelines.cli import lightning_cli

    probe = lightning_cli(cli_args, run=False, parse_only=True)
    cfg = probe.config
    if resume is not None and run_dir_of_checkpoint(resume) is not None:
        run_dir = run_dir_of_checkpoint(resume)
    else:
        run_dir = fresh_run_dir(cfg["runs_dir"], probe.run_name())
    return run_dir.absolute()


def ray_fit(cli_args: list[str], num_workers: int = 2, cpus_per_worker: float = 1, gpus_per_worker: float = 0,
            address: str | None = None, resume: str | None = None, max_failures: int = 2):
    """Train the fit config in `cli_args` (e.g. ["--config", "x.yaml", "--trainer.max_steps", "5"]) on Ray."""
    if resume is not None and not Path(resume).is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {resume}")
    run_dir = _resolve_run(cli_args, resume)
    resources = connect(address)
    require_cpus(resources, num_workers * cpus_per_worker, f"{num_workers} workers × {cpus_per_worker:g} CPU")
    if gpus_per_worker and resources.get("GPU", 0) < num_workers * gpus_per_worker:
        raise RayFitError(f"{num_workers} workers × {gpus_per_worker:g} GPU requested, cluster has {resources.get('GPU', 0):g}")
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config={"cli_args": list(cli_args), "run_dir": str(run_dir), "cwd": os.getcwd(),
                           "resume": str(Path(resume).absolute()) if resume else None,
                           "use_gpu": gpus_per_worker > 0},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                                     resources_per_worker={"CPU": cpus_per_worker, "GPU": gpus_per_worker}),
        run_config=RunConfig(
            name="ray", storage_path=str(run_dir),
            # A worker failure restarts the group from the last reported checkpoint; the controller
            # itself never retries (its default, -1, retries forever and hangs on a bad config).
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=0),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    print(f"ray fit: {num_workers} workers → {run_dir}", flush=True)
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise RayFitError(f"distributed training failed: {err}") from None
    if result.error is not None:
        raise RayFitError(f"distributed training failed: {result.error}")
    result.run_dir = run_dir
    return result


def ray_fit_verb(argv: list[str]) -> None:
    """Train a `pipelines fit` YAML with Ray Train: pipelines ray fit --config X.yaml --num-workers N [...]"""
    parser = argparse.ArgumentParser(
        prog="pipelines ray fit",
        description="Train the same YAML as `pipelines fit` with Ray Train. Unrecognised options "
                    "(--config, --trainer.max_steps 5, ...) go to the LightningCLI on every worker.")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--cpus-per-worker", type=float, default=1)
    parser.add_argument("--gpus-per-worker", type=float, default=0)
    parser.add_argument("--address", default=None, help="'auto', host:port or ray://host:port; default: a local Ray")
    parser.add_argument("--resume", default=None, help="a Lightning checkpoint to continue from")
    parser.add_argument("--max-failures", type=int, default=2, help="worker-group restarts allowed")
    known, rest = parser.parse_known_args(argv)
    if not any(a == "--config" or a.startswith("--config=") or a == "-c" for a in rest):
        parser.error("--config is required")
    result = ray_fit(rest, known.num_workers, known.cpus_per_worker, known.gpus_per_worker, known.address,
                     known.resume, known.max_failures)
    metrics = {k: round(float(v), 4) for k, v in (result.metrics or {}).items() if isinstance(v, int | float)}
    print(f"ray fit done: {result.run_dir}\n  final metrics: {metrics}")
