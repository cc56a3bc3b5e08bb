"""The `cnnkit` command as a user runs it: output, exit codes, and one-line errors without tracebacks."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import save_image

from cnnkit.cli.main import build_parser, main


def cnnkit(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnkit", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--epochs", "0"], "--epochs 0 must be at least 1"),
        (["train", "--model", "vgg"], "unknown model 'vgg'; choose one of: lenet"),
        (["train", "--data", "imagenet"], "unknown data set 'imagenet'"),
        (["train", "--data", "./no/such/folder"], "does not exist"),
        (["train", "--split", "80/30/10"], "must be three percentages"),
        (["train", "--config", "missing.yaml"], "config file missing.yaml does not exist"),
        (["eval", "not-a-run"], "not a finished cnnkit run folder"),
        (["train", "--epochs", "inf"], "setting 'epochs' must be int, got 'inf'"),
        (["train", "--batch-size", "1e400"], "setting 'batch_size' must be int"),
        (["train", "--lr", "inf"], "setting 'lr' must be a finite number"),
        (["train", "--lr", "nan"], "setting 'lr' must be a finite number"),
        (["train", "--seed", "1e30"], "must be a whole number from 0 to 2^63 - 1"),
        (["train", "--split", "nan/0/100"], "must be three percentages"),
        (["train", "--translate", "50"], "--translate 50 must be smaller than the 16-pixel images"),
        (["train", "--resume", ""], "--resume needs the folder of the run to continue"),
    ],
)
def test_user_mistakes_end_in_one_line(tmp_path, args, message, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2  # in this process: an exception escaping main would fail the test with its traceback
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-made


def every_command() -> list[str]:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return list(commands.choices)


@pytest.mark.parametrize("command", every_command())
def test_every_command_explains_itself_with_help(command, capsys):
    with pytest.raises(SystemExit) as ended:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert ended.value.code == 0 and "usage:" in out and command in out
    if command == "train":  # a help text with a percent sign is read as a %-format by argparse
        text = " ".join(out.split())
        assert "the first 30%)" in text
        # the default run is the automatic recipe: --help does not pass off a named model's default as its own
        assert "images per training step (default: chosen from the data; with a named --model: 32)" in text


def test_a_mistake_is_answered_without_waiting_for_torchvision(tmp_path):
    """Importing torchvision takes seconds: only what needs it (images, backbones, named data sets) imports it."""
    code = (
        "import sys; from cnnkit.cli.main import main; main(['train', '--epochs', '0']); "
        "print('torchvision' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert "--epochs 0 must be at least 1" in result.stderr and result.stdout.strip() == "False"


def test_train_then_eval_predict_and_repeat(tmp_path):
    result = cnnkit("train", "--epochs", "3", "--out", "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("epoch ") for line in lines) == 3  # one plain line per epoch in a pipe
    assert "\r" not in result.stdout + result.stderr  # and no progress bar redrawing itself into the log
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())

    evaluated = cnnkit("eval", "run", "--json", cwd=tmp_path)
    assert json.loads(evaluated.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"])

    from cnnkit.data import load_data

    test = load_data("digits").splits["test"]
    image = save_image(tmp_path / "digit.png", test.images[0, 0].numpy())
    predicted = cnnkit("predict", "run", str(image), "--top-k", "2", "--json", cwd=tmp_path)
    assert len(json.loads(predicted.stdout)[0]["predictions"]) == 2
    plain = cnnkit("predict", "run", str(image), cwd=tmp_path)
    assert plain.stdout.startswith(f"{image}: ")

    repeated = cnnkit("train", "--config", "run/config.yaml", "--out", "again", "--no-report", cwd=tmp_path)
    assert repeated.returncode == 0, repeated.stderr
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["test_accuracy"] == summary["test_accuracy"]


def test_broken_image_stops_before_training_and_skip_flag_trains(image_folder, tmp_path):
    (image_folder / "bar" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    stopped = cnnkit("train", "--data", str(image_folder), "--model", "small-cnn", "--epochs", "1", cwd=tmp_path)
    assert stopped.returncode == 2 and "Traceback" not in stopped.stderr
    assert "broken.jpg" in stopped.stderr and "--skip-bad-images" in stopped.stderr
    assert "epoch" not in stopped.stdout
    trained = cnnkit(
        "train",
        "--data",
        str(image_folder),
        "--model",
        "small-cnn",
        "--epochs",
        "1",
        "--skip-bad-images",
        "--no-report",
        "--out",
        "run",
        cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    assert "skipped bad image" in trained.stdout and "broken.jpg" in trained.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert len(summary["skipped_images"]) == 1


def test_models_lists_names_with_parameter_counts(tmp_path):
    result = cnnkit("models", cwd=tmp_path)
    assert result.returncode == 0
    assert any(line.split()[:2] == ["lenet", "62,006"] for line in result.stdout.splitlines())


def test_output_cut_short_by_its_reader_is_no_error(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "models"],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    process.stdout.close()  # as `cnnkit models | head -0` would, before cnnkit writes a line
    assert process.wait(timeout=120) == 141
    assert "Traceback" not in process.stderr.read()


def test_repeating_a_run_on_changed_data_says_so(tmp_path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        for i in range(12):
            save_image(tmp_path / "data" / label / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    args = ["--data", "data", "--model", "small-cnn", "--epochs", "1", "--no-report"]
    assert cnnkit("train", *args, "--out", "first", cwd=tmp_path).returncode == 0
    same = cnnkit("train", "--config", "first/config.yaml", "--out", "same", cwd=tmp_path)
    assert same.returncode == 0 and "data changed" not in same.stderr
    save_image(tmp_path / "data" / "a" / "new.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    changed = cnnkit("train", "--config", "first/config.yaml", "--out", "changed", cwd=tmp_path)
    assert changed.returncode == 0 and "note: the data changed since the run this config came from" in changed.stderr
