"""Settings: defaults, validation messages that name the flag, and the YAML round trip."""

from __future__ import annotations

import pytest
import torch
import yaml
from safetensors.torch import load_file

import cnnkit
from cnnkit import CnnkitError, TrainConfig
from cnnkit.data.splits import parse_split


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"epochs": 0}, "--epochs 0 must be at least 1"),
        ({"lr": -0.1}, "--lr -0.1 must be a positive number"),
        ({"val_fraction": 1.5}, "--val-fraction 1.5 must be in"),
        ({"optimizer": "lbfgs"}, "--optimizer lbfgs must be one of sgd, adam, adamw, rmsprop"),
        ({"schedule": "cyclic"}, "--schedule cyclic must be one of"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"split": "80/10/20"}, "add up to 100"),
        ({"split": "90/10/0"}, "add up to 100"),
        ({"batch_size": "many"}, "setting 'batch_size' must be int"),
    ],
)
def test_bad_values_are_refused_with_the_flag_named(settings, message):
    with pytest.raises(CnnkitError, match=message):
        TrainConfig.from_dict(settings)
    with pytest.raises(CnnkitError, match=message):  # built in Python, it is checked just the same
        TrainConfig(**settings)


def test_settings_built_in_python_are_coerced_like_flags():
    cfg = TrainConfig(epochs="4", lr="1e-3", nesterov="yes")
    assert (cfg.epochs, cfg.lr, cfg.nesterov) == (4, 0.001, True)
    with pytest.raises(CnnkitError, match="unknown preset 'fast'"):
        TrainConfig(preset="fast")


def test_unknown_optimizers_and_schedules_are_refused_where_they_are_used():
    from cnnkit.models import create_model, model_spec
    from cnnkit.training.optimizers import build_optimizer
    from cnnkit.training.schedule import lr_factor

    cfg = TrainConfig()
    object.__setattr__(cfg, "optimizer", "rmsprob")  # past the config's own check, as a caller could
    with pytest.raises(
        CnnkitError, match="unknown optimizer 'rmsprob'; choose one of: sgd, adam, adamw, rmsprop, muon"
    ):
        build_optimizer(create_model("small-cnn", 1, 10, 8), cfg, model_spec("small-cnn"))
    with pytest.raises(CnnkitError, match="unknown schedule 'linear'; choose one of: constant, step, cosine, onecycle"):
        lr_factor("linear", 0.0, 100, 5)


def test_yaml_round_trip_and_loose_number_spellings(tmp_path):
    cfg = TrainConfig(data="mnist", lr=0.0005, flip=True, split="70/15/15")
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())
    assert TrainConfig.from_yaml(tmp_path / "config.yaml") == cfg
    (tmp_path / "hand.yaml").write_text("lr: 1e-3\nepochs: '4'\nnesterov: yes\n")  # YAML reads 1e-3 as a string
    hand = TrainConfig.from_yaml(tmp_path / "hand.yaml")
    assert (hand.lr, hand.epochs, hand.nesterov) == (0.001, 4, True)


def test_unknown_keys_and_bad_files_are_named(tmp_path):
    (tmp_path / "typo.yaml").write_text("epoch: 3\n")
    with pytest.raises(CnnkitError, match="unknown setting.*epoch; valid settings are"):
        TrainConfig.from_yaml(tmp_path / "typo.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(CnnkitError, match="must hold a mapping"):
        TrainConfig.from_yaml(tmp_path / "list.yaml")
    with pytest.raises(CnnkitError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "none.yaml")


def test_parse_split():
    assert parse_split("80/10/10") == (0.8, 0.1, 0.1)
    assert parse_split("90/0/10") == (0.9, 0.0, 0.1)


@pytest.mark.parametrize(
    "text, message",
    [
        ("batch_size: null\n", "setting 'batch_size' needs a value"),
        ("model: null\n", "setting 'model' needs a value"),
        ("data: null\n", "setting 'data' needs a value"),
        ("preset: [a]\n", "setting 'preset' must be str, got \\['a'\\]"),
        ("lr: .inf\n", "setting 'lr' must be a finite number"),
    ],
)
def test_config_files_with_empty_or_odd_values_are_named(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(CnnkitError, match=message):
        TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_a_train_config_and_keywords_train_the_same_run(tmp_path):
    """Unset means unset: a setting given to TrainConfig is the user's own, even when it equals the default
    (3e-3 is --lr's), so the automatic recipe treats it as it treats the same keyword."""
    assert TrainConfig(lr=3e-3).given == {"lr": 3e-3} and TrainConfig().given == {}
    steps = {"steps": 30, "report": False, "device": "cpu"}
    from_config = cnnkit.train(TrainConfig(lr=3e-3, out=str(tmp_path / "config"), **steps))
    from_keywords = cnnkit.train(lr=3e-3, out=str(tmp_path / "keywords"), **steps)
    a, b = (yaml.safe_load((run.dir / "config.yaml").read_text()) for run in (from_config, from_keywords))
    assert a == b
    assert a["optimizer"] == "sgd" and a["lr"] == 3e-3  # the recipe's muon gives way to a rate of the user's own
    weights = [load_file(run.dir / "weights.safetensors") for run in (from_config, from_keywords)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
