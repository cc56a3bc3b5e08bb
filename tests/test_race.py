"""The automatic recipe's race: its candidates come from the data, its record is in the run folder and the
report, the winner trains the run and repeats alone, and --no-race or a small folder keeps the rules of thumb."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_image, shape_image

import cnnkit
from cnnkit.core.files import read_yaml
from cnnkit.core.machine import pick_machine
from cnnkit.data.images import detail_kept, turn_kept
from cnnkit.inspect.report import write_report
from cnnkit.settings.config import TrainConfig
from cnnkit.settings.recipes import size_for_detail, turns_for_symmetry


@pytest.fixture(scope="module")
def raced_folder(tmp_path_factory):
    """Grey bars and rings at 32 px, four bars to a ring: every choice short trials decide is open on it (flips,
    the balanced sampler); the bars stand upright, so a turn changes them."""
    root = tmp_path_factory.mktemp("race") / "lopsided"
    rng = np.random.default_rng(0)
    for kind, count in (("bar", 560), ("ring", 140)):
        for i in range(count):
            save_image(root / kind / f"{i}.png", shape_image(kind, 32, rng))
    return root


@pytest.fixture(scope="module")
def raced_run(raced_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "raced"
    return cnnkit.train(data=str(raced_folder), out=str(out), steps=600)  # a race of 8 steps a trial or more


def test_the_race_records_every_candidate_and_trains_the_winner(raced_run, capsys):
    race = json.loads((raced_run.dir / "race.json").read_text())
    first = race["rounds"][0]
    assert [c["name"] for c in first if not c["changes"]] == ["the rule"]
    assert {c["name"] for c in first} == {"the rule", "flips", "balanced sampler"}
    assert race["size"] == "size: 32 px as the rule says, the folder's own"
    assert race["turns"].startswith("turns: off, a right-angle turn keeps ")
    for scored in race["rounds"]:  # best first, each scored on the race's 112 held-out images
        scores = [c["val_balanced_accuracy"] for c in scored]
        assert scores == sorted(scores, reverse=True)
        assert all(c["steps"] >= 8 for c in scored)
    final = race["rounds"][1]  # the rule, the best and the winning changes combined race again
    assert len(race["rounds"]) == 2 and "the rule" in [c["name"] for c in final] and len(final) in (2, 3)
    best, rule = final[0], next(c for c in final if c["name"] == "the rule")
    assert race["best"]["name"] == best["name"]
    # the best replaces the rule only when ahead of it by more than twice the noise of their difference
    beats = race["best"]["gain"] > 2 * race["best"]["noise"]
    assert race["winner"]["name"] == (best if beats else rule)["name"]
    config = read_yaml(raced_run.dir / "config.yaml")
    for key, value in race["winner"]["changes"].items():
        assert config[key] == value  # the run trained the winner
    summary = json.loads((raced_run.dir / "summary.json").read_text())
    assert summary["num_val_images"] == 56  # the run's own split stays: the race holds out its own images
    assert summary["test_balanced_accuracy"] > 0.9


def test_a_repeat_of_a_raced_run_trains_the_winner_alone_and_exactly(raced_run, tmp_path, capsys):
    config = read_yaml(raced_run.dir / "config.yaml")
    again = cnnkit.train(**{**config, "out": str(tmp_path / "again"), "report": False})
    assert not _race_lines(capsys.readouterr().out)
    assert not (again.dir / "race.json").exists()
    pairs = zip(raced_run.model.state_dict().values(), again.model.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def _race_lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith(("race", "size:"))]


def test_the_report_shows_the_race(raced_run):
    page = (raced_run.dir / "report.html").read_text()
    assert "The recipe&#x27;s race" in page or "The recipe's race" in page
    race = json.loads((raced_run.dir / "race.json").read_text())
    assert race["winner"]["name"] in page
    write_report(raced_run.dir)  # drawn again from the folder alone


def test_no_race_keeps_the_rules_of_thumb(raced_folder, tmp_path, capsys):
    run = cnnkit.train(data=str(raced_folder), out=str(tmp_path / "run"), steps=10, race=False, report=False)
    assert not _race_lines(capsys.readouterr().out)
    assert not (run.dir / "race.json").exists()
    config = read_yaml(run.dir / "config.yaml")
    assert (config["image_size"], config["sampler"], config["model"]) == (32, "uniform", "fastcnn-small")


def test_what_the_user_set_is_not_raced(raced_folder, tmp_path):
    settings = {"image_size": 24, "flip": False, "turns": False}
    run = cnnkit.train(data=str(raced_folder), out=str(tmp_path / "run"), steps=80, report=False, **settings)
    race = json.loads((run.dir / "race.json").read_text())
    assert race["size"] == ""  # the size was given
    assert [c["name"] for c in race["rounds"][0]] in (
        ["the rule", "balanced sampler"],
        ["balanced sampler", "the rule"],
    )
    assert len(race["rounds"]) == 1  # one change open: one round


def test_a_small_folder_keeps_the_rules_and_says_why(tmp_path, capsys):
    rng = np.random.default_rng(1)
    for kind, count in (("bar", 80), ("ring", 20)):
        for i in range(count):
            save_image(tmp_path / "few" / kind / f"{i}.png", shape_image(kind, 16, rng))
    run = cnnkit.train(data=str(tmp_path / "few"), out=str(tmp_path / "run"), steps=5, report=False)
    out = capsys.readouterr().out
    assert "race: no trials, as 16 held-out images cannot tell candidates a few points apart (it needs 100" in out
    race = json.loads((run.dir / "race.json").read_text())
    assert race["rounds"] == [] and race["winner"]["name"] == "the rule"


def test_the_size_keeps_the_detail_of_the_images():
    """Soft blobs keep their detail at any size; one-pixel lines on a grainy surface lose it when shrunk."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:128, 0:128]
    blobs = np.stack([128 + 100 * np.sin(x / 20 + k) * np.cos(y / 25) for k in range(16)])
    lines = rng.normal(128, 10, (16, 128, 128))
    lines[:, :, 60] = 30  # a dark hairline down every image
    for pixels, kept in ((blobs, 0.999), (lines, 0.9)):
        images = torch.from_numpy(np.clip(pixels, 0, 255)).to(torch.uint8)[:, None]
        assert (detail_kept(images, 48) > kept) == (pixels is blobs)
    cfg = TrainConfig(image_size=48, translate=4)
    soft = torch.from_numpy(np.clip(blobs, 0, 255)).to(torch.uint8)[:, None]
    fine = torch.from_numpy(np.clip(lines, 0, 255)).to(torch.uint8)[:, None]
    assert size_for_detail(cfg, soft, pick_machine("cpu"))[0] == {}  # the rule's 48 px keeps it
    change, line = size_for_detail(cfg, fine, pick_machine("cpu"))
    assert change == {"image_size": 128, "translate": 11} and line.startswith("size: 128 px, the smallest that keeps")


