"""report.html: one self-contained page per run (images embedded) with the results, warnings, every plot,
the model summary and the settings. Every name a user chose (classes, paths) is escaped."""

from __future__ import annotations

import base64
import html
import os
import re
from functools import partial
from pathlib import Path

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import atomic_write
from cnnkit.core.progress import say, utf8
from cnnkit.inspect.plots import Predictions, write_plots
from cnnkit.inspect.summary import format_summary, run_summary
from cnnkit.runs.records import RunFiles, RunSummary
from cnnkit.runs.run import Run, load

REPORT = "report.html"
PLOT_TITLES = {
    "curves": "Learning curves",
    "learning_rate": "Learning rate",
    "lr_find": "Learning-rate range test (--lr auto)",
    "confusion": "Confusion matrix",
    "confusion_normalised": "Confusion matrix, normalised per true class",
    "per_class_accuracy": "Accuracy per class",
    "test_images": "Test images: the model's guess (the truth under a wrong one, in red)",
    "top_losses": "Highest losses, the most confidently wrong first: guess and its probability, the truth",
}
RESULTS = (  # summary.json's headline figures, in the order a reader wants them
    ("test_accuracy", "test accuracy"),
    ("test_balanced_accuracy", "balanced accuracy (each class counts the same)"),
    ("test_macro_f1", "macro-F1"),
    ("test_loss", "test loss"),
    ("val_accuracy", "best validation accuracy"),
    ("best_epoch", "best epoch"),
    ("num_train_images", "training images"),
    ("num_val_images", "validation images"),
    ("num_test_images", "test images"),
    ("num_parameters", "parameters"),
    ("train_seconds", "training seconds"),
    ("seconds_used", "seconds in all"),
    ("device_name", "device"),
    ("torch_version", "torch"),
    ("git_commit", "cnnkit commit"),
)
STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}
img{max-width:100%;border:1px solid #eee}pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
.warning{background:#fff3cd;border:1px solid #e0c060;padding:.6em 1em;margin:.5em 0}"""
# an absolute POSIX path in a text: a slash no word, dot or slash leads (not `1/2`, not `https://`), up to a space,
# a quote, a bracket or punctuation that ends a phrase
ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])/[^\s:;,'\"<>|()\[\]]+")


def write_report(
    run_dir: Path, run: Run | None = None, predictions: Predictions | None = None
) -> tuple[Path, str | None]:
    """Draw the run's plots and write RUN/report.html; returns its path, and why the test images are not in it
    when they are not (the data moved or changed since the run). A run just trained passes itself and its test
    `predictions`; otherwise the run is loaded and its test split predicted again."""
    files = RunFiles.read(run_dir)
    summary, settings = files.summary, files.settings
    if summary.test_accuracy is None:
        raise CnnkitError(f"{run_dir} was trained with --no-test, and a report shows the test results")
    run = run or load(run_dir, device="cpu")
    run.network("draw a report of")  # it shows the network's layers
    missing = None
    if predictions is None:
        try:
            predictions = run.test_predictions()
        except CnnkitError as e:
            missing = f"the test images are not drawn: {e}"
    plots = write_plots(files, predictions)
    title, model = run_summary(run)
    title = title.replace(f" from {run.dir}", " from this run folder")  # the folder moves, its path does not
    here = partial(relative_paths, run_dir=run_dir)  # the page names no path of this machine: it may be sent on
    sections = [
        f"<h1>{_text(run_dir.name)}</h1>",
        f"<p>{_text(str(summary.model))} on {_text(here(str(summary.data)))}</p>",
        "<h2>Results</h2>",
        _table((label, getattr(summary, key)) for key, label in RESULTS if getattr(summary, key) is not None),
        "<h2>Warnings</h2>",
        "".join(f'<div class="warning">{_text(here(w))}</div>' for w in [*summary.warnings, *filter(None, [missing])])
        or "<p>none</p>",
        *_race_section(files.race),
        *(f"<h2>{PLOT_TITLES[name]}</h2>\n{_image(path)}" for name, path in plots.items()),
        "<h2>Test results per class</h2>",
        _class_table(summary),
        "<h2>Model</h2>",
        f"<pre>{_text(here(chr(10).join(format_summary(title, model))))}</pre>",
        "<h2>Settings</h2>",
        "<p>A path is relative to this run folder.</p>",
        _table((k, here(v) if isinstance(v, str) else v) for k, v in settings.items()),
    ]
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_text(run_dir.name)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(sections) + "\n</body></html>\n"
    )
    path = run_dir / REPORT
    atomic_write(path, lambda tmp: tmp.write_text(page, encoding="utf-8"))
    return path, missing


