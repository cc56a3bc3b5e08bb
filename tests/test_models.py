"""The model registry: every model fits every data shape it can, and weights keep plain names."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnkit import CnnkitError, create_model, model_names, register
from cnnkit.models import describe_models, model_spec, num_parameters
from cnnkit.models.backbones import BACKBONES, STRIDE
from cnnkit.models.weights import load_weights, save_weights

SHAPES = [(1, 28, 10), (3, 32, 10), (3, 64, 100), (1, 20, 2)]  # (channels, size, classes)


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("channels, size, classes", SHAPES)
def test_every_model_adapts_to_channels_size_and_classes(name, channels, size, classes):
    size = max(size, STRIDE) if name in BACKBONES else size  # a backbone shrinks images 32-fold
    model = create_model(name, channels, classes, size)
    assert isinstance(model, nn.Module)
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, classes)


# Every built-in model's parameter count, pinned. The tutorial nets' counts are the ones their tutorials' layer
# lists imply, layer by layer (weights + biases).
PARAMETERS = {
    ("lenet", 3, 32): 456 + 2_416 + 48_120 + 10_164 + 850,  # 62,006: PyTorch's CIFAR-10 tutorial's Net
    ("tutorial-net", 3, 32): 456 + 2_416 + 4_010,  # 6,882: conv6-5, conv16-5, linear 400 -> 10
    ("simplecnn", 1, 28): 320 + 18_496 + 401_536 + 1_290,  # 421,642: SimpleCNN, fc 64*7*7 -> 128 -> 10
    ("pytorch-mnist", 1, 28): 320 + 18_496 + 1_179_776 + 1_290,  # 1,199,882: PyTorch's MNIST example, fc 9216 -> 128
    ("small-cnn", 1, 28): 160 + 4_640 + 15_690,  # 20,490: fc 32*7*7 -> 10
    ("avgpool-cnn", 1, 28): 260 + 5_020 + 125_250 + 25_100 + 1_010,  # 156,640: fc 500 -> 250 -> 100 -> 10
    ("resnet9", 3, 32): 6_573_130,
    ("resnet9-small", 3, 32): 412_954,
    ("fastcnn", 3, 32): 1_972_792,
    ("fastcnn-small", 3, 32): 76_280,
    ("fastcnn-s2", 3, 32): 295_096,  # widths 32-64-128 behind a stride-2 stem
    # torchvision's ImageNet counts with the 1000-class head swapped for a 10-class one
    ("resnet18", 3, 32): 11_689_512 - 513_000 + 5_130,
    ("resnet50", 3, 32): 25_557_032 - 2_049_000 + 20_490,
    ("mobilenet_v3_small", 3, 32): 2_542_856 - 1_025_000 + 10_250,
    ("efficientnet_b0", 3, 32): 5_288_548 - 1_281_000 + 12_810,
    ("convnext_tiny", 3, 32): 28_589_128 - 769_000 + 7_690,
}


def test_every_built_in_model_has_its_pinned_parameter_count():
    assert {name for name, _, _ in PARAMETERS} == set(model_names())
    for (name, channels, size), expected in PARAMETERS.items():
        assert num_parameters(create_model(name, channels, 10, size)) == expected, name


def test_the_pytorch_example_keeps_its_dropout_rates():
    rates = {m.p for m in create_model("pytorch-mnist", 1, 10, 28).modules() if isinstance(m, nn.Dropout)}
    assert rates == {0.25, 0.5}
    assert {
        m.p for m in create_model("pytorch-mnist", 1, 10, 28, dropout=0.2).modules() if isinstance(m, nn.Dropout)
    } == {0.1, 0.2}


@pytest.mark.parametrize("name", model_names())
def test_every_model_gets_a_finite_gradient_for_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = create_model(name, 3, 10, 32).train()
    nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.arange(4)).backward()
    for parameter_name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), parameter_name
            assert p.grad.abs().sum() > 0, f"{parameter_name} gets no gradient"


@pytest.mark.parametrize("name", model_names())
def test_every_spec_names_the_models_real_head_and_first_conv(name):
    spec, model = model_spec(name), create_model(name, 3, 7, 32)
    head = spec.head_module(model, "test")
    assert isinstance(head, nn.Linear) and head.out_features == 7
    first = spec.first_conv_module(model, "test")
    assert first is next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_registering_a_name_twice_warns_and_custom_is_reserved():
    builder = model_spec("small-cnn").build
    with pytest.warns(UserWarning, match="model 'small-cnn' is registered again"):
        register("small-cnn", first_conv="features.0")(builder)
    with pytest.raises(CnnkitError, match="'custom' is reserved"):
        register("custom")(builder)


def test_a_module_passed_in_names_no_parts_and_says_how_to_name_them():
    spec = model_spec("ignored", nn.Linear(4, 2))
    with pytest.raises(CnnkitError, match=r"--head-lr needs the model's classifier head.*cnnkit.register\(name, head="):
        spec.head_module(nn.Linear(4, 2), "--head-lr")


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
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), model.state_dict().values(), strict=True))


def test_weights_of_another_shape_say_what_differs(tmp_path):
    save_weights(create_model("small-cnn", 1, 10, 28), tmp_path / "w.safetensors")
    with pytest.raises(CnnkitError, match=r"head.weight: saved \(10, 1568\), model has \(5, 1568\)"):
        load_weights(create_model("small-cnn", 1, 5, 28), tmp_path / "w.safetensors")
