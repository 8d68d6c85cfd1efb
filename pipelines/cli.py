"""The `pipelines` command: LightningCLI for fit/validate/test/predict, plus domain verbs.

    pipelines fit --config configs/core/shapes_tiny.yaml --trainer.max_steps 5
    pipelines validate --config configs/core/shapes_tiny.yaml --ckpt_path runs/shapes_tiny/checkpoints/last.ckpt
    pipelines data synth shapes --out runs/data/shapes
    pipelines demo

Domain packages add verbs (`pipelines asd demo VIDEO`) through the `pipelines.verbs` entry-point
group; a verb is a typed function and jsonargparse builds its parser from the signature.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger

# Imported so that configs may use short class names (`class_path: ImageClassifier`).
import pipelines.data  # noqa: F401
import pipelines.tasks  # noqa: F401
from pipelines.callbacks import StopOnNonFiniteLoss
from pipelines.errors import PipelinesError
from pipelines.loggers import ResumableCSVLogger
from pipelines.runs import CHECKPOINT_DIR, fresh_run_dir, run_dir_of_checkpoint
from pipelines.verbs import dispatch_verb, find_verb, verb_help

# Lightning advertises cloud services on every run, and warns about the args/sys.argv pairing and
# ModelCheckpoint state when an evaluation loads a checkpoint; none of it is actionable here.
logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(lambda r: not str(r.msg).startswith("💡"))
warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
warnings.filterwarnings("ignore", message=".*callbacks used to create the checkpoint need to be provided.*")

LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
USER_ERRORS = (PipelinesError, FileNotFoundError, FileExistsError)


class PipelinesCLI(LightningCLI):
    """LightningCLI whose runs land in `runs/<name>/` with CSV + TensorBoard metrics and checkpoints.

    `run_dir`, `trainer_overrides` and `extra_callbacks` let a launcher (Ray Train) fix the run
    folder for every worker and swap in its strategy/plugins without touching the user's YAML.
    """

    def __init__(self, *args: Any, run_dir: Path | None = None, trainer_overrides: dict[str, Any] | None = None,
                 extra_callbacks: list | None = None, parse_only: bool = False, **kwargs: Any) -> None:
        self.parse_only = parse_only
        self.forced_run_dir = Path(run_dir) if run_dir is not None else None
        self.trainer_overrides = dict(trainer_overrides or {})
        self.extra_callbacks = list(extra_callbacks or [])
        super().__init__(*args, **kwargs)

    @property
    def stage(self) -> str:
        return self.subcommand or "fit"  # run=False (Ray workers) means fit

    def _sub_config(self):
        return self.config[self.subcommand] if self.subcommand else self.config

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--name", type=str | None, default=None,
                            help="Run name: outputs go to <runs_dir>/<name>/ (default: the config file's stem).")
        parser.add_argument("--runs_dir", type=str, default="runs", help="Folder holding all run folders.")

    def instantiate_classes(self) -> None:
        if not self.parse_only:  # parse_only: check the config and resolve names without building anything
            super().instantiate_classes()

    def run_name(self) -> str:
        cfg = self._sub_config()
        if cfg.get("name"):
            return cfg["name"]
        configs = cfg.get("config") or []
        if configs:
            return Path(str(configs[-1])).stem
        model = cfg.get("model")
        class_path = getattr(model, "class_path", None) or "run"
        return class_path.rsplit(".", 1)[-1].lower()

    def _choose_run_dir(self) -> Path:
        if self.forced_run_dir is not None:
            return self.forced_run_dir
        cfg = self._sub_config()
        ckpt_path = cfg.get("ckpt_path")
        ckpt_run = run_dir_of_checkpoint(ckpt_path) if ckpt_path else None
        if self.stage == "fit":
            # Resuming continues the checkpoint's own run; a new fit never reuses an old folder.
            return ckpt_run or fresh_run_dir(cfg["runs_dir"], self.run_name())
        return ckpt_run or Path(cfg["runs_dir"]) / self.run_name()

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        self.run_dir = self._choose_run_dir()
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        kwargs.setdefault("default_root_dir", str(self.run_dir))
        if trainer_cfg.get("logger") in (None, True):
            if self.stage == "fit":
                save_dir, name, version = self.run_dir.parent, self.run_dir.name, ""
                kwargs["logger"] = [ResumableCSVLogger(save_dir, name=name, version=version),
                                    TensorBoardLogger(save_dir, name=name, version="tensorboard")]
            else:
                kwargs["logger"] = [ResumableCSVLogger(self.run_dir, name=self.stage)]
        if self.stage != "fit":
            kwargs["enable_checkpointing"] = False  # evaluation writes no checkpoints
        callbacks = list(trainer_cfg.get("callbacks") or [])
        if not any(isinstance(c, StopOnNonFiniteLoss) for c in callbacks):
            callbacks.append(StopOnNonFiniteLoss())
        wants_ckpt = trainer_cfg.get("enable_checkpointing", True) is not False
        if self.stage == "fit" and wants_ckpt and not any(isinstance(c, ModelCheckpoint) for c in callbacks):
            callbacks.append(ModelCheckpoint(dirpath=self.run_dir / CHECKPOINT_DIR, filename="step{step}",
                                             auto_insert_metric_name=False, save_last=True))
        kwargs["callbacks"] = callbacks + self.extra_callbacks
        kwargs.update(self.trainer_overrides)
        return super().instantiate_trainer(**kwargs)


def lightning_cli(args: list[str] | None = None, run: bool = True, **launcher: Any) -> PipelinesCLI:
    """Build (and by default run) the LightningCLI on `args`; tests, the demo and Ray workers call this.

    With run=False, `args` hold no subcommand and the objects are only built (a fit config).
    """
    return PipelinesCLI(
        **launcher,
        model_class=L.LightningModule,
        datamodule_class=L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"parser_mode": "yaml"},
        args=args,
        run=run,
    )


USAGE = """usage: pipelines <command> [options]

Training (LightningCLI; each takes --config, --print_config and dotted overrides):
  fit        train a model from a YAML config
  validate   evaluate a checkpoint on the validation split
  test       evaluate a checkpoint on the test split
  predict    run a checkpoint on the predict split
"""


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    try:
        _run(argv, from_sys_argv=args is None)
    except USER_ERRORS as err:
        if os.environ.get("PIPELINES_DEBUG"):
            raise
        # Bad input is the user's to fix, not ours to debug: one line naming the problem, no traceback.
        print(f"error: {err}\n(set PIPELINES_DEBUG=1 for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _run(argv: list[str], from_sys_argv: bool) -> None:
    if argv and argv[0] in LIGHTNING_SUBCOMMANDS:
        lightning_cli(None if from_sys_argv else argv)  # None: LightningCLI reads sys.argv itself
        return
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE + "\n" + verb_help())
        return
    verb = find_verb(argv)
    if verb is None:
        print(f"pipelines: unknown command {' '.join(argv[:3])!r}\n\n{USAGE}\n{verb_help()}", file=sys.stderr)
        raise SystemExit(2)
    dispatch_verb(verb, argv)


if __name__ == "__main__":
    main()