def relative_paths(text: str, run_dir: Path) -> str:
    """`text` with each absolute path in it made relative to the run folder (`plots/curves.png`, `../data`),
    so a report moved, zipped or sent with its folder still names the right places, and no home folder. A
    text that is one path (a setting) is taken whole, spaces and all; in a sentence a path ends at a space."""
    if os.path.isabs(text):
        return _relative(text, run_dir)

    def relative(match: re.Match) -> str:
        path = match.group(0)
        end = len(path.rstrip("."))  # a sentence's full stop is no part of the path
        return _relative(path[:end], run_dir) + path[end:]

    return ABSOLUTE_PATH.sub(relative, text)


def _relative(path: str, run_dir: Path) -> str:
    # both with links resolved: the settings hold resolved paths, the run folder may be named through a link
    return os.path.relpath(os.path.realpath(path), os.path.realpath(run_dir))


def _class_table(summary: RunSummary) -> str:
    """Each class's test images, precision, recall and F1 (runs older than them: its accuracy alone)."""
    if summary.per_class is None:
        return _table((summary.per_class_accuracy or {}).items())
    head = "<tr><th>class</th><th>test images</th><th>precision</th><th>recall</th><th>F1</th></tr>"
    rows = "".join(
        f"<tr><th>{_text(name)}</th>"
        + "".join(f"<td>{_text(shown(s[key]))}</td>" for key in ("images", "precision", "recall", "f1"))
        + "</tr>"
        for name, s in summary.per_class.items()
    )
    return f"<table>{head}{rows}</table>"


def _race_section(race: dict | None) -> list[str]:
    """What the automatic recipe's race tried, and what each candidate scored (none without a race)."""
    if race is None:
        return []
    head = (
        "<tr><th>round</th><th>candidate</th><th>steps</th><th>validation balanced accuracy</th><th>accuracy</th></tr>"
    )
    rows = "".join(
        f"<tr><td>{number}</td><th>{_text(c['name'])}</th>"
        + "".join(f"<td>{shown(c[key])}</td>" for key in ("steps", "val_balanced_accuracy", "val_accuracy"))
        + "</tr>"
        for number, scored in enumerate(race["rounds"], 1)
        for c in scored
    )
    return [
        "<h2>The recipe's race</h2>",
        f"<p>The rule: {_text(race['rule'])}. The winner: <b>{_text(race['winner']['name'])}</b>.</p>",
        # measured on the images, not raced (a race.json from before turns were measured has no turns line)
        *(f"<p>{_text(race[key])}</p>" for key in ("size", "turns") if race.get(key)),
        f"<table><tr>{head}</tr>{rows}</table>",
    ]


def _table(rows) -> str:
    cells = "".join(f"<tr><th>{_text(str(k))}</th><td>{_text(shown(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def shown(value: object) -> str:
    """A setting or a result as a reader wants it: thousands grouped, four significant digits."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.4g}" if isinstance(value, float) else str(value)


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{_text(path.stem)}" src="data:image/png;base64,{data}">'


def _text(text: str) -> str:
    return html.escape(utf8(text), quote=True)  # a folder name's byte that is not UTF-8: no page holds it


def add_report(run: Run, predictions: Predictions) -> None:
    """report.html at the end of a run, from the test `predictions` just made; the run is whole without it, so
    a missing extra is only a note."""
    try:
        path, missing = write_report(run.dir, run, predictions)
    except CnnkitError as e:
        say(f"note: no report ({e}); draw it later with: cnnkit report {run.dir}")
        return
    say(f"report: {path}" + (f" ({missing})" if missing else ""))
