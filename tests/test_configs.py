"""Every shipped config trains for one batch on fake data (torchgeo's rule): configs cannot rot."""

import sys
from pathlib import Path

import pytest

from pipelines.cli import lightning_cli

CONFIGS = sorted(str(p) for p in Path("configs").rglob("*.yaml") if "ray" not in p.parts)


def fake_data_overrides(config: str, request) -> list[str]:
    """Point a config at synthetic data of its kind; a new config must add its entry here."""
    if config.startswith("configs/core/"):
        return ["--data.init_args.root", str(request.getfixturevalue("shapes_root"))]
    if config.startswith("configs/vlm/nbdiff"):
        # The real-model config keeps its SmolLM2 source: one batch of 135M is a few seconds.
        return ["--data.init_args.root", str(request.getfixturevalue("chat_text_root")),
                "--data.init_args.batch_size", "2"]
    if config.startswith("configs/lm/"):
        return ["--data.init_args.root", str(request.getfixturevalue("text_corpus_root")),
                "--model.init_args.decoder.vocab_size", "300", "--data.init_args.batch_size", "2"]
    pytest.fail(f"{config} has no fake-data entry in tests/test_configs.py")


def test_configs_were_found():
    assert "configs/core/shapes_tiny.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_runs(config, request, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pipelines"])
    cli = lightning_cli(["fit", "--config", config, *fake_data_overrides(config, request),
                         "--trainer.fast_dev_run", "true", "--runs_dir", str(tmp_path)])
    assert cli.trainer.state.finished
