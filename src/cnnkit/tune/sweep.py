"""A sweep: one run per point of a search over chosen settings, ranked by validation accuracy, with the test
split touched once, by the winner alone (a test score that chose among runs would flatter the winner).

Each trial is a normal run folder inside the sweep's folder, trained with test=False; sweep.json records each
trial as it ends, so a stopped sweep goes on where it stopped when it is given again. Once its winner is
tested the sweep is finished: more trials would choose by the test, so they belong in a new sweep.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_json, write_json
from cnnkit.core.progress import columns, say
from cnnkit.data import data_name
from cnnkit.inspect.report import add_report
from cnnkit.runs.folder import SUMMARY, new_run_dir
from cnnkit.runs.run import load
from cnnkit.session.train import resume, train
from cnnkit.settings.config import TrainConfig
from cnnkit.training.checkpoint import CHECKPOINT
from cnnkit.training.evaluation import test_metrics
from cnnkit.training.events import Callback, EpochResult
from cnnkit.training.stopping import TrainingInterrupted
from cnnkit.training.trainer import Trainer
from cnnkit.tune.search import METHODS, Param, grid_points, import_optuna, parse_search, random_points, readable

SWEEP = "sweep.json"
DEFAULT_TRIALS = 8  # for random and tpe; a grid has as many trials as points


class TrialWatch(Callback):
    """Each epoch's validation accuracy of a trial; with an Optuna trial, a poor one is stopped early (pruned)."""

    def __init__(self, trial: Any = None):
        self.trial, self.pruned = trial, False
        self.curve: dict[int, float] = {}

    def on_epoch_end(self, trainer: Trainer, result: EpochResult) -> None:
        if result.val_accuracy is None:
            return
        self.curve[result.epoch] = result.val_accuracy
        if self.trial is not None:
            self.trial.report(result.val_accuracy, result.epoch)
            if self.trial.should_prune():
                self.pruned = trainer.stop_training = True


def sweep(
    search: dict[str, list | tuple] | list[str],
    method: str = "grid",
    trials: int | None = None,
    **settings,
) -> list[dict]:
    """Train one run per point of `search` (see `cnnkit.tune.search.parse_search`), rank them by validation
    accuracy and test the winner; `settings` are `train`'s, the same for every trial, and `out` is the sweep's
    folder. Returns the trials, best first, the winner with its test results."""
    params = parse_search(search)
    if method not in METHODS:
        raise CnnkitError(f"--method {method} must be one of {', '.join(METHODS)}")
    base = TrainConfig.from_dict({**settings, "out": None})  # every shared setting is checked before any trial
    if base.val_fraction == 0:
        raise CnnkitError("a sweep ranks its trials by validation accuracy: --val-fraction must be above 0")
    if trials is not None and (trials < 1 or method == "grid"):
        raise CnnkitError(f"--trials {trials}: give 1 or more, for --method random or tpe (a grid trains every point)")
    count = trials if trials is not None else DEFAULT_TRIALS
    if method == "tpe":
        import_optuna()  # a missing extra is said before any folder is made
    points = []  # tpe draws its points one at a time, from the trials before
    if method == "grid":
        points = grid_points(params)
    elif method == "random":
        points = random_points(params, count, base.seed)
    folder, _ = new_run_dir(settings.pop("out", None), f"sweep-{data_name(base.data)}")
    state = _open(
        folder,
        {
            "search": {p.key: p.choices or (p.low, p.high) for p in params},
            "method": method,
            "trials_planned": len(points) if method == "grid" else count,
            "settings": settings,
        },
    )
    if state.get("winner") is None:
        if method == "tpe":
            _run_tpe(folder, state, params, count, settings, base.seed)
        else:
            for i, point in enumerate(points):
                _trial(folder, state, i, point, settings, TrialWatch())
        _test_winner(folder, state, base.report)
    return ranked(state)


def _open(folder: Path, plan: dict) -> dict:
    """The sweep's state: new, or the one a stopped sweep left, if it was the same sweep."""
    path = folder / SWEEP
    if not path.is_file():
        if any(folder.iterdir()):
            raise CnnkitError(f"{folder} holds files but no sweep: give --out a new or empty folder")
        state = {**plan, "trials": {}, "winner": None}
        write_json(path, state)
        return state
    state = read_json(path)
    if {k: state.get(k) for k in plan} != _as_json(plan):
        raise CnnkitError(f"{folder} holds another sweep (other settings or search); give --out a new folder")
    say(f"going on with the sweep in {folder}: {len(state['trials'])} trials recorded")
    return state


def _as_json(value: dict) -> dict:
    """`value` as it reads back from sweep.json (tuples become lists)."""
    return json.loads(json.dumps(value))


