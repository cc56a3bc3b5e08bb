"""Transfer learning: torchvision backbones, pretrained weights read offline (never a full unpickle), the head
made anew, grey images, --freeze-epochs, and the automatic recipe's use of weights at hand."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from conftest import save_image
from safetensors.torch import load_file, save_file

import cnnkit
from cnnkit.core.errors import CnnkitError
from cnnkit.models import create_model


def weights_file(path: Path, name: str = "resnet18") -> dict[str, torch.Tensor]:
    """A torchvision model's ImageNet-shaped weights (1000 classes), saved as torchvision publishes them."""
    torch.manual_seed(1)
    state = getattr(torchvision.models, name)().state_dict()
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.fixture
def colour_folder(tmp_path) -> Path:
    """Three classes of 36 px colour images, each class brightest in its own colour."""
    rng = np.random.default_rng(0)
    for c in range(3):
        for i in range(24):
            image = rng.integers(0, 80, (36, 36, 3), dtype=np.uint8)
            image[..., c] += 150
            save_image(tmp_path / "colours" / f"c{c}" / f"{i}.png", image)
    return tmp_path / "colours"


def parameters(run: cnnkit.Run) -> dict[str, torch.Tensor]:
    return load_file(str(run.dir / "weights.safetensors"))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "convnext_tiny", "resnet50"])
def test_each_backbone_builds_for_any_class_count_and_grey_images(name):
    net = create_model(name, 1, 7, 32)
    assert net(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(CnnkitError, match="--image-size 32 or larger"):
        create_model(name, 3, 7, 28)


def test_frozen_epoch_trains_the_new_head_alone_on_the_file_weights(colour_folder, tmp_path):
    state = weights_file(tmp_path / "resnet18.pth")
    run = cnnkit.train(
        report=False,
        data=str(colour_folder),
        model="resnet18",
        pretrained_weights=str(tmp_path / "resnet18.pth"),
        freeze_epochs=1,
        epochs=1,
        image_size=32,
        batch_size=16,
        out=str(tmp_path / "run"),
    )
    trained = parameters(run)
    backbone = [k for k, v in run.model.named_parameters() if not k.startswith("fc.")]
    assert all(torch.equal(trained[k], state[k]) for k in backbone)  # frozen: the file's weights, untouched
    assert trained["fc.weight"].shape == (3, 512)  # a new head for 3 classes ...
    torch.manual_seed(0)
    assert not torch.equal(trained["fc.weight"], torchvision.models.resnet18(num_classes=3).fc.weight)  # ... trained
    assert run.config.head_lr == 3e-3 and run.config.lr == pytest.approx(3e-4)  # the backbone learns 10x slower
    info = run.info
    assert (info.image_size, info.mean, info.std) == (32, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


def test_grey_images_sum_the_colour_filters_and_training_moves_the_backbone(tmp_path):
    state = weights_file(tmp_path / "resnet18.safetensors")
    run = cnnkit.train(
        report=False,
        data="digits",
        model="resnet18",
        pretrained_weights=str(tmp_path / "resnet18.safetensors"),
        freeze_epochs=1,
        epochs=2,
        image_size=32,
        out=str(tmp_path / "run"),
    )
    model = run.model
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert run.info.mean == [pytest.approx(0.449)]  # ImageNet's normalisation averaged over colours
    assert not torch.equal(parameters(run)["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])  # unfrozen
    assert run.summary.test_accuracy > 0.8


def test_pretrained_downloads_once_then_reads_from_torch_home_offline(colour_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(CnnkitError, match="could not download the .* of resnet18.*--pretrained-weights"):
        cnnkit.train(
            report=False, data=str(colour_folder), model="resnet18", pretrained=True, out=str(tmp_path / "offline")
        )
    assert not (tmp_path / "offline").exists()
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True, exist_ok=True)
    assert list(cached.parent.iterdir()) == []  # no partial download left to be mistaken for weights
    state = weights_file(cached)
    run = cnnkit.train(
        report=False,
        data=str(colour_folder),
        model="resnet18",
        pretrained=True,
        steps=1,
        image_size=32,
        out=str(tmp_path / "run"),
    )
    assert run.config.pretrained and run.info.image_size == 32
    assert not torch.equal(parameters(run)["conv1.weight"], state["conv1.weight"])  # loaded, then one step


def test_automatic_recipe_fine_tunes_a_backbone_whose_weights_are_at_hand(colour_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    plain = cnnkit.train(report=False, data=str(colour_folder), steps=2, out=str(tmp_path / "plain"))
    assert plain.config.model == "fastcnn-small" and not plain.config.pretrained  # no weights here
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    cached.parent.mkdir(parents=True)
    weights_file(cached, "mobilenet_v3_small")
    run = cnnkit.train(report=False, data=str(colour_folder), steps=2, image_size=32, out=str(tmp_path / "tuned"))
    cfg = run.config
    assert (cfg.model, cfg.pretrained, cfg.whiten, cfg.freeze_epochs) == ("mobilenet_v3_small", True, False, 1)
    assert (cfg.optimizer, cfg.head_lr, cfg.lr) == ("adamw", 1e-3, pytest.approx(1e-4))
    mine = cnnkit.train(report=False, data=str(colour_folder), steps=2, whiten=True, out=str(tmp_path / "mine"))
    assert mine.config.model == "fastcnn-small"  # a start of the user's own choosing is left alone


def test_weight_files_that_are_not_plain_weights_are_refused_unread(colour_folder, tmp_path):
    full = tmp_path / "full.pth"
    torch.save({"model": torchvision.models.resnet18()}, full)  # a pickled module: code could run on load
    other = tmp_path / "other.pth"
    weights_file(other, "mobilenet_v3_small")
    cases = {
        full: "cannot be read as plain weights .* never a full unpickle",
        tmp_path / "none.pth": "no such file",
        other: "do not fit this model: missing conv1.weight",
    }
    (tmp_path / "text.pth").write_text("hello")
    cases[tmp_path / "text.pth"] = "cannot be read as plain weights"
    for path, message in cases.items():
        with pytest.raises(CnnkitError, match=message):
            cnnkit.train(
                report=False, data=str(colour_folder), model="resnet18", pretrained_weights=str(path), image_size=32
            )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "simplecnn", "pretrained": True}, "has no pretrained weights; models that have: resnet18"),
        ({"model": "resnet18", "freeze_epochs": 1}, "--freeze-epochs 1 keeps pretrained weights fixed"),
        (
            {"model": "resnet18", "pretrained": True, "pretrained_weights": "x.pth"},
            "--pretrained and --pretrained-weights are ways to start: give one",
        ),
    ],
)
def test_transfer_settings_that_cannot_work_are_refused_before_training(colour_folder, tmp_path, settings, message):
    with pytest.raises(CnnkitError, match=message):
        cnnkit.train(report=False, data=str(colour_folder), epochs=1, out=str(tmp_path / "run"), **settings)
