"""Plots and report.html: what they show is the run's own data, every section is there, names are escaped."""

from __future__ import annotations

import base64
import io
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image, shape_image
from PIL import Image
from test_cli import cnnkit as run_cnnkit

import cnnkit
from cnnkit.cli.main import main
from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_json
from cnnkit.inspect.plots import (
    CONFUSION_MAX_INCHES,
    DPI,
    GRID_IMAGES,
    PLOTS,
    confusion_figure,
    grid_figure,
    pyplot,
    schedule_figure,
)
from cnnkit.inspect.report import PLOT_TITLES
from cnnkit.runs.records import RunFiles
from cnnkit.settings.config import TrainConfig

pytest.importorskip("matplotlib", reason="plots need matplotlib (a dependency of cnnkit)")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):  # --lr auto: its range test is one of the report's plots
    return cnnkit.train(model="simplecnn", epochs=3, lr="auto", out=str(tmp_path_factory.mktemp("runs") / "digits"))


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory):  # one step: many wrong answers to mark
    return cnnkit.train(model="small-cnn", steps=1, out=str(tmp_path_factory.mktemp("runs") / "weak"))


@pytest.fixture(scope="module")
def muon_run(tmp_path_factory):  # the automatic recipe: muon's two rates; a folder: a path in the settings
    root = tmp_path_factory.mktemp("muon")
    shapes_folder(root / "data", "bar", "ring")
    return cnnkit.train(data=str(root / "data"), epochs=2, out=str(root / "run"))


def test_train_writes_the_report_unless_told_not_to(digits_run, tmp_path):
    assert "<h2>Results</h2>" in (digits_run.dir / "report.html").read_text()  # written at the end of train
    quiet = cnnkit.train(model="small-cnn", epochs=1, report=False, out=str(tmp_path / "quiet"))
    assert not (quiet.dir / "report.html").exists() and not (quiet.dir / PLOTS).exists()


