"""The model registry: every model fits every data shape it can, and weights keep plain names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit import CnnkitError, create_model, model_names
from cnnkit.models import describe_models, num_parameters
from cnnkit.rundir import load_weights, save_weights

SHAPES = [(1, 28, 10), (3, 32, 10), (3, 64, 100), (1, 20, 2)]  # (channels, size, classes)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("channels, size, classes", SHAPES)
def test_every_model_adapts_to_channels_size_and_classes(name, channels, size, classes):
    model = create_model(name, channels, classes, size)
    assert isinstance(model, nn.Module)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)


def test_tutorial_architectures_match_their_descriptions():
    lenet = create_model("lenet", 3, 10, 32)
    assert num_parameters(lenet) == 62006  # the PyTorch CIFAR-10 tutorial's Net
    simple = create_model("simplecnn", 1, 10, 28)
    assert num_parameters(simple) == 1199882  # PyTorch's MNIST example
    assert {m.p for m in simple.modules() if isinstance(m, nn.Dropout)} == {0.25, 0.5}
    assert {m.p for m in create_model("simplecnn", 1, 10, 28, dropout=0.2).modules()
            if isinstance(m, nn.Dropout)} == {0.1, 0.2}


def test_modern_net_has_batch_norm_and_residuals():
    model = create_model("resnet9-small", 3, 10, 32)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(type(m).__name__ == "Residual" for m in model.modules())


def test_too_small_images_name_the_size_needed():
    with pytest.raises(CnnkitError, match="cannot take 8x8 images.*--image-size 16"):
        create_model("lenet", 1, 10, 8)


def test_unknown_names_and_options_list_the_valid_ones():
    with pytest.raises(CnnkitError, match="unknown model 'vgg'.*simplecnn"):
        create_model("vgg", 3, 10, 32)
    with pytest.raises(CnnkitError, match="'lenet' has no option dropout; it takes no options"):
        create_model("lenet", 3, 10, 32, dropout=0.1)


def test_describe_lists_every_model_with_parameters():
    rows = describe_models()
    assert [r[0] for r in rows] == model_names()
    assert all(params > 0 and doc for _, params, doc in rows)


def test_weights_from_a_compiled_model_load_into_a_plain_one(tmp_path):
    model = create_model("small-cnn", 1, 10, 28)
    compiled = torch.compile(model)
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    save_weights(compiled, tmp_path / "w.safetensors")
    plain = create_model("small-cnn", 1, 10, 28)
    load_weights(plain, tmp_path / "w.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values()))


def test_weights_of_another_shape_say_what_differs(tmp_path):
    save_weights(create_model("small-cnn", 1, 10, 28), tmp_path / "w.safetensors")
    with pytest.raises(CnnkitError, match=r"classifier.1.weight: saved \(10, 1568\), model has \(5, 1568\)"):
        load_weights(create_model("small-cnn", 1, 5, 28), tmp_path / "w.safetensors")
