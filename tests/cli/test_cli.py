import hashlib
import sys

import pytest
import yaml

from pipelines.cli import lightning_cli, main

CONFIG = "configs/core/shapes_tiny.yaml"


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pipelines"])  # LightningCLI warns when pytest's argv is also present


def fit_args(shapes_root, runs, *extra):
    return ["fit", "--config", CONFIG, "--data.init_args.root", str(shapes_root), "--runs_dir", str(runs),
            "--trainer.max_steps", "5", "--trainer.enable_progress_bar", "false", *extra]


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fit_writes_run_folder_then_validate_reports_a_metric(shapes_root, tmp_path):
    fit = lightning_cli(fit_args(shapes_root, tmp_path))
    run = tmp_path / "shapes_tiny"
    assert fit.trainer.global_step == 5
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "metrics.csv").read_text().startswith(("epoch", "step"))
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["trainer"]["max_steps"] == 5 and saved["data"]["init_args"]["root"] == str(shapes_root)

    val = lightning_cli(["validate", "--config", CONFIG, "--data.init_args.root", str(shapes_root),
                         "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
                         "--trainer.enable_progress_bar", "false"])
    assert 0.0 <= float(val.trainer.callback_metrics["val/acc"]) <= 1.0
    assert (run / "validate" / "version_0" / "metrics.csv").is_file()


def test_second_fit_never_overwrites_the_first(shapes_root, tmp_path):
    lightning_cli(fit_args(shapes_root, tmp_path))
    first = tmp_path / "shapes_tiny" / "checkpoints" / "last.ckpt"
    before = digest(first)
    second = lightning_cli(fit_args(shapes_root, tmp_path, "--seed_everything", "1"))
    assert second.run_dir == tmp_path / "shapes_tiny_2"
    assert digest(first) == before


def test_resume_continues_the_step_count_in_the_same_folder(shapes_root, tmp_path):
    lightning_cli(fit_args(shapes_root, tmp_path, "--name", "r"))
    ckpt = tmp_path / "r" / "checkpoints" / "last.ckpt"
    resumed = lightning_cli(fit_args(shapes_root, tmp_path, "--name", "r", "--trainer.max_steps", "8",
                                     "--ckpt_path", str(ckpt)))
    assert resumed.trainer.global_step == 8
    assert resumed.run_dir == tmp_path / "r"
    steps = [int(line.split(",")[1]) for line in (tmp_path / "r" / "metrics.csv").read_text().splitlines()[1:]
             if line.split(",")[1]]
    assert min(steps) < 5 <= max(steps)  # the resumed run appended to the first run's metrics file


def test_print_config_round_trips(shapes_root, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, "--model.init_args.lr", "0.01", "--print_config"])
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["model"]["init_args"]["lr"] == 0.01
    (tmp_path / "printed.yaml").write_text(printed)
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "printed.yaml"), "--print_config"])
    assert capsys.readouterr().out == printed


@pytest.mark.parametrize("override", [["--model.init_args.lrr", "0.1"], ["--trainer.max_stepz", "3"]])
def test_unknown_config_key_names_the_key(override, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", CONFIG, *override])
    err = capsys.readouterr().err
    assert override[0].split(".")[-1].lstrip("-") in err


def test_typo_inside_a_yaml_file_names_the_key(tmp_path, capsys):
    cfg = yaml.safe_load(open(CONFIG))
    cfg["model"]["init_args"]["n_layerz"] = 3
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(tmp_path / "typo.yaml")])
    assert "n_layerz" in capsys.readouterr().err


def test_class_count_mismatch_is_caught(shapes_root, tmp_path):
    with pytest.raises(ValueError, match="num_classes=3"):
        lightning_cli(fit_args(shapes_root, tmp_path, "--model.init_args.num_classes", "3"))


def test_missing_data_folder_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", CONFIG, "--data.init_args.root", str(tmp_path / "none"), "--runs_dir", str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "image folder not found" in err and "pipelines data synth shapes" in err and "Traceback" not in err
