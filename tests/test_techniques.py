"""The speed techniques as parts: each does what it claims, inside or outside a preset."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import cnnkit
from cnnkit import CnnkitError, TrainConfig, create_model
from cnnkit.core.machine import pick_machine
from cnnkit.data import load_data
from cnnkit.data.loader import DeviceBatches
from cnnkit.data.preprocess import Preprocess
from cnnkit.models import model_spec, unwrap
from cnnkit.models.whitening import whiten_conv
from cnnkit.training.checkpoint import load_checkpoint, save_checkpoint
from cnnkit.training.evaluation import predict_logits
from cnnkit.training.optimizers import build_optimizer, orthogonalize
from cnnkit.training.trainer import Trainer


def normalized_digits(n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    data = load_data("digits", image_size=16)
    train = data.splits["train"]
    return Preprocess(data.mean, data.std)(train.images[:n]), train.labels[:n]


def test_whitening_makes_the_first_layer_output_decorrelated_with_unit_variance():
    images, _ = normalized_digits()
    model = create_model("fastcnn", 1, 10, 16)
    conv = model.stem[0]
    whiten_conv(conv, images, eps=1e-8)
    out = conv(images)[:, :4].permute(0, 2, 3, 1).reshape(-1, 4)  # the +W half: 4 filters for 1x2x2 patches
    out = out - out.mean(0)
    covariance = out.T @ out / len(out)
    assert torch.allclose(covariance, torch.eye(4), atol=1e-3)
    assert torch.equal(conv.weight[4:], -conv.weight[:4])  # the -W half keeps what a GELU would cut off
    assert not conv.weight.requires_grad and not conv.bias.any()  # a fixed whitening, not a learned filter


def test_the_whitening_bias_learns_over_the_first_steps_only(tmp_path):
    class Biases(cnnkit.Callback):
        def __init__(self):
            self.after_step = []

        def on_step_end(self, trainer, loss):
            self.after_step.append(unwrap(trainer.net).stem[0].bias.detach().clone())

    biases = Biases()
    settings = {"model": "fastcnn-small", "image_size": 16, "whiten": True, "batch_size": 32, "report": False}
    run = cnnkit.train(data="digits", steps=40, callbacks=[biases], out=str(tmp_path / "run"), **settings)
    seen = biases.after_step
    changed = [not torch.equal(a, b) for a, b in zip(seen[:-1], seen[1:], strict=True)]
    assert seen[0].any() and all(changed[:11]) and not any(changed[11:])  # steps 0-11 of 40 learn it, no others
    stem = run.network("check").stem[0]  # trained and re-read: the learned bias, the whitening unchanged
    assert torch.equal(stem.bias, seen[-1]) and torch.equal(stem.weight[4:], -stem.weight[:4])


def test_whitening_refuses_a_first_layer_of_the_wrong_width():
    images, _ = normalized_digits(50)
    with pytest.raises(CnnkitError, match="--whiten needs a first conv with 9 or 18 filters"):
        whiten_conv(create_model("simplecnn", 1, 10, 16).features[0], images)


def test_tta_averages_mirrored_and_shifted_views():
    images, labels = normalized_digits(64)
    model = create_model("small-cnn", 1, 10, 16).eval()
    machine = pick_machine("cpu", "fp32")
    batches = DeviceBatches(
        cnnkit.data.sets.ImageSet((images * 20 + 100).clamp(0, 255).byte(), labels), 32, Preprocess([0.0], [1.0])
    )
    plain, _ = predict_logits(model, batches, machine)
    averaged, _ = predict_logits(model, batches, machine, tta=True)
    x = torch.cat([x for x, _ in batches])
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [(1 / 2, x), (1 / 4, padded[..., :16, :16]), (1 / 4, padded[..., 2:, 2:])]  # unshifted, shifted
    with torch.no_grad():
        expected = sum(weight * (model(v) + model(v.flip(3))) / 2 for weight, v in views)
    assert torch.allclose(averaged, expected, atol=1e-5) and not torch.allclose(averaged, plain)


def test_ema_keeps_a_slow_average_of_the_weights():
    data = load_data("digits")
    machine = pick_machine("cpu", "fp32")
    train = DeviceBatches(data.splits["train"], 32, Preprocess(data.mean, data.std), sampler="uniform")
    torch.manual_seed(0)
    model = create_model("small-cnn", 1, 10, 8)
    start = [p.detach().clone() for p in model.parameters()]
    cfg = TrainConfig(epochs=1, ema=0.99, lr=0.01)
    trainer = Trainer(model, model_spec("small-cnn"), train, cfg, machine)
    trainer.fit(None)
    kept = trainer.kept_model
    assert kept is not model

    def moved(m):
        return sum((p.detach() - s).norm() for p, s in zip(m.parameters(), start, strict=True))

    assert 0 < moved(kept) < 0.9 * moved(model)  # the average trails the weights it averages


def test_presets_fill_settings_and_flags_still_win():
    cfg = TrainConfig.from_dict({"preset": "cifar10-fast", "epochs": 3})
    assert (cfg.model, cfg.whiten, cfg.tta, cfg.epochs) == ("fastcnn", True, True, 3)
    with pytest.raises(CnnkitError, match="unknown preset 'mnist-slow'; choose one of: mnist-fast"):
        TrainConfig.from_dict({"preset": "mnist-slow"})


def test_presets_are_listed_with_their_settings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cnnkit", "presets"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0
    assert "mnist-fast:" in out.stdout and "cifar10-fast:" in out.stdout and "cifar10-best:" in out.stdout
    assert "--whiten" in out.stdout and "--model fastcnn" in out.stdout


@pytest.mark.slow
def test_mnist_fast_preset_reaches_99_percent(shared_data, tmp_path):
    run = cnnkit.train(report=False, preset="mnist-fast", data_dir=str(shared_data), out=str(tmp_path / "run"))
    assert run.summary.test_accuracy >= 0.99
    assert run.config.model == "fastcnn-small"


def test_whitened_fastcnn_with_ema_and_tta_trains_on_a_colour_folder(image_folder, tmp_path):
    run = cnnkit.train(
        report=False,
        data=str(image_folder),
        model="fastcnn",
        whiten=True,
        ema=0.9,
        tta=True,
        epochs=10,
        batch_size=16,
        optimizer="sgd",
        lr=0.05,
        nesterov=True,
        out=str(tmp_path / "run"),
    )
    assert run.summary.test_accuracy >= 0.9
    assert run.evaluate()["test_accuracy"] == pytest.approx(run.summary.test_accuracy)


def test_compiled_training_reports_its_warm_up_and_never_recompiles_after_it(tmp_path, monkeypatch):
    warm_up = cnnkit.session.train.compile_warmup

    def then_forbid_compiling(*args):
        seconds = warm_up(*args)
        monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)  # the clock runs from here on
        return seconds

    monkeypatch.setattr(cnnkit.session.train, "compile_warmup", then_forbid_compiling)
    # one channel, test-time augmentation and partial last batches: every layout and size the passes meet
    run = cnnkit.train(
        report=False, compile=True, epochs=2, tta=True, model="fastcnn-small", image_size=16, out=str(tmp_path / "run")
    )
    summary = run.summary
    assert summary.compile_seconds > 0 and summary.test_accuracy > 0.5
    # the compiled bf16 kernels round unlike the eager ones that `load` runs: one borderline image may flip
    one_image = 1 / summary.num_test_images
    assert cnnkit.load(run.dir).evaluate()["test_accuracy"] == pytest.approx(summary.test_accuracy, abs=one_image)


def test_muon_orthogonalizes_an_update_keeping_its_directions():
    torch.manual_seed(0)
    gradient = torch.randn(64, 576) * torch.logspace(0, 1, 64)[:, None]  # singular values spread over 10x
    update = orthogonalize(gradient)
    singular_values = torch.linalg.svdvals(update)
    assert singular_values.min() > 0.5 and singular_values.max() < 1.5  # every direction a similar step
    u, _, v = torch.linalg.svd(gradient, full_matrices=False)
    assert torch.nn.functional.cosine_similarity(update.flatten(), (u @ v).flatten(), 0) > 0.95


def test_muon_trains_filters_at_fixed_norm_and_the_rest_by_sgd():
    data = load_data("digits", image_size=16)
    machine = pick_machine("cpu", "fp32")
    train = DeviceBatches(data.splits["train"], 64, Preprocess(data.mean, data.std), sampler="uniform")
    torch.manual_seed(0)
    model = create_model("fastcnn-small", 1, 10, 16)
    whiten_conv(model.stem[0], normalized_digits()[0])
    cfg = TrainConfig(
        epochs=3,
        optimizer="muon",
        muon_lr=0.2,
        lr=0.05,
        head_lr=0.01,
        momentum=0.85,
        nesterov=True,
        label_smoothing=0.1,
        weight_decay=5e-4,
    )
    trainer = Trainer(model, model_spec("fastcnn-small"), train, cfg, machine)
    muon, biases, head = trainer.optimizer.param_groups
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad]
    assert muon["orthogonalize"] and {id(p) for p in muon["params"]} == {id(p) for p in convs}  # not the stem
    assert not biases["orthogonalize"] and all(p.ndim == 1 for p in biases["params"])
    assert biases["weight_decay"] == head["weight_decay"] == 5e-4 and muon["weight_decay"] == 0  # as airbench
    assert head["params"] == [model.head.weight] and head["initial_lr"] == 0.01  # the peak of its schedule
    trainer.fit(None)
    test = data.splits["test"]
    logits, labels = predict_logits(model, DeviceBatches(test, 256, train.preprocess), machine)
    assert (logits.argmax(1) == labels).float().mean() > 0.9
    for w in convs:  # normalised before each step, so each bank ends within one step of sqrt(out_channels)
        assert w.norm().item() == pytest.approx(len(w) ** 0.5, rel=0.1)


def test_muon_state_survives_a_checkpoint(tmp_path):
    model = create_model("fastcnn-small", 3, 10, 16)
    images, labels = torch.randn(8, 3, 16, 16), torch.arange(8)

    def step(optimizer):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    cfg = TrainConfig(optimizer="muon", nesterov=True)
    optimizer = build_optimizer(model, cfg, model_spec("fastcnn-small"))
    step(optimizer)
    save_checkpoint(tmp_path / "c.safetensors", {"model": model.state_dict(), "optimizer": optimizer.state_dict()})
    step(optimizer)
    expected = [p.detach().clone() for p in model.parameters()]
    state = load_checkpoint(tmp_path / "c.safetensors")
    model.load_state_dict(state["model"])
    restored = build_optimizer(model, cfg, model_spec("fastcnn-small"))
    restored.load_state_dict(state["optimizer"])
    step(restored)
    assert all(torch.equal(p, e) for p, e in zip(model.parameters(), expected, strict=True))