@pytest.mark.parametrize("again", [False, True], ids=["written-by-train", "by-cnnkit-report"])
def test_report_holds_every_section_with_its_plot(digits_run, tmp_path, again):
    if again:
        result = run_cnnkit("report", str(digits_run.dir), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    page = (digits_run.dir / "report.html").read_text()
    for heading in ("Results", "Warnings", *PLOT_TITLES.values(), "Test results per class", "Model", "Settings"):
        assert f"<h2>{heading}</h2>" in page
    assert "<th>balanced accuracy (each class counts the same)</th>" in page and "<th>macro-F1</th>" in page
    assert (
        "<tr><th>class</th><th>test images</th><th>precision</th><th>recall</th><th>F1</th></tr>" in page
        and len(re.findall(r"<tr><th>\d</th><td>\d+</td>", page)) == 10
    )
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == len(PLOT_TITLES)
    for data in images:  # each a whole PNG, of a readable size
        assert min(Image.open(io.BytesIO(base64.b64decode(data))).size) >= 250
    parameters = read_json(digits_run.dir / "summary.json")["num_parameters"]
    assert re.search(rf"total\s+{parameters:,}", page)  # the model summary's table
    assert sorted(p.name for p in (digits_run.dir / PLOTS).iterdir()) == sorted(f"{n}.png" for n in PLOT_TITLES)


def test_confusion_plot_shows_the_test_counts_and_rows_of_one(digits_run):
    summary = read_json(digits_run.dir / "summary.json")
    counts = confusion_figure(summary["confusion_matrix"], summary["classes"], normalised=False)
    normalised = confusion_figure(summary["confusion_matrix"], summary["classes"], normalised=True)
    assert counts.axes[0].images[0].get_array().sum() == summary["num_test_images"]
    assert np.allclose(normalised.axes[0].images[0].get_array().sum(1), 1.0)


def test_schedule_plot_draws_the_rates_the_run_took(digits_run):
    files = RunFiles.read(digits_run.dir)
    line, recorded = schedule_figure(files.settings, files.rates, files.metrics).axes[0].lines
    steps, rates = line.get_data()
    steps_per_epoch = files.summary.num_train_images // files.settings["batch_size"]
    assert list(steps) == list(range(1, 3 * steps_per_epoch + 1))  # a rate a step: three epochs of full batches
    assert max(rates) == pytest.approx(files.settings["lr"])  # the one-cycle peak is the rate --lr auto found
    for step, rate in zip(*recorded.get_data(), strict=True):  # metrics.csv's rate is its epoch's first step's
        assert rates[int(step) - 1] == pytest.approx(rate)


def test_schedule_plot_of_a_muon_run_draws_and_names_the_one_rate_it_recorded(muon_run):
    files = RunFiles.read(muon_run.dir)
    settings = files.settings
    assert settings["optimizer"] == "muon" and settings["muon_lr"] != settings["lr"]  # two rates: which one?
    ax = schedule_figure(settings, files.rates, files.metrics).axes[0]
    curve, recorded = ax.lines
    steps, rates = (list(values) for values in curve.get_data())
    assert rates == [float(r["lr"]) for r in files.rates]  # every step's rate, as the run took it
    assert max(rates) == pytest.approx(settings["muon_lr"])  # Muon's peak, not SGD's
    points = list(zip(*recorded.get_data(), strict=True))
    assert [rate for _, rate in points] == [float(r["lr"]) for r in files.metrics]  # the rate the epoch line prints
    for step, rate in points:  # ... on the curve
        assert rates[steps.index(step)] == pytest.approx(rate)
    assert ax.get_ylabel() == "Muon's rate" and "SGD's" in ax.get_legend().get_title().get_text()


@pytest.mark.parametrize("classes, length, pixels", [(50, 40, 24), (200, 80, 12)])
def test_confusion_matrix_of_many_long_names_keeps_its_cells_and_labels_apart(classes, length, pixels):
    names = [f"{i:03d} " + "a long class name, " * 4 for i in range(classes)]
    names = [name[:length] for name in names]
    rng = random.Random(0)
    matrix = [[rng.randint(0, 3) + 20 * (i == j) for j in range(classes)] for i in range(classes)]
    fig = confusion_figure(matrix, names, normalised=False)
    ax = fig.axes[0]
    width, height = fig.get_size_inches()
    assert max(width, height) <= CONFUSION_MAX_INCHES  # grown, within its cap
    box = ax.get_position()  # in figure fractions: each cell in pixels of the saved PNG
    assert box.width * width * DPI / classes >= pixels and box.height * height * DPI / classes >= pixels
    renderer = fig.canvas.get_renderer()
    matrix_box = ax.get_window_extent(renderer)
    for labels, lowest in ((ax.get_yticklabels(), "y0"), (ax.get_xticklabels(), "x0")):
        extents = sorted((t.get_window_extent(renderer) for t in labels), key=lambda e: getattr(e, lowest))
        assert not any(e.overlaps(matrix_box) for e in extents)  # beside the cells, not on them
        assert all(e.x0 >= 0 and e.y0 >= 0 and e.x1 <= fig.bbox.x1 and e.y1 <= fig.bbox.y1 for e in extents)
        assert not any(a.overlaps(b) for a, b in zip(extents, extents[1:], strict=False))  # one name a line
    whole = length <= 40  # 40 characters fit at 8 points; 80 are cut short (the per-class table has them whole)
    for label, name in zip((t.get_text() for t in ax.get_yticklabels()), names, strict=True):
        assert label == name if whole else label.endswith("…") and name.startswith(label[:-1])


@pytest.mark.parametrize("again", [False, True], ids=["written-by-train", "by-cnnkit-report"])
def test_report_names_no_absolute_path(muon_run, tmp_path, monkeypatch, again):
    if again:  # from elsewhere, the run named by its absolute path
        monkeypatch.chdir(tmp_path)
        assert main(["report", str(muon_run.dir.resolve())]) == 0
    page = (muon_run.dir / "report.html").read_text()
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # embedded: nothing to move
    text = re.sub(r'src="data:[^"]*"', "", page)
    root = muon_run.dir.parent  # holds the data and the run
    assert str(root) not in text and os.path.realpath(root) not in text
    assert "<tr><th>data</th><td>../data</td></tr>" in page  # the data folder, from the run folder
    assert "from this run folder" in page  # the model summary's heading


def test_grid_marks_exactly_the_wrong_predictions(weak_run):
    test, logits, labels = weak_run.test_predictions()
    n = GRID_IMAGES
    guesses, truths = logits[:n].argmax(1).tolist(), labels[:n].tolist()
    fig = grid_figure(test.images[:n], truths, guesses, weak_run.classes)
    captions = fig.axes[0].texts
    red = [caption.get_color() == "red" for caption in captions]
    assert red == [g != t for g, t in zip(guesses, truths, strict=True)]
    assert 0 < sum(red) < n  # the check is not empty either way
    assert len(fig.axes[0].patches) == sum(red)  # a frame round each wrong one
    for caption, guess, truth in zip(captions, guesses, truths, strict=True):
        assert caption.get_text().startswith(weak_run.classes[guess])
        assert (f"(true: {weak_run.classes[truth]})" in caption.get_text()) == (guess != truth)


def test_report_without_the_test_images_says_why(tmp_path, image_folder):
    run = cnnkit.train(data=str(image_folder), model="small-cnn", epochs=1, out=str(tmp_path / "run"))
    shutil.rmtree(image_folder)
    result = run_cnnkit("report", str(run.dir), cwd=tmp_path)
    assert result.returncode == 0 and "the test images are not drawn" in result.stderr
    page = (run.dir / "report.html").read_text()
    drawn = len(PLOT_TITLES) - 3  # no range test (a set --lr), and neither the test images nor the top losses
    assert page.count("data:image/png") == drawn and "the test images are not drawn" in page
    assert "data folder ../shapes does not exist" in page and str(tmp_path) not in page  # from the run folder


def shapes_folder(root: Path, bar: str, ring: str) -> Path:
    """A folder of two classes, 40 bars and 40 rings, under these names."""
    rng = np.random.default_rng(0)
    for label, kind in ((bar, "bar"), (ring, "ring")):
        for i in range(40):
            save_image(root / label / f"{i}.png", shape_image(kind, 16, rng))
    return root


def run_on_classes_named(tmp_path: Path, bar: str, ring: str) -> cnnkit.Run:
    """A one-epoch run on a folder of two classes, bars and rings, with these names."""
    shapes_folder(tmp_path / "data", bar, ring)
    return cnnkit.train(data=str(tmp_path / "data"), model="small-cnn", epochs=1, out=str(tmp_path / "run"))


def test_class_names_are_escaped_and_drawn_as_text_not_mathtext(tmp_path):
    """HTML in a name is shown, not run; dollar signs are text, not matplotlib's mathtext (which once ended the
    run in a traceback after "run saved")."""
    run = run_on_classes_named(tmp_path, "<b>cost $5 or $6", "a&ring $\\frac{1}{$")
    assert (run.dir / "report.html").is_file() and len(list((run.dir / "plots").glob("*.png"))) >= 4
    assert run_cnnkit("report", str(run.dir), cwd=tmp_path).returncode == 0
    page = (run.dir / "report.html").read_text()
    assert "<b>cost" not in page and "&lt;b&gt;cost $5 or $6" in page and "a&amp;ring $\\frac{1}{$" in page


def test_without_matplotlib_the_message_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
    with pytest.raises(CnnkitError, match=r"pip install matplotlib"):
        pyplot()


def test_compare_shows_what_differs_and_the_results_side_by_side(digits_run, tmp_path):
    other = cnnkit.train(model="simplecnn", epochs=3, lr=0.01, out=str(tmp_path / "faster"))
    result = run_cnnkit("compare", str(digits_run.dir), str(other.dir), "--plot", "curves.png", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    found = TrainConfig.from_yaml(digits_run.dir / "config.yaml").lr  # --lr auto's rate
    assert float(rows["lr"][0]) == pytest.approx(found, rel=1e-3) and rows["lr"][1] == "0.01"
    assert "model" not in rows and "out" not in rows  # the same in both, or not a setting
    accuracies = [read_json(run.dir / "summary.json")["test_accuracy"] for run in (digits_run, other)]
    line = next(line for line in result.stdout.splitlines() if line.startswith("test accuracy"))
    assert [float(a) for a in line.split()[2:]] == pytest.approx(accuracies, abs=5e-5)
    assert Image.open(tmp_path / "curves.png").size[0] > 500


@pytest.mark.parametrize("runs, message", [(["one"], "at least two run folders"), (["a", "b"], "not a finished")])
def test_compare_mistakes_end_in_one_line(tmp_path, runs, message):
    result = run_cnnkit("compare", *runs, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")),
    reason="no Chromium here (apt-get install chromium); scripts/report_screenshot.py takes the same screenshot",
)
def test_report_renders_in_headless_chromium(digits_run, tmp_path):
    shot = tmp_path / "report.png"
    script = [sys.executable, str(ROOT / "scripts" / "report_screenshot.py"), str(digits_run.dir), "--out", str(shot)]
    result = subprocess.run(script, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape == (9000, 1200)
    bands = (pixels < 200).any(axis=1)[:8000].reshape(16, 500).mean(axis=1)  # rows with ink, per 500 pixels
    assert (bands > 0.3).all(), bands  # text and plots all the way down: every section drew, none is blank
