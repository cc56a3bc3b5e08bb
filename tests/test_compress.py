"""`cnnkit compress`: an int8 model (onnxruntime) and a pruned one, each in a run folder of its own that
predicts, evaluates and serves, measured beside the original on the run's real test images; a pruned
fine-tune keeps its zeros, through a resume too."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cnnkit
from cnnkit import CnnkitError
from cnnkit.cli.main import main
from cnnkit.training.pruning import sparsity
from cnnkit.training.stopping import TrainingInterrupted

onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install 'cnnkit[export]'")
pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'cnnkit[export]'")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> cnnkit.Run:
    out = tmp_path_factory.mktemp("compress") / "digits"
    cnnkit.train(model="resnet9-small", image_size=16, epochs=4, tta=True, report=False, out=str(out))
    return cnnkit.load(out, device="cpu")


@pytest.fixture(scope="module")
def int8_dir(digits_run, tmp_path_factory):
    """The run compressed to int8 by the command, and what the command printed."""
    out, printed = tmp_path_factory.mktemp("int8") / "int8", io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["compress", str(digits_run.dir), "--quantize", "int8", "--out", str(out)]) == 0
    return out, printed.getvalue()


def versions(run_dir) -> dict:
    return cnnkit.load(run_dir).summary.compressed["versions"]


def test_int8_is_a_smaller_run_that_predicts_evaluates_and_serves_as_the_original(digits_run, int8_dir, capsys):
    out, printed = int8_dir
    assert "original  weights.safetensors" in printed and "int8      model.onnx" in printed
    assert not (out / "weights.safetensors").exists()
    graph = onnx.load(str(out / "model.onnx")).graph
    assert {"QuantizeLinear", "DequantizeLinear"} <= {node.op_type for node in graph.node}
    assert any(w.data_type == onnx.TensorProto.INT8 for w in graph.initializer)  # the weights themselves are int8
    original, int8 = versions(out).values()
    assert int8["bytes"] < original["bytes"] / 2
    assert original["test_accuracy"] > 0.9 and int8["test_accuracy"] > original["test_accuracy"] - 0.02
    run = cnnkit.load(out)
    assert run.evaluate()["test_accuracy"] == pytest.approx(int8["test_accuracy"])
    images = digits_run.split().images[:40]
    agree = (run.probabilities(images).argmax(1) == digits_run.probabilities(images).argmax(1)).float().mean()
    assert agree >= 0.95
    testclient = pytest.importorskip("fastapi.testclient", reason="needs the serve extra")
    from cnnkit.ship.serve import create_app

    client = testclient.TestClient(create_app(run))
    assert client.get("/health").json()["engine"] == "onnxruntime"
    for command, refusal in (("export", "cannot export again"), ("summary", "cannot summarise")):
        assert main([command, str(out)]) == 2
        assert refusal in capsys.readouterr().err


ON_AVX2 = """
import sys, numpy as np, onnxruntime
session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
images, labels = np.load(sys.argv[2]), np.load(sys.argv[3])
scores = np.concatenate([session.run(None, {"images": images[i : i + 64]})[0] for i in range(0, len(images), 64)])
print((scores.argmax(1) == labels).mean())
"""


@pytest.mark.skipif(shutil.which("qemu-x86_64") is None, reason="needs qemu-x86_64 (apt-get install qemu-user)")
def test_int8_keeps_its_accuracy_on_a_cpu_without_vnni(digits_run, int8_dir, tmp_path):
    """onnxruntime's int8 kernels for AVX2 alone (no VNNI) saturate on 8-bit weights: emulated here by running
    the int8 model on a Haswell CPU (AVX2, no AVX512, no VNNI), whatever CPU the test runs on."""
    test = digits_run.split()
    np.save(tmp_path / "images.npy", test.images.numpy())
    np.save(tmp_path / "labels.npy", test.labels.numpy())
    (tmp_path / "on_avx2.py").write_text(ON_AVX2)
    python = os.path.realpath(sys.executable)  # the interpreter itself, not the venv's link to it
    paths = os.pathsep.join(p for p in sys.path if p)  # the venv's packages, which qemu's python cannot find itself
    command = ["qemu-x86_64", "-cpu", "Haswell", python, str(tmp_path / "on_avx2.py"), str(int8_dir[0] / "model.onnx")]
    ran = subprocess.run(
        [*command, str(tmp_path / "images.npy"), str(tmp_path / "labels.npy")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": paths},
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    original, int8 = versions(int8_dir[0]).values()
    assert float(ran.stdout) == pytest.approx(int8["test_accuracy"], abs=0.005)  # as on this CPU
    assert float(ran.stdout) > original["test_accuracy"] - 0.02


def test_pruning_zeroes_that_share_of_the_weights_and_keeps_the_accuracy(digits_run, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(["compress", str(digits_run.dir), "--prune", "0.6", "--steps", "30", "--out", str(out)]) == 0
    assert "pruned    weights.safetensors" in capsys.readouterr().out
    pruned = cnnkit.load(out, device="cpu")
    assert pruned.config.prune == 0.6 and pruned.config.init_from == str(digits_run.dir.resolve())
    assert sparsity(pruned.model) == pytest.approx(0.6, abs=1e-4)
    original, smaller = versions(out).values()
    assert smaller["zipped_bytes"] < 0.8 * original["zipped_bytes"]  # zeros are what a download squeezes
    assert smaller["test_accuracy"] > original["test_accuracy"] - 0.03


def test_a_pruned_fine_tune_stopped_and_resumed_keeps_its_zeros_exactly(digits_run, tmp_path):
    settings = {"init_from": str(digits_run.dir), "prune": 0.5, "model": "resnet9-small", "image_size": 16}
    whole = cnnkit.train(steps=60, report=False, out=str(tmp_path / "whole"), **settings)

    class CtrlC(cnnkit.Callback):
        def on_step_end(self, trainer, loss):
            if trainer.pos.step == 20 and trainer.pos.epoch == 2:
                os.kill(os.getpid(), signal.SIGINT)

    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        cnnkit.train(steps=60, report=False, out=str(stopped), callbacks=[CtrlC()], **settings)
    resumed = cnnkit.resume(stopped)
    for name, weight in load_file(whole.dir / "weights.safetensors").items():
        assert torch.equal(weight, load_file(resumed.dir / "weights.safetensors")[name]), name
    assert sparsity(resumed.model) == pytest.approx(0.5, abs=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prune", "1.5"], "--prune 1.5 must be between 0 and 1"),
        (["--quantize", "int8", "--steps", "5"], "--steps is the fine-tune's, after --prune"),
        (["--prune", "0.5", "--calibration-images", "9"], "--calibration-images goes with --quantize int8"),
        (["--quantize", "int8", "--calibration-images", "0"], "--calibration-images 0 must be at least 1"),
    ],
)
def test_compress_mistakes_end_in_one_line(digits_run, args, message, capsys):
    assert main(["compress", str(digits_run.dir), *args]) == 2
    assert message in capsys.readouterr().err


def test_an_int8_run_is_not_compressed_again(int8_dir):
    with pytest.raises(CnnkitError, match="int8 ONNX model .* cannot compress again; use the run it was made from"):
        cnnkit.prune(cnnkit.load(int8_dir[0]), 0.5)


def test_a_quantisation_that_fails_half_way_leaves_no_folder(digits_run, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cnnkit.ship.compress, "_record", no_space)  # fails after the model is written
    with pytest.raises(OSError, match="No space left"):
        cnnkit.quantize(digits_run, tmp_path / "int8", calibration_images=32)
    assert not (tmp_path / "int8").exists()


def test_a_folder_that_holds_files_is_refused_before_any_work(digits_run, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    assert main(["compress", str(digits_run.dir), "--quantize", "int8", "--out", str(tmp_path / "taken")]) == 2
    captured = capsys.readouterr()
    assert "already holds files" in captured.err and "calibrating" not in captured.out
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["notes.txt"]


def test_a_compression_that_costs_accuracy_says_so(digits_run, tmp_path, capsys):
    pruned = cnnkit.prune(digits_run, 0.97, tmp_path / "gutted", steps=1)  # almost nothing left, nothing mended
    warning = pruned.summary.warnings[-1]
    assert "the pruned model is" in warning and "points less accurate" in warning and "smaller --prune" in warning
    assert f"warning: {warning}" in capsys.readouterr().out
