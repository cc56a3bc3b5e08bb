"""`--model timm/NAME`: one of timm's models, built for the data's channels and classes with its own pretrained
config; trained, summarised, exported with parity and served like a built-in model; its weights read from a
local file in timm's layout or torchvision's; and each mistake refused in one line."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import cnnkit
from cnnkit import CnnkitError
from cnnkit.cli.main import main
from cnnkit.models import model_spec
from cnnkit.training.pruning import sparsity

timm = pytest.importorskip("timm", reason="needs the timm extra: pip install 'cnnkit[timm]'")

TINY = "timm/test_resnet"  # timm's own tiny ResNet for tests: 0.4 M parameters


@pytest.fixture(scope="module")
def timm_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("timm") / "run"
    cnnkit.train(model=TINY, image_size=32, epochs=4, report=False, out=str(out))
    return cnnkit.load(out, device="cpu")


def test_its_spec_is_timms_pretrained_config():
    spec = model_spec(TINY)
    config = timm.get_pretrained_cfg("test_resnet")
    assert (spec.head, spec.first_conv) == (config.classifier, config.first_conv)
    assert (spec.input_size, spec.mean, spec.std) == (config.input_size[-1], config.mean, config.std)


def test_a_timm_model_trains_on_grey_digits_and_is_summarised(timm_run, capsys):
    assert timm_run.summary.test_accuracy > 0.8
    first = timm_run.model.get_submodule("conv1.0")
    assert first.in_channels == 1 and timm_run.model.get_classifier().out_features == 10  # the data's shape
    assert main(["summary", str(timm_run.dir)]) == 0
    assert TINY in capsys.readouterr().out


def test_a_timm_model_exports_with_parity_and_is_served(timm_run, capsys):
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    testclient = pytest.importorskip("fastapi.testclient", reason="needs the serve extra")
    from cnnkit.ship.serve import create_app

    assert main(["export", str(timm_run.dir), "--format", "onnx"]) == 0
    assert "gives the run's probabilities within" in capsys.readouterr().out
    image = timm_run.split().images[0, 0].numpy()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    client = testclient.TestClient(create_app(timm_run))
    answer = client.post("/predict", content=buffer.getvalue(), headers={"content-type": "image/png"})
    assert answer.status_code == 200 and client.get("/health").json()["engine"] == "onnxruntime"
    expected = timm_run.predict_images([Image.fromarray(image)])[0]
    assert [p["class"] for p in answer.json()["predictions"]] == [p["class"] for p in expected]


def test_a_timm_model_compresses_to_int8_and_prunes(timm_run, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the export extra")
    assert main(["compress", str(timm_run.dir), "--quantize", "int8", "--out", str(tmp_path / "int8")]) == 0
    original, int8 = cnnkit.load(tmp_path / "int8").summary.compressed["versions"].values()
    assert int8["bytes"] < original["bytes"] / 2 and int8["test_accuracy"] > original["test_accuracy"] - 0.05
    assert main(["compress", str(timm_run.dir), "--prune", "0.5", "--steps", "20", "--out", str(tmp_path / "p")]) == 0
    pruned = cnnkit.load(tmp_path / "p", device="cpu")
    assert sparsity(pruned.model) == pytest.approx(0.5, abs=1e-4) and pruned.summary.test_accuracy > 0.7


def test_a_timm_model_trains_with_two_processes(timm_run, tmp_path):
    run = cnnkit.train(model=TINY, image_size=32, epochs=4, report=False, out=str(tmp_path / "two"), processes=2)
    assert run.summary.test_accuracy > 0.8 and run.summary.num_test_images == timm_run.summary.num_test_images


def test_weights_in_timms_layout_start_the_run_with_grey_filters_summed(tmp_path):
    source = timm.create_model("test_resnet", num_classes=1000)  # as timm's hub holds it: colour, ImageNet's head
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    run = cnnkit.train(
        model=TINY,
        pretrained_weights=str(path),
        image_size=32,
        steps=1,
        lr=1e-12,
        report=False,
        out=str(tmp_path / "r"),
    )
    state, given = run.model.state_dict(), source.state_dict()
    assert torch.allclose(state["conv1.0.weight"], given["conv1.0.weight"].sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(state["layer1.0.conv1.weight"], given["layer1.0.conv1.weight"], atol=1e-6)
    assert state["fc.weight"].shape == (10, given["fc.weight"].shape[1])  # the head made anew for 10 classes


def test_torchvisions_resnet_weights_load_into_timms_resnet(tmp_path):
    import torchvision

    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), path)
    run = cnnkit.train(
        model="timm/resnet18", pretrained_weights=str(path), image_size=32, steps=1, lr=1e-12, report=False,
        out=str(tmp_path / "r"),
    )  # fmt: skip
    assert run.model.get_submodule("conv1").in_channels == 1


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("timm/no_such_net", "timm has no model 'no_such_net'"),
        ("timm/test_convnext", "cannot take 4x4 images.*--image-size 160"),  # its stem shrinks 4 px to nothing
    ],
)
def test_timm_mistakes_end_in_one_line(name, message, tmp_path):
    with pytest.raises(CnnkitError, match=message):
        cnnkit.train(model=name, image_size=4, steps=1, report=False, out=str(tmp_path / "r"))


def test_without_timm_the_message_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "timm", None)  # as where it is not installed: its import fails
    with pytest.raises(CnnkitError, match=r"needs timm, which is not installed: pip install 'cnnkit\[timm\]'"):
        cnnkit.train(model=TINY, steps=1, out=str(tmp_path / "r"))


def test_pretrained_offline_names_the_hub_repository_to_fetch_from(tmp_path, monkeypatch):
    constants = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))  # no weights kept from before
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as offline, without the hub's 30 s of retries
    repository = timm.get_pretrained_cfg("test_resnet").hf_hub_id
    with pytest.raises(CnnkitError, match=f"could not download .* hub repository {repository}.*--pretrained-weights"):
        cnnkit.train(model=TINY, pretrained=True, image_size=32, steps=1, out=str(tmp_path / "r"))
