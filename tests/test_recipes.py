"""Recipes that fit the data: the automatic recipe, presets on small folders, steps, a time budget, and runs
that end badly saying so."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import save_image, shape_image
from safetensors.torch import load_file

import cnnkit
from cnnkit import CnnkitError, TrainConfig
from cnnkit.core.machine import pick_machine
from cnnkit.data import AtMost, Dataset, load_data
from cnnkit.data.sets import ImageSet
from cnnkit.runs.records import RunRecord
from cnnkit.session.results import run_warnings
from cnnkit.settings.presets import PRESETS
from cnnkit.settings.recipes import PRESET_MIN_IMAGES, RECIPE, auto_settings, fit_batch, fitted_preset
from cnnkit.training.trainer import EARLY_SHARE


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def config(run: Path) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())


def small_folder(root: Path, per_class: int, size: int = 32) -> Path:
    """Two classes of grey shapes on noise: easy to learn, so a recipe that fails on it is at fault."""
    rng = np.random.default_rng(1)
    for label in ("bar", "ring"):
        for i in range(per_class):
            save_image(root / label / f"{i:03d}.png", shape_image(label, size, rng))
    return root


def test_the_default_is_a_recipe_chosen_from_the_data_and_written_in_full(tmp_path, capsys):
    run = cnnkit.train(report=False, out=str(tmp_path / "a"))
    said = capsys.readouterr().out
    assert "automatic recipe: fastcnn-small" in said
    cfg = config(run.dir)
    assert cfg["model"] == "fastcnn-small" and cfg["steps"] > 0 and cfg["epochs"] is None
    assert cfg["optimizer"] == "muon" and "muon lr 0.06 (sgd" in said  # filters by Muon, biases and head by SGD
    assert cfg["image_size"] == 16 and cfg["flip"] is False  # 8x8 digits enlarged for the net; no mirror images
    assert summary(run.dir)["test_accuracy"] >= 0.97
    again = cnnkit.train(report=False, config=TrainConfig.from_yaml(run.dir / "config.yaml"), out=str(tmp_path / "b"))
    first, second = load_file(run.dir / "weights.safetensors"), load_file(again.dir / "weights.safetensors")
    assert all((first[k] == second[k]).all() for k in first)  # config.yaml repeats the run exactly


@pytest.mark.parametrize("size, chosen, more", [(64, 48, (64 / 48) ** 2), (32, 32, 1.0)])
def test_a_small_folder_of_large_images_trades_pixels_for_steps(tmp_path, size, chosen, more):
    data = load_data(str(small_folder(tmp_path / "f", 200, size)), image_size=AtMost(64))
    n = len(data.splits["train"])

    def steps(more: float, batch: int) -> int:  # 16 passes, at least 3,000 images, times `more`
        return round(more * max(16 * n, RECIPE["images_seen"][0]) / batch)

    recipe = auto_settings(data, pick_machine("cpu"))
    assert recipe["image_size"] == chosen  # at most 48 px on a CPU for fewer than 500 images a class ...
    assert recipe["steps"] == steps(more, recipe["batch_size"])  # ... the time saved spent on (64/48)^2 x the steps
    mine = auto_settings(data, pick_machine("cpu"), frozenset({"image_size"}))  # a size the user chose: as before
    assert mine["image_size"] == size and mine["steps"] == steps(1.0, mine["batch_size"])


@pytest.mark.parametrize(
    "n, channels, model, batch",
    [(20_000, 3, "fastcnn-s2", 512), (19_999, 3, "fastcnn-small", 256), (60_000, 1, "fastcnn-small", 128)],
)
def test_many_colour_images_get_the_wider_net_on_a_cpu(n, channels, model, batch):
    images = torch.zeros(1, channels, 32, 32, dtype=torch.uint8).expand(n, -1, -1, -1)  # n images, one in memory
    splits = {"train": ImageSet(images, torch.zeros(n, dtype=torch.long))}
    data = Dataset("photos", [f"c{i}" for i in range(10)], splits, [0.5] * channels, [0.25] * channels, [])
    recipe = auto_settings(data, pick_machine("cpu"))
    assert (recipe["model"], recipe["batch_size"], recipe["lr"]) == (model, batch, 0.2 * batch / 256)
    wide = model == "fastcnn-s2"  # its own momentum, warm-up, shifts and SiLU; elsewhere the recipe's and defaults
    assert (recipe["muon_momentum"], recipe["warmup"]) == ((0.75, 0.15) if wide else (0.85, 0.25))
    assert (recipe.get("translate"), recipe.get("activation")) == ((2, "silu") if wide else (None, None))


def test_what_the_user_sets_wins_over_the_recipe(tmp_path):
    run = cnnkit.train(report=False, out=str(tmp_path / "r"), batch_size=64, epochs=2, rotate=0, lr=0.05)
    cfg = config(run.dir)
    assert (cfg["batch_size"], cfg["epochs"], cfg["steps"], cfg["rotate"], cfg["lr"]) == (64, 2, None, 0.0, 0.05)
    assert cfg["model"] == "fastcnn-small" and cfg["optimizer"] == "sgd"  # a rate of one's own: SGD's one rate


def test_a_run_planned_in_steps_ends_inside_a_pass(tmp_path):
    run = cnnkit.train(
        report=False, model="small-cnn", steps=25, batch_size=128, out=str(tmp_path / "r")
    )  # 10 steps a pass
    rows = (run.dir / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 3  # a header, then passes of 10, 10 and 5 steps
    assert summary(run.dir)["steps"] == 25


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": 2, "steps": 10}, "--epochs 2 and --steps: give one of the two"),
        ({"budget": 10, "steps": 10}, "--budget 10.0 plans the steps itself"),
        ({"budget": -1}, "--budget -1.0 must be a positive number of seconds"),
    ],
)
def test_lengths_that_contradict_each_other_are_refused(settings, message):
    with pytest.raises(CnnkitError, match=message):
        TrainConfig(**settings)


def test_a_preset_keeps_its_length_in_steps_and_the_users_epochs_win():
    assert TrainConfig.from_dict({"preset": "cifar10-cpu-best"}).steps == 1050
    cfg = TrainConfig.from_dict({"preset": "cifar10-cpu-best", "epochs": 2})
    assert (cfg.steps, cfg.epochs) == (None, 2)


def test_batches_shrink_until_a_pass_is_several_steps():
    assert fit_batch(256, 50_000) == 256
    assert fit_batch(256, 900) == 32
    assert fit_batch(256, 40) == 16
    assert fit_batch(256, 10) == 10
    assert fit_batch(16, 900, processes=3) == 15  # shared evenly by 3 processes
    assert fit_batch(256, 10, processes=4) == 8


@pytest.mark.parametrize("preset", ["mnist-fast", "cifar10-cpu", "cifar10-cpu-best"])
def test_every_cpu_preset_on_a_small_folder_trains_to_sensible_accuracy(tmp_path, preset):
    folder = small_folder(tmp_path / "small", per_class=60)
    run = cnnkit.train(report=False, preset=preset, data=str(folder), out=str(tmp_path / "r"))
    result = summary(run.dir)
    assert result["test_accuracy"] >= 0.9, result
    assert config(run.dir)["batch_size"] < PRESETS[preset]["batch_size"]  # cut to the folder, rates rescaled


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_preset_is_cut_to_a_small_folder_with_its_rates_rescaled(preset):
    # the GPU presets train for minutes on a CPU: here their fitting is checked, the CPU ones train above
    cfg = TrainConfig.from_dict({"preset": preset})
    fitted = fitted_preset(cfg, 100)
    assert fitted["batch_size"] == 16 and fitted["lr"] < cfg.lr
    assert fitted.get("head_lr", 0) < (cfg.head_lr or 1)


def test_a_preset_refuses_a_folder_too_small_for_it_before_training(tmp_path):
    folder = small_folder(tmp_path / "tiny", per_class=PRESET_MIN_IMAGES // 2)
    with pytest.raises(CnnkitError, match="preset cifar10-cpu-best needs at least 32 training images"):
        cnnkit.train(report=False, preset="cifar10-cpu-best", data=str(folder), out=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_a_run_that_learns_nothing_says_so_and_records_a_warning(tmp_path, capsys):
    # a recipe made to fail: weight decay so strong that every weight collapses to zero, leaving the biases
    run = cnnkit.train(report=False, model="small-cnn", weight_decay=300, epochs=1, out=str(tmp_path / "r"))
    warnings = summary(run.dir)["warnings"]
    assert len(warnings) == 1 and "no better than always answering the most common class" in warnings[0]
    assert "Try the automatic recipe (no --model or --preset)" in warnings[0]  # it chose its own model
    assert "warning: validation accuracy" in capsys.readouterr().out


def test_a_run_of_the_automatic_recipe_that_learns_nothing_is_advised_what_fits_it(tmp_path):
    for label in ("a", "b"):  # two classes of the same grey picture: nothing to learn
        for i in range(30):
            save_image(tmp_path / "same" / label / f"{i}.png", np.full((16, 16), 128, np.uint8))
    run = cnnkit.train(report=False, data=str(tmp_path / "same"), epochs=1, out=str(tmp_path / "r"))
    (warning,) = summary(run.dir)["warnings"]
    assert "no better than always answering the most common class" in warning
    assert "automatic recipe" not in warning  # it is one
    assert "more images (this run had 22 a class" in warning and "a larger --image-size" in warning


def test_a_budget_warning_comes_first_and_hides_no_other(tmp_path):
    split = ImageSet(torch.zeros(100, 1, 8, 8, dtype=torch.uint8), torch.arange(100) % 10)  # ten classes alike
    ctx = SimpleNamespace(
        data=SimpleNamespace(splits={"val": split, "test": split}), folder=SimpleNamespace(path=tmp_path)
    )
    record = RunRecord(budget_warning="the budget is too short", best_score=0.5, train_accuracy=1.0)
    warnings = run_warnings(ctx, {"test_accuracy": 0.5}, record)
    assert len(warnings) == 2 and warnings[0] == "the budget is too short"
    assert "learned its training images by heart" in warnings[1]


def test_a_run_still_learning_at_its_end_says_so_with_a_budget_to_try(tmp_path, capsys):
    # plain SGD at a low rate: validation accuracy climbs through all eight epochs
    run = cnnkit.train(report=False, model="simplecnn", optimizer="sgd", lr=0.01, epochs=8, out=str(tmp_path / "r"))
    (warning,) = summary(run.dir)["warnings"]
    assert warning.startswith("validation accuracy was still rising when training ended")
    assert "best at epoch 8 of 8" in warning and re.search(r"Try --budget \d+0, about twice", warning)
    assert f"warning: {warning}" in capsys.readouterr().out


def test_a_run_that_learns_says_nothing_wrong(tmp_path):
    run = cnnkit.train(report=False, model="small-cnn", epochs=3, out=str(tmp_path / "r"))
    assert summary(run.dir)["warnings"] == []


class SlowWarmUp(cnnkit.Callback):
    """A machine that slows down once the budget's first plan is made: every step of the schedule's warm-up takes
    four times its own time, whatever else the machine is doing (another test worker's load comes and goes)."""

    ended: float | None = None  # when the step before ended

    def on_step_end(self, trainer, loss):
        if self.ended and trainer.scheduler.last_epoch <= trainer.cfg.warmup * trainer.total_steps:
            time.sleep(3 * (time.perf_counter() - self.ended))
        self.ended = time.perf_counter()


def test_a_budget_is_planned_again_after_the_warm_up_and_config_yaml_repeats_the_run(tmp_path, capsys):
    run = cnnkit.train(report=False, budget=10, out=str(tmp_path / "r"), callbacks=[SlowWarmUp()])
    out = capsys.readouterr().out
    first = int(re.search(r"budget 10s: (\d+) steps", out)[1])
    second, warmup_steps = map(
        int, re.search(r"budget: (\d+) steps in all, planned again after the warm-up's (\d+)", out).groups()
    )
    last = int(re.findall(r"budget: (\d+) steps in all", out)[-1])  # then quicker again: planned longer
    cfg, result = config(run.dir), summary(run.dir)
    assert second < first and warmup_steps == round(
        RECIPE["settings"]["warmup"] * first
    )  # slower: fewer after the warm-up
    assert cfg["budget"] is None and cfg["steps"] == result["steps"] == last  # a repeat takes exactly these steps ...
    assert round(cfg["warmup"] * last) == warmup_steps  # ... and warms up over the same ones
    assert result["budget_seconds"] == 10 and result["seconds_used"] > 0
    assert_repeats(run, cfg, tmp_path / "repeat")


class SlowFromWarmUp(cnnkit.Callback):
    """A machine ten times slower from the budget's first plan on: another job takes its cores."""

    ended: float | None = None

    def on_step_end(self, trainer, loss):
        if self.ended:
            time.sleep(9 * (time.perf_counter() - self.ended))
        self.ended = time.perf_counter()


def test_a_machine_much_slower_after_the_first_plan_stops_the_bias_learning_rather_than_run_long(tmp_path, capsys):
    run = cnnkit.train(report=False, budget=10, out=str(tmp_path / "r"), callbacks=[SlowFromWarmUp()])
    out = capsys.readouterr().out
    warmup_steps = int(re.search(r"planned again after the warm-up's (\d+)", out)[1])
    cfg = config(run.dir)
    # the bias's share of the run (EARLY_SHARE) would have kept it 3.3 times the warm-up long
    assert cfg["steps"] < warmup_steps / EARLY_SHARE and cfg["early_steps"] == warmup_steps
    assert_repeats(run, cfg, tmp_path / "repeat")


class SlowLate(cnnkit.Callback):
    """A machine that slows down once the whitening's bias has stopped learning: every step after takes SECONDS
    more than the steps the first two plans timed."""

    SECONDS = 0.01

    def on_step_end(self, trainer, loss):
        if trainer.scheduler.last_epoch > trainer.early_steps:
            time.sleep(self.SECONDS)


def test_a_budget_bends_the_decay_when_the_machine_slows_later_and_config_yaml_repeats_the_run(tmp_path, capsys):
    run = cnnkit.train(report=False, budget=6, out=str(tmp_path / "r"), callbacks=[SlowLate()])
    out = capsys.readouterr().out
    plans = [int(n) for n in re.findall(r"budget(?: 6s)?: (\d+) steps", out)]  # every plan's length, in order
    at = [int(n) for n in re.findall(r"planned again at step (\d+)", out)]
    cfg, result = config(run.dir), summary(run.dir)
    assert at and cfg["bends"] == ",".join(
        f"{step}:{end}" for step, end in zip(at, plans[-len(at) - 1 : -1], strict=True)
    )
    assert cfg["steps"] == result["steps"] == plans[-1] and plans[-len(at)] < plans[-len(at) - 1]  # slower: fewer
    assert cfg["early_steps"] < at[0]  # the whitening's bias stopped where it did, whatever the run's length
    plan = json.loads((run.dir / "plan.json").read_text())  # what the run decided, beside its settings
    assert plan == {"lr": None, "head_lr": None, **{k: cfg[k] for k in ("steps", "warmup", "bends", "early_steps")}}
    assert_repeats(run, cfg, tmp_path / "repeat")


def assert_repeats(run, cfg: dict, out: Path) -> None:
    """config.yaml alone repeats the run: the same test accuracy and the very same weights."""
    repeat = cnnkit.train(**{**cfg, "out": str(out)})
    assert summary(repeat.dir)["test_accuracy"] == summary(run.dir)["test_accuracy"]
    for name, weights in load_file(run.dir / "weights.safetensors").items():
        assert torch.equal(weights, load_file(repeat.dir / "weights.safetensors")[name]), name


def test_a_budget_too_short_for_one_step_says_so(tmp_path, capsys):
    run = cnnkit.train(report=False, budget=0.5, out=str(tmp_path / "r"))  # its timing alone takes half a second
    assert summary(run.dir)["steps"] == 1
    assert any("the budget of 0.5s is shorter than one step and the test" in w for w in summary(run.dir)["warnings"])
    assert "warning: the budget of 0.5s" in capsys.readouterr().out


def test_a_silu_run_is_remade_with_silu_and_fine_tuned_in_it(tmp_path):
    source = cnnkit.train(
        report=False, model="fastcnn-small", activation="silu", image_size=16, steps=2, out=str(tmp_path / "s")
    )
    assert json.loads((source.dir / "model.json").read_text())["model_options"] == {"activation": "silu"}
    reloaded = cnnkit.load(source.dir, device="cpu")
    assert [type(m) for m in reloaded.model.modules()] == [type(m) for m in source.model.modules()]
    assert sum(isinstance(m, torch.nn.SiLU) for m in reloaded.model.modules()) == 7  # the stem's and two a block
    tuned = cnnkit.train(report=False, init_from=str(source.dir), steps=2, out=str(tmp_path / "tuned"))
    assert (config(tuned.dir)["model"], config(tuned.dir)["activation"]) == ("fastcnn-small", "silu")


def test_fine_tuning_keeps_the_source_runs_model_and_image_size(tmp_path):
    source = cnnkit.train(report=False, model="small-cnn", image_size=12, epochs=1, out=str(tmp_path / "source"))
    run = cnnkit.train(report=False, init_from=str(source.dir), steps=5, out=str(tmp_path / "tuned"))
    cfg = config(run.dir)
    assert (cfg["model"], cfg["image_size"], cfg["whiten"]) == ("small-cnn", 12, False)
