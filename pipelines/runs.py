"""Run folders: every job writes `runs/<name>/` (config, checkpoints, metrics.csv, tensorboard/).

A second `fit` with the same name never writes over the first: it goes to `<name>_2`, `<name>_3`, …
Evaluation subcommands write beside the checkpoint's run, under `<run>/<subcommand>/version_N/`.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"


def run_dir_of_checkpoint(ckpt_path: str | Path) -> Path | None:
    """`runs/x/checkpoints/last.ckpt` → `runs/x`; None for a checkpoint outside a run folder."""
    ckpt_path = Path(ckpt_path)
    return ckpt_path.parent.parent if ckpt_path.parent.name == CHECKPOINT_DIR else None


def fresh_run_dir(runs_dir: str | Path, name: str) -> Path:
    """`runs_dir/name`, or the first `name_k` (k ≥ 2) that no earlier run has used."""
    runs_dir = Path(runs_dir)
    candidate, k = runs_dir / name, 2
    while (candidate / CONFIG_FILE).exists() or (candidate / CHECKPOINT_DIR).exists():
        candidate, k = runs_dir / f"{name}_{k}", k + 1
    return candidate
