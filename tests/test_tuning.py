"""Help in choosing settings: the learning-rate range test (`lr-find`, `--lr auto`), sweeps, and TensorBoard."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
from test_cli import cnnkit as run_cnnkit

import cnnkit
from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_json
from cnnkit.settings.config import TrainConfig
from cnnkit.training.lr_find import RATES, STEPS, suggest
from cnnkit.tune.search import Param, parse_search, random_points
from cnnkit.tune.sweep import sweep


def test_suggestion_reads_the_lowest_finite_point_not_an_early_spike():
    rates = [10 ** (-6 + i / 4) for i in range(20)]
    # an early spike (index 2), whose fall is the steepest slope, then the real descent, then NaN and inf
    falls = [2.3, 2.3, 9.0, 2.3, 2.2, 2.0, 1.6, 1.2, 0.9, 0.7, 0.5, 0.6, 1.5, 4.0]
    smoothed = [*falls, math.nan, math.inf, *[math.nan] * 4]
    assert suggest(rates, smoothed) == pytest.approx(rates[10] / 10)  # a tenth of the lowest finite point's rate
    assert suggest(rates, [math.nan] * 20) is None


def test_lr_find_sweeps_up_and_suggests_a_rate_on_digits():
    test = cnnkit.lr_find(model="simplecnn")
    assert len(test.rates) <= STEPS and test.rates == sorted(test.rates) and test.rates[0] == pytest.approx(1e-7)
    assert 1e-4 < test.suggestion < 0.1  # adamw on the digits: the usual 1e-3 to 1e-2


def test_lr_auto_leaves_no_trace_but_its_rate(tmp_path):
    auto = cnnkit.train(model="small-cnn", epochs=2, lr="auto", report=False, out=str(tmp_path / "auto"))
    found = TrainConfig.from_yaml(auto.dir / "config.yaml").lr
    assert isinstance(found, float) and 1e-5 < found < 1
    assert read_json(auto.dir / "lr_find.json")["suggestion"] == pytest.approx(found, rel=2e-3)
    assert read_json(auto.dir / "plan.json")["lr"] == found  # what the run decided, beside its settings
    plain = cnnkit.train(model="small-cnn", epochs=2, lr=found, report=False, out=str(tmp_path / "plain"))
    # the range test's steps were undone (weights, optimiser, every RNG): the same run as one given the rate
    assert plain.summary.test_accuracy == auto.summary.test_accuracy
    for a, b in zip(auto.model.state_dict().values(), plain.model.state_dict().values(), strict=True):
        assert a.equal(b)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--lr", "auto", "--optimizer", "muon"], "cannot be found for muon's two rates"),
        (["--lr", "auto", "--head-lr", "0.01"], "--head-lr 0.01 is found by --lr auto: leave it out"),
        (["--lr", "fast"], "setting 'lr' must be float, got 'fast'"),
    ],
)
def test_lr_auto_mistakes_end_in_one_line(tmp_path, args, message):
    result = run_cnnkit("train", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_lr_find_command_prints_the_rate_and_draws_the_curve(tmp_path):
    pytest.importorskip("matplotlib")
    result = run_cnnkit("lr-find", "--plot", "curve.png", cwd=tmp_path)  # the automatic recipe's model, with SGD
    assert result.returncode == 0, result.stderr
    rate = float(result.stdout.split("suggested --lr ")[1].split(":")[0])
    # a tenth of where the loss was lowest; at most a tenth of the last rate (reached on one thread, not on two)
    assert 1e-5 < rate <= RATES[1] / 10 and (tmp_path / "curve.png").stat().st_size > 10_000
    assert not (tmp_path / "runs").exists()  # nothing kept


def test_search_spaces_are_parsed_and_checked(tmp_path):
    lr, batch = parse_search(["lr=1e-4..1e-1", "batch-size=32,64"])
    assert lr == Param("lr", low=1e-4, high=0.1) and lr.log_scale
    assert batch == Param("batch_size", choices=(32, 64))
    points = random_points([lr, batch], 50, seed=3)
    assert points == random_points([lr, batch], 50, seed=3)  # the same trials after a stop
    assert all(1e-4 <= p["lr"] <= 0.1 and p["batch_size"] in (32, 64) for p in points)
    assert sum(p["lr"] < 3e-3 for p in points) > 15  # a log scale: half the draws below the middle decade
    for search, message in [
        (["size=1,2"], "not a setting a sweep can search"),
        (["out=a,b"], "not a setting a sweep can search"),
        (["lr=0.1..0.01"], "low end must be below its high end"),
        (["model=a..b"], "a range is for numbers"),
        (["lr"], "must be KEY=V1,V2,... or KEY=LOW..HIGH"),
        (["batch_size=32,big"], "setting 'batch_size' must be int"),
        ({"lr": 5}, "search lr: give a list of values to choose from"),  # Python's sweep(): a TypeError once
    ]:
        with pytest.raises(CnnkitError, match=message):
            parse_search(search)
    for search, options, message in [
        (["lr=1e-3..1e-2"], {}, "a grid needs values to list for lr"),
        (["lr=1e-3,1e-2"], {"trials": 3}, "--trials 3: give 1 or more, for --method random or tpe"),
        (["lr=1e-3,1e-2"], {"method": "random", "trials": 0}, "--trials 0: give 1 or more"),
        (["lr=1e-3,1e-2"], {"method": "bayes"}, "--method bayes must be one of grid, random, tpe"),
    ]:
        with pytest.raises(CnnkitError, match=message):
            sweep(search, out=str(tmp_path / "unused"), **options)
    assert not (tmp_path / "unused").exists()  # refused before any folder was made


SWEEP_ARGS = ["--search", "lr=0.001,0.003,0.01,0.03", "--search", "batch-size=32,64", "--model", "small-cnn"]


def test_grid_sweep_of_8_trials_ranks_and_tests_only_the_winner(tmp_path):
    result = run_cnnkit("sweep", *SWEEP_ARGS, "--epochs", "3", "--out", "sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    state = read_json(tmp_path / "sweep" / "sweep.json")
    assert len(state["trials"]) == 8 and all(t["status"] == "done" for t in state["trials"].values())
    summaries = {name: read_json(tmp_path / "sweep" / name / "summary.json") for name in state["trials"]}
    tested = {name for name, summary in summaries.items() if summary["test_accuracy"] is not None}
    assert tested == {state["winner"]}  # the test split was touched once, by the winner alone
    best = max(state["trials"].values(), key=lambda t: t["val_accuracy"])["val_accuracy"]
    assert state["trials"][state["winner"]]["val_accuracy"] == best
    assert (tmp_path / "sweep" / state["winner"] / "report.html").is_file()
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("trial "))
    table = [line.split() for line in lines[header + 1 : header + 9]]
    accuracies = [float(row[2]) for row in table]
    assert table[0][0] == state["winner"] and accuracies == sorted(accuracies, reverse=True)


def test_a_point_that_cannot_train_fails_alone_with_its_reason_and_the_grid_is_counted_right(tmp_path):
    # batch 1 and batch norm: refused before training (it once ended the sweep in a raw ValueError, for good)
    trials = sweep(["batch-size=1,16"], epochs=1, report=False, out=str(tmp_path / "sweep"))
    state = read_json(tmp_path / "sweep" / "sweep.json")
    assert state["trials_planned"] == 2 and [t["trial"] for t in trials] == ["trial-002", "trial-001"]
    failed = state["trials"]["trial-001"]
    assert failed["status"] == "failed" and "--batch-size 1 is too small for fastcnn" in failed["error"]
    assert state["winner"] == "trial-002"
    with pytest.raises(CnnkitError, match="its batch norm layers need at least 2 images a batch"):
        cnnkit.train(model="resnet9-small", batch_size=1, epochs=1, out=str(tmp_path / "one"))
    assert not (tmp_path / "one").exists()  # refused before anything was written


def test_a_stopped_sweep_goes_on_where_it_stopped(tmp_path):
    args = [sys.executable, "-m", "cnnkit", "sweep", *SWEEP_ARGS, "--epochs", "6", "--out", "sweep"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "sweep" / "trial-003" / "checkpoint.safetensors").exists():
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130 and "give the same command again" in stderr
    before = read_json(tmp_path / "sweep" / "sweep.json")["trials"]
    ended = [name for name, t in before.items() if t["status"] == "done"]
    assert ended[:2] == ["trial-001", "trial-002"] and len(ended) < 8
    written = {name: (tmp_path / "sweep" / name / "summary.json").stat().st_mtime_ns for name in ended}
    again = run_cnnkit("sweep", *SWEEP_ARGS, "--epochs", "6", "--out", "sweep", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    state = read_json(tmp_path / "sweep" / "sweep.json")
    assert len(state["trials"]) == 8 and all(t["status"] == "done" for t in state["trials"].values())
    for name, mtime in written.items():  # trained once; the winner's summary alone gains its test results
        assert name == state["winner"] or (tmp_path / "sweep" / name / "summary.json").stat().st_mtime_ns == mtime
    other = run_cnnkit("sweep", "--search", "lr=0.1,0.2", "--out", "sweep", cwd=tmp_path)
    assert other.returncode == 2 and "holds another sweep" in other.stderr


def test_tpe_sweep_prunes_poor_trials_and_tests_the_winner(tmp_path):
    pytest.importorskip("optuna", reason="--method tpe needs the sweep extra")
    trials = sweep(
        {"lr": (1e-4, 0.3)}, method="tpe", trials=6, model="small-cnn", epochs=4, report=False, out=str(tmp_path / "s")
    )
    assert len(trials) == 6 and {t["status"] for t in trials} <= {"done", "pruned"}
    assert "test_accuracy" in trials[0]
    assert all("test_accuracy" not in t for t in trials[1:])
    for t in trials:
        assert 1e-4 <= t["settings"]["lr"] <= 0.3
        epochs = len(list(csv.DictReader((tmp_path / "s" / t["trial"] / "metrics.csv").open())))
        assert epochs == (4 if t["status"] == "done" else len(t["curve"]))  # a pruned trial stopped early


def test_tensorboard_logs_what_metrics_csv_holds(tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    run = cnnkit.train(model="small-cnn", epochs=3, tensorboard=True, report=False, out=str(tmp_path / "run"))
    events = accumulator.EventAccumulator(str(run.dir / "tensorboard"))
    events.Reload()
    with (run.dir / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = [s.value for s in events.Scalars("val/accuracy")]
    assert logged == pytest.approx([float(r["val_accuracy"]) for r in rows])
    assert [s.value for s in events.Scalars("lr")] == pytest.approx([float(r["lr"]) for r in rows])
    assert json.loads((run.dir / "summary.json").read_text())["test_accuracy"] is not None