def _rods(count: int, rng: np.random.Generator, upright: bool) -> torch.Tensor:
    """Grey rods on noise at 32 px: at any angle, or all upright."""
    y, x = np.mgrid[0:32, 0:32] - 15.5
    images = []
    for _ in range(count):
        angle = 0.0 if upright else rng.uniform(0, np.pi)
        along, across = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
        rod = (np.abs(along) < 10) & (np.abs(across) < 3)
        images.append(np.clip(120 + 60 * rod + rng.normal(0, 20, rod.shape), 0, 255))
    return torch.from_numpy(np.stack(images)).to(torch.uint8)[:, None]


def test_turns_are_on_only_where_a_turn_keeps_what_each_class_shares():
    """Rods and rings at any angle are the same turned (as cells in a micrograph); upright rods are not."""
    rng = np.random.default_rng(0)
    rings = torch.from_numpy(np.stack([shape_image("ring", 32, rng) for _ in range(100)]))[:, None]
    labels = torch.tensor([0] * 100 + [1] * 100)
    any_angle = torch.cat([_rods(100, rng, upright=False), rings])
    upright = torch.cat([_rods(100, rng, upright=True), rings])
    kept = turn_kept(any_angle, labels)
    assert kept is not None and kept > 0.98
    assert turns_for_symmetry(any_angle, labels) == (
        {"turns": True},
        f"turns: on, a right-angle turn keeps {kept:.1%} of what each class's images share",
    )
    change, line = turns_for_symmetry(upright, labels)
    assert change == {} and line.startswith("turns: off") and line.endswith("(on from 98%)")
    few = torch.tensor([0] * 30 + [1] * 30)  # 30 a class: fewer than the 40 a turn is measured on
    assert turn_kept(any_angle[70:130], few) is None
    assert turns_for_symmetry(any_angle[70:130], few)[0] == {}
