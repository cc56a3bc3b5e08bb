"""Imbalanced classes: the figures that show a model ignoring its small classes, the warning that says so, and
the two remedies (--class-weights balanced, --sampler balanced)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import save_image, shape_image

import cnnkit
from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_yaml
from cnnkit.data.loader import DeviceBatches
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.sets import ImageSet
from cnnkit.training import evaluation


def _logits_for(predicted: list[int], classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(predicted), classes).float() * 5


def test_balanced_accuracy_macro_f1_and_per_class_scores_match_a_hand_count():
    # truth:     a a a a a a b b c
    # predicted: a a a a a b b a a   -> a: 5 of 6 right, predicted 7 times; b: 1 of 2, predicted twice; c: 0 of 1
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2])
    metrics = evaluation.test_metrics(_logits_for([0, 0, 0, 0, 0, 1, 1, 0, 0], 3), labels, ["a", "b", "c"])
    scores = metrics["per_class"]
    assert scores["a"] == {
        "precision": round(5 / 7, 6),
        "recall": round(5 / 6, 6),
        "f1": round(10 / 13, 6),
        "images": 6,
    }
    assert scores["b"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "images": 2}
    assert scores["c"] == {"precision": None, "recall": 0.0, "f1": 0.0, "images": 1}  # never predicted: no precision
    assert metrics["test_accuracy"] == pytest.approx(6 / 9)
    assert metrics["test_balanced_accuracy"] == pytest.approx((5 / 6 + 0.5 + 0) / 3, abs=1e-6)
    assert metrics["test_macro_f1"] == pytest.approx((10 / 13 + 0.5 + 0) / 3, abs=1e-6)


def test_a_class_without_test_images_is_left_out_of_the_averages():
    metrics = evaluation.test_metrics(_logits_for([0, 1, 1], 3), torch.tensor([0, 1, 1]), ["a", "b", "c"])
    assert metrics["per_class"]["c"] == {"precision": None, "recall": None, "f1": None, "images": 0}
    assert metrics["test_balanced_accuracy"] == 1.0 and metrics["test_macro_f1"] == 1.0


def test_the_balanced_sampler_draws_every_class_about_as_often():
    labels = torch.tensor([0] * 180 + [1] * 20)
    images = torch.zeros(200, 1, 4, 4, dtype=torch.uint8)
    preprocess = Preprocess([0.0], [1.0])

    def drawn(sampler: str) -> torch.Tensor:
        batches = DeviceBatches(ImageSet(images, labels), 20, preprocess, sampler=sampler, seed=1)
        return torch.cat([labels[batches.new_order()] for _ in range(10)])

    uniform, balanced = drawn("uniform"), drawn("balanced")
    assert (uniform == 1).float().mean() == pytest.approx(0.1)  # each image once a pass
    assert 0.45 < (balanced == 1).float().mean() < 0.55  # 2,000 draws: a binomial's spread is 0.011
    assert len(balanced) == len(uniform)  # a pass is as long as before


@pytest.fixture
def lopsided_folder(tmp_path):
    """Bars and rings, 15 times as many bars: a folder where the small class is easy to ignore."""
    rng = np.random.default_rng(0)
    for kind, count in (("bar", 300), ("ring", 20)):
        for i in range(count):
            save_image(tmp_path / "lopsided" / kind / f"{i}.png", shape_image(kind, 16, rng))
    return tmp_path / "lopsided"


def test_class_weights_and_the_sampler_train_report_and_repeat(lopsided_folder, tmp_path):
    settings = {"class_weights": "balanced", "sampler": "balanced", "steps": 30, "report": False}
    run = cnnkit.train(data=str(lopsided_folder), out=str(tmp_path / "run"), **settings)
    summary = json.loads((run.dir / "summary.json").read_text())
    assert {s["images"] for s in summary["per_class"].values()} == {60, 4}  # a fifth of 300 bars, of 20 rings
    assert summary["test_balanced_accuracy"] > 0.9
    config = read_yaml(run.dir / "config.yaml")
    assert (config["class_weights"], config["sampler"]) == ("balanced", "balanced")
    again = cnnkit.train(**{**config, "out": str(tmp_path / "again")})
    assert _same_weights(run, again)  # a repeat from config.yaml draws and weighs alike
    plain = cnnkit.train(data=str(lopsided_folder), out=str(tmp_path / "plain"), steps=30, report=False)
    assert not _same_weights(run, plain)  # the weights and the draws change what is learned


def _same_weights(one, other) -> bool:
    pairs = zip(one.model.state_dict().values(), other.model.state_dict().values(), strict=True)
    return all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize(("flag", "value"), [("class_weights", "inverse"), ("sampler", "weighted")])
def test_an_unknown_class_weighting_or_sampler_is_refused_with_the_choices(flag, value, tmp_path):
    with pytest.raises(CnnkitError, match=f"--{flag.replace('_', '-')} {value} must be .*balanced"):
        cnnkit.train(**{flag: value}, out=str(tmp_path / "run"))


def test_a_model_that_ignores_the_small_classes_is_warned_about_by_balanced_accuracy():
    from cnnkit.session.results import _small_classes_ignored

    # 90 of 100 test images are class a, and the model answers a for every one: 0.9 accuracy, 1/3 balanced
    labels = torch.tensor([0] * 90 + [1] * 5 + [2] * 5)
    metrics = evaluation.test_metrics(_logits_for([0] * 100, 3), labels, ["a", "b", "c"])
    warning = _small_classes_ignored(metrics)
    assert warning
    assert "balanced accuracy 0.333" in warning and "no test image of b, c" in warning
    assert "--class-weights balanced" in warning
    fair = evaluation.test_metrics(_logits_for([0] * 90 + [1] * 5 + [2] * 5, 3), labels, ["a", "b", "c"])
    assert not _small_classes_ignored(fair)
