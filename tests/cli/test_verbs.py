import json
import math

import lightning as L
import pytest
import torch

from pipelines.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from pipelines.cli import main
from pipelines.demo import run_demo
from pipelines.verbs import find_verb


def test_help_lists_lightning_subcommands_and_verbs(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for word in ("fit", "validate", "data synth shapes", "demo"):
        assert word in out


def test_unknown_command_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2 and "frobnicate" in capsys.readouterr().err


def test_longest_prefix_wins():
    assert find_verb(["data", "synth", "shapes", "--out", "x"]).words == ("data", "synth", "shapes")
    assert find_verb(["data", "synth"]) is None


def test_synth_verb_writes_and_refuses_to_overwrite(tmp_path):
    out = tmp_path / "shapes"
    main(["data", "synth", "shapes", "--out", str(out), "--n_train", "8", "--n_val", "4"])
    assert len(list(out.glob("train/*/*.png"))) == 8 and len(list(out.glob("val/*/*.png"))) == 4
    with pytest.raises(SystemExit, match="not empty"):
        main(["data", "synth", "shapes", "--out", str(out), "--n_train", "8"])


class NaNAfterTwoSteps(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.w * batch[0]).sum()
        return loss * float("nan") if self.global_step >= 2 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(10, 1)), batch_size=1)


def test_nan_loss_stops_with_the_step_named(tmp_path):
    trainer = L.Trainer(max_steps=6, callbacks=[StopOnNonFiniteLoss()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    with pytest.raises(NonFiniteLossError, match="global step") as err:
        trainer.fit(NaNAfterTwoSteps())
    assert "nan" in str(err.value) and trainer.global_step == 2
    assert math.isfinite(float(trainer.lightning_module.w.detach()))  # the NaN never reached the weights


def test_demo_core_stage_writes_report(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["pipelines"])
    report = run_demo(tmp_path, ["core"])
    text = report.read_text()
    assert "| stage | seconds |" in text and "val acc" in text
    assert (tmp_path / "core_shapes.png").stat().st_size > 1000
    metrics = json.loads((tmp_path / "demo_metrics.json").read_text())
    assert metrics["core"]["metrics"]["val_acc"] > 0.6  # chance is 0.25; the demo's 30 epochs reach ~0.9