def _trial(folder: Path, state: dict, index: int, point: dict, settings: dict, watch: TrialWatch) -> dict:
    """Train (or go on with) one trial, and record how it ended; a recorded trial is not trained again."""
    name = f"trial-{index + 1:03d}"
    record = state["trials"].get(name)
    if record is not None and record["status"] != "running":
        return record
    run_dir = folder / name
    state["trials"][name] = {"settings": point, "status": "running"}
    write_json(folder / SWEEP, state)
    say(f"{name}: " + ", ".join(f"{k} {v}" for k, v in point.items()))
    try:
        if (run_dir / CHECKPOINT).is_file() and not (run_dir / SUMMARY).is_file():
            run = resume(run_dir, callbacks=[watch])
        else:
            shutil.rmtree(run_dir, ignore_errors=True)  # stopped before its first checkpoint: starts again
            trial = {**settings, **point, "out": str(run_dir), "test": False, "report": False}
            run = train(**trial, callbacks=[watch])
        summary = run.summary
        if summary.val_accuracy is None:  # a point of --val-fraction 0: trained, but nothing to rank it by
            raise CnnkitError("a sweep ranks its trials by validation accuracy: --val-fraction must be above 0")
        record = {
            "settings": point,
            "status": "pruned" if watch.pruned else "done",
            "val_accuracy": summary.val_accuracy,
            "curve": watch.curve,
        }
    except (TrainingInterrupted, KeyboardInterrupt):
        raise TrainingInterrupted(f"the sweep stopped in {name}; give the same command again to go on") from None
    except Exception as e:  # one bad point (a rate so high the loss diverged) does not end the sweep
        error = str(e) if isinstance(e, CnnkitError) else f"{type(e).__name__}: {e}"  # not cnnkit's own: named
        say(f"{name} failed: {error}")
        record = {"settings": point, "status": "failed", "error": error}
    state["trials"][name] = record
    write_json(folder / SWEEP, state)
    return record


def _run_tpe(folder: Path, state: dict, params: list[Param], count: int, settings: dict, seed: int) -> None:
    optuna = import_optuna()
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),  # after 2 trials, from epoch 2
    )
    space = {p.key: p.distribution() for p in params}
    for record in state["trials"].values():  # a stopped sweep: Optuna learns again what the trials found
        if record["status"] == "running":
            study.enqueue_trial(record["settings"])
        elif record["status"] != "failed":
            curve = {int(k): v for k, v in record["curve"].items()}
            pruned = record["status"] == "pruned"
            study.add_trial(
                optuna.trial.create_trial(
                    params=record["settings"],
                    distributions=space,
                    intermediate_values=curve,
                    value=None if pruned else record["val_accuracy"],
                    state=optuna.trial.TrialState.PRUNED if pruned else optuna.trial.TrialState.COMPLETE,
                )
            )
    finished = sum(r["status"] != "running" for r in state["trials"].values())
    for index in range(finished, count):
        trial = study.ask(space)
        point = {k: readable(v) for k, v in trial.params.items()}
        record = _trial(folder, state, index, point, settings, TrialWatch(trial))
        if record["status"] == "done":
            study.tell(trial, record["val_accuracy"])
        else:
            study.tell(
                trial, state=getattr(optuna.trial.TrialState, "PRUNED" if record["status"] == "pruned" else "FAIL")
            )


def ranked(state: dict) -> list[dict]:
    """The trials that trained, best validation accuracy first (a tie: the earlier trial), then the failed."""
    rows = [{"trial": name, **record} for name, record in state["trials"].items()]
    trained = sorted((r for r in rows if "val_accuracy" in r), key=lambda r: -r["val_accuracy"])
    return trained + [r for r in rows if "val_accuracy" not in r]


def _test_winner(folder: Path, state: dict, report: bool) -> None:
    """Test the best trial, once: its summary.json gets the test results, sweep.json names it."""
    best = ranked(state)[0] if state["trials"] else None
    if best is None or "val_accuracy" not in best:
        first = f" (the first: {best['error']})" if best else ""
        raise CnnkitError(f"no trial of the sweep in {folder} trained{first}; every error is in {folder / SWEEP}")
    run = load(folder / best["trial"])
    predictions = run.test_predictions()  # the one look at the test split
    metrics = test_metrics(*predictions[1:], run.classes)
    write_json(folder / best["trial"] / SUMMARY, run.summary.with_test(metrics).to_json())
    state["winner"] = best["trial"]
    state["trials"][best["trial"]]["test_accuracy"] = metrics["test_accuracy"]
    write_json(folder / SWEEP, state)
    if report:
        add_report(run, predictions)


def format_ranking(rows: list[dict]) -> list[str]:
    """The trials as a table, best first: status, validation accuracy, the winner's test accuracy, settings."""
    keys = list(dict.fromkeys(k for r in rows for k in r["settings"]))
    table = [("trial", "status", "val acc", "test acc", *keys)]
    for r in rows:
        val, test = r.get("val_accuracy"), r.get("test_accuracy")
        table.append(
            (
                r["trial"],
                r["status"],
                "" if val is None else f"{val:.4f}",
                "" if test is None else f"{test:.4f}",
                *(str(r["settings"].get(k, "")) for k in keys),
            )
        )
    return columns(table, left=2)
