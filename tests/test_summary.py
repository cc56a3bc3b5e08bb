"""`cnnkit summary`: the layer table's counts, the memory figures against what PyTorch allocates, the command."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import cnnkit as run_cnnkit
from torch import nn

import cnnkit
from cnnkit.cli.main import main
from cnnkit.core.machine import pick_machine
from cnnkit.inspect.layers import measured_activations, summarize
from cnnkit.models import create_model, model_names, model_spec
from cnnkit.settings.config import TrainConfig

FP32, BF16 = pick_machine("cpu", "fp32"), pick_machine("cpu", "bf16")


def summary_of(name: str, shape=(3, 32, 32), classes=10, **settings):
    model = create_model(name, shape[0], classes, shape[1])
    return model, summarize(model, model_spec(name), shape, TrainConfig(**settings), FP32)


@pytest.mark.parametrize("name", model_names())
def test_parameters_and_rows_add_up_for_every_built_in_model(name):
    model, summary = summary_of(name)
    assert summary.parameters == sum(p.numel() for p in model.parameters())
    assert sum(layer.parameters for layer in summary.layers) == summary.parameters  # every weight is in one row
    assert summary.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    head = next(layer for layer in summary.layers if layer.name == model_spec(name).head)
    assert head.output == (10,) and summary.macs > 0


def test_simplecnn_on_mnist_matches_the_tutorials_count_and_each_conv_its_own_product():
    model, summary = summary_of("simplecnn", (1, 28, 28))
    assert summary.parameters == 421_642
    convs = [layer for layer in summary.layers if layer.kind == "Conv2d"]
    modules = dict(model.named_modules())
    for layer in convs:  # out x in x kernel area x output pixels: the counter's figure, checked by hand here
        conv = modules[layer.name]
        kernel = conv.kernel_size[0] * conv.kernel_size[1]
        assert layer.macs == conv.out_channels * conv.in_channels * kernel * layer.output[1] * layer.output[2]
    assert summary.macs == sum(layer.macs for layer in summary.layers)


def test_weights_gradients_and_optimizer_state_are_counted_from_the_real_thing():
    model, adamw = summary_of("fastcnn-small", optimizer="adamw")
    _, sgd = summary_of("fastcnn-small", optimizer="sgd", momentum=0.9)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad) * 4
    assert adamw.memory.gradients == sgd.memory.gradients == trainable
    assert sgd.memory.optimizer == trainable  # one momentum buffer per trainable weight
    assert trainable * 2 <= adamw.memory.optimizer <= trainable * 2 + 64 * 8  # two moments, and a step count each
    assert adamw.memory.weights > sum(p.numel() for p in model.parameters()) * 4  # batch-norm statistics too
    memory = adamw.memory
    assert memory.training == memory.weights + trainable + memory.optimizer + memory.activations


@pytest.mark.parametrize("name", ["simplecnn", "fastcnn-small", "resnet9-small"])
@pytest.mark.parametrize("batch", [32, 96])
def test_activation_estimate_is_within_a_fifth_of_what_pytorch_allocates(name, batch):
    model, summary = summary_of(name, batch_size=batch)
    measured = measured_activations(model, (3, 32, 32), batch, FP32)
    assert abs(summary.memory.activations - measured) <= 0.2 * measured, (summary.memory.activations, measured)


def test_activations_grow_with_the_batch_and_shrink_under_bf16():
    _, small = summary_of("resnet9-small", batch_size=16)
    _, large = summary_of("resnet9-small", batch_size=64)
    model = create_model("resnet9-small", 3, 10, 32)
    half = summarize(model, model_spec("resnet9-small"), (3, 32, 32), TrainConfig(batch_size=64), BF16)
    assert 3.5 < large.memory.activations / small.memory.activations < 4.1
    assert half.memory.activations < 0.8 * large.memory.activations


def test_the_model_summarised_is_left_as_it_was():
    model = create_model("fastcnn-small", 3, 10, 32).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summarize(model, model_spec("fastcnn-small"), (3, 32, 32), TrainConfig(optimizer="sgd"), FP32)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_custom_module_is_summarised_from_python():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    summary = summarize(model, model_spec("custom", model), (1, 8, 8), TrainConfig(), FP32)
    assert [layer.name for layer in summary.layers] == ["0", "1", "2", "3", "4"]
    assert summary.layers[0].macs == 4 * 9 * 36 and summary.layers[0].output == (4, 6, 6)


def test_command_prints_the_table_and_json(tmp_path):
    text = run_cnnkit("summary", "simplecnn", "--input", "1x28x28", "--classes", "10", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    total = next(line for line in text.stdout.splitlines() if line.startswith("total"))
    assert "421,642" in total and "activations" in text.stdout
    result = run_cnnkit("summary", "lenet", "--batch-size", "8", "--optimizer", "sgd", "--json", cwd=tmp_path)
    summary = json.loads(result.stdout)
    assert summary["parameters"] == 62_006 and summary["batch_size"] == 8 and summary["optimizer"] == "sgd"
    memory = summary["memory"]
    assert memory["training"] == memory["weights"] + memory["gradients"] + memory["optimizer"] + memory["activations"]


def test_command_summarises_a_run_folder_with_its_own_shape(tmp_path):
    run = cnnkit.train(report=False, model="simplecnn", epochs=1, out=str(tmp_path / "run"))  # 8x8 digits
    result = run_cnnkit("summary", str(run.dir), "--json", cwd=tmp_path)
    summary = json.loads(result.stdout)
    assert summary["input_shape"] == [1, run.info.image_size, run.info.image_size]
    assert summary["parameters"] == sum(p.numel() for p in run.model.parameters())


@pytest.mark.parametrize(
    "args, message",
    [
        (["vgg"], "unknown model 'vgg'"),
        (["auto"], "is not one model"),
        (["lenet", "--input", "28x28"], "is not CxHxW"),
        (["lenet", "--input", "3x32x16"], "square images"),
        (["lenet", "--classes", "1"], "at least 2 classes"),
        (["lenet", "--classes", "0"], "--classes 0: a classifier needs at least 2 classes"),  # not the default 10
        (["lenet", "--optimizer", "adagrad"], "--optimizer adagrad must be one of"),
        (["lenet", "--batch-size", "0"], "--batch-size 0 must be at least 1"),
    ],
)
def test_command_mistakes_end_in_one_line(args, message, capsys):
    assert main(["summary", *args]) == 2  # in this process: an exception escaping main fails with its traceback
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.count("\n") == 1
