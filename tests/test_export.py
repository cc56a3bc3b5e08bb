"""`cnnkit export`: for a model of every built-in family (and of each family of torchvision's backbones), the
ONNX file (run by onnxruntime) and the .pt2 program (loaded by torch.export) give the probabilities `cnnkit
predict` gives, on real images, at batch sizes 1 and 3; an export that would disagree is never written."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import cnnkit
from cnnkit import CnnkitError
from cnnkit.cli.main import main
from cnnkit.ship.export import export_run

onnxruntime = pytest.importorskip("onnxruntime", reason="needs the export extra: pip install 'cnnkit[export]'")

FAMILIES = {  # one model of each family, with what each adds to the exported graph
    "simplecnn": {},  # the tutorials' nets
    "resnet9-small": {"tta": True},  # residual nets; the six views of test-time augmentation
    "fastcnn-small": {"whiten": True},  # airbench's net, its patch-whitening layer
    "resnet18": {},  # torchvision's backbones, each family of them:
    "mobilenet_v3_small": {},  # hard-swish, squeeze-excitation
    "efficientnet_b0": {},  # SiLU, stochastic depth
    "convnext_tiny": {},  # layer norm over permuted channels, layer scale
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / request.param
    cnnkit.train(model=request.param, image_size=32, steps=3, report=False, out=str(out), **FAMILIES[request.param])
    yield cnnkit.load(out, device="cpu")
    shutil.rmtree(out)  # convnext_tiny's run and exports are 640 MB: CI's disk may not hold every family's at once


def predicted(run: cnnkit.Run, images: torch.Tensor) -> np.ndarray:
    """The probability of every class, in the run's order, as `cnnkit predict` gives them."""
    rows = run.predict_images(images, top_k=len(run.classes))
    return np.array([[{p["class"]: p["probability"] for p in row}[c] for c in run.classes] for row in rows])


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_the_export_gives_the_probabilities_cnnkit_predict_gives(family_run, fmt, capsys):
    assert main(["export", str(family_run.dir), "--format", fmt]) == 0
    assert "gives the run's probabilities within" in capsys.readouterr().out
    path = family_run.dir / f"model.{fmt}"
    assert not list(family_run.dir.glob(".*"))  # nothing left beside it: no temporary file, no external weights
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (images_input,) = session.get_inputs()
        assert isinstance(images_input.shape[0], str)  # a symbolic batch size, not frozen at the example's
        exported = lambda images: session.run(None, {"images": images.numpy()})[0]  # noqa: E731
    else:
        module = torch.export.load(str(path)).module()
        exported = lambda images: module(images).detach().numpy()  # noqa: E731
    images = family_run.split().images[10:14]
    for batch in (images[:1], images[1:4]):
        assert np.abs(exported(batch) - predicted(family_run, batch)).max() < 1e-4


def test_an_export_that_disagrees_is_not_written(tmp_path, monkeypatch):
    run = cnnkit.train(model="simplecnn", steps=2, report=False, out=str(tmp_path / "run"))
    monkeypatch.setattr(cnnkit.ship.export, "PARITY", -1.0)  # no export can pass: as if one disagreed
    with pytest.raises(CnnkitError, match="gives other probabilities than the run itself .* so it was not written"):
        export_run(run, "pt2")
    assert not (run.dir / "model.pt2").exists() and not list(run.dir.glob(".*tmp*"))


def test_export_mistakes_end_in_one_line(tmp_path, capsys):
    assert main(["export", str(tmp_path)]) == 2
    assert "is not a finished cnnkit run folder" in capsys.readouterr().err
