"""Learning-rate schedules and the optimiser's parameter groups."""

from __future__ import annotations

import pytest

from cnnkit import TrainConfig, create_model
from cnnkit.optimizers import build_optimizer
from cnnkit.training import lr_factor


def curve(schedule: str, warmup: float, total: int = 100) -> list[float]:
    return [lr_factor(schedule, warmup, total, step) for step in range(total)]


def test_onecycle_warms_up_to_the_peak_then_falls_to_zero():
    c = curve("onecycle", 0.25)
    assert c[0] == pytest.approx(0.04 + 0.96 / 25)
    assert max(c) == 1.0 and c.index(1.0) == 24
    assert c[-1] < 0.02 and all(a >= b for a, b in zip(c[24:], c[25:]))


def test_cosine_step_and_constant_shapes():
    cos = curve("cosine", 0.0)
    assert cos[0] == 1.0 and cos[50] == pytest.approx(0.5) and cos[-1] < 0.01
    step = curve("step", 0.0)
    assert (step[0], step[50], step[75]) == (1.0, pytest.approx(0.1), pytest.approx(0.01))
    assert curve("constant", 0.0) == [1.0] * 100
    assert curve("constant", 0.1)[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])


def test_weight_decay_spares_biases_and_norms():
    model = create_model("resnet9-small", 3, 10, 32)
    for name in ("sgd", "adam", "adamw", "rmsprop"):
        optimizer = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1, nesterov=True))
        decayed, spared = optimizer.param_groups
        assert decayed["weight_decay"] == 0.1 and spared["weight_decay"] == 0.0
        assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in spared["params"])
    assert build_optimizer(model, TrainConfig(optimizer="sgd", nesterov=True)).defaults["nesterov"]


def test_the_classifier_head_can_have_its_own_rate():
    model = create_model("simplecnn", 1, 10, 28)
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-3, head_lr=0.1))
    head = optimizer.param_groups[-1]
    assert head["lr"] == 0.1 and {id(p) for p in head["params"]} == {id(p) for p in model.classifier[-1].parameters()}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
