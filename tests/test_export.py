"""`cnnkit export`: for a model of every built-in family (and of each family of torchvision's backbones), the
ONNX file (run by onnxruntime) and the .pt2 program (loaded by torch.export) give the probabilities `cnnkit
predict` gives, on real images, at batch sizes 1 and 3; an export that would disagree is never written. The
Triton model repository reads in Triton's own schema and answers as the run; every export records the weights
it was made from, and a stale model.onnx is passed over; a run still training is not exported."""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnkit
from cnnkit import CnnkitError
from cnnkit.cli.main import main
from cnnkit.data.images import decode_image
from cnnkit.models.weights import save_weights
from cnnkit.runs.folder import claim, release
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


def documented_model_input():
    """The function docs/export-compress-serve.md gives ONNX users to prepare their images, as written there."""
    text = (Path(__file__).parents[1] / "docs" / "export-compress-serve.md").read_text()
    section = text.split("### Images in, as `cnnkit predict` reads them", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(code, namespace)
    return namespace["model_input"]


def awkward_images(folder: Path) -> list[Path]:
    """The files whose decoding differs from a plain 8-bit RGB one, each wider than tall."""
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    sideways = Image.fromarray(colour)
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: the picture is stored sideways
    files = {
        "sixteen.png": Image.fromarray((rng.integers(0, 65536, (12, 20))).astype(np.uint16)),
        "float.tiff": Image.fromarray(rng.random((12, 20)).astype(np.float32)),
        "alpha.png": Image.fromarray(rng.integers(0, 256, (12, 20, 4), dtype=np.uint8), "RGBA"),
        "grey-alpha.png": Image.fromarray(rng.integers(0, 256, (12, 20, 2), dtype=np.uint8), "LA"),
        "palette.gif": Image.fromarray(colour).convert("P"),
        "grey.png": Image.fromarray(colour[..., 0]),
        "square.jpg": Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)),  # libjpeg-turbo's path
    }
    paths = []
    for name, image in files.items():
        options = {"transparency": 0} if name.endswith(".gif") else {}
        image.save(folder / name, **options)
        paths.append(folder / name)
    sideways.save(folder / "sideways.jpg", exif=exif)
    return [*paths, folder / "sideways.jpg"]


@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_documented_onnx_input_is_what_cnnkit_predict_reads_byte_for_byte(tmp_path, channels, resize):
    model_input = documented_model_input()
    for path in awkward_images(tmp_path):
        expected = decode_image(path, 16, channels, resize).numpy()
        assert np.array_equal(model_input(path, 16, channels, resize), expected), path.name


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> cnnkit.Run:
    out = tmp_path_factory.mktemp("export") / "digits run"  # a space: not in a Triton model's name
    cnnkit.train(model="simplecnn", steps=50, report=False, out=str(out))
    return cnnkit.load(out, device="cpu")


@pytest.fixture(scope="module")
def triton_model(digits_run):
    """`cnnkit export RUN --format triton`'s one model folder, and what the command printed."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["export", str(digits_run.dir), "--format", "triton"]) == 0
    return digits_run.dir / "triton" / "digits_run", printed.getvalue()


def unexported_copy(run: cnnkit.Run, where):
    """A copy of the run's folder without its exports, for a test that changes it."""
    return shutil.copytree(run.dir, where, ignore=shutil.ignore_patterns("model.onnx", "model.pt2", "triton"))


def sha256_of_weights(run_dir) -> str:
    return hashlib.sha256((run_dir / "weights.safetensors").read_bytes()).hexdigest()


def recorded_weights(onnx_path) -> str | None:
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.get_modelmeta().custom_metadata_map.get("cnnkit_weights_sha256")


def test_the_triton_export_answers_as_the_run_with_its_class_names(digits_run, triton_model):
    model, printed = triton_model
    assert f"tritonserver --model-repository={(digits_run.dir / 'triton').resolve()}" in printed
    files = {p.relative_to(model).as_posix() for p in model.rglob("*")}
    assert files == {"1", "1/model.onnx", "config.pbtxt", "labels.txt"}
    assert not list(model.parent.glob(".*"))  # no scratch folder left in the repository
    assert (model / "labels.txt").read_text().splitlines() == digits_run.classes
    assert recorded_weights(model / "1" / "model.onnx") == sha256_of_weights(digits_run.dir)
    session = onnxruntime.InferenceSession(str(model / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    images = digits_run.split().images[10:40]
    exported = session.run(None, {"images": images.numpy()})[0]
    expected = predicted(digits_run, images)
    assert (exported.argmax(1) == expected.argmax(1)).all() and np.abs(exported - expected).max() < 1e-4


def test_the_triton_config_reads_in_tritons_own_schema(digits_run, triton_model):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="needs Triton's schema: pip install 'tritonclient[grpc]'"
    )
    from google.protobuf import text_format

    model, _ = triton_model
    config = text_format.Parse((model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert (config.name, config.platform, config.max_batch_size) == ("digits_run", "onnxruntime_onnx", 64)
    assert config.HasField("dynamic_batching")
    (images,), (probabilities,) = config.input, config.output
    channels, side = digits_run.info.in_channels, digits_run.info.image_size
    assert (images.name, images.data_type) == ("images", model_config_pb2.TYPE_UINT8)
    assert list(images.dims) == [channels, side, side]
    assert (probabilities.name, probabilities.data_type) == ("probabilities", model_config_pb2.TYPE_FP32)
    assert list(probabilities.dims) == [len(digits_run.classes)] and probabilities.label_filename == "labels.txt"


def test_a_failed_triton_export_leaves_the_repository_as_it_was(digits_run, tmp_path, monkeypatch):
    repository = tmp_path / "models"
    export_run(digits_run, "triton", repository)
    (repository / "another-model").mkdir()
    before = {p: p.read_bytes() for p in repository.rglob("*") if p.is_file()}
    monkeypatch.setattr(cnnkit.ship.export, "PARITY", -1.0)  # no export can pass: as if one disagreed
    for where in (repository, tmp_path / "new"):
        with pytest.raises(CnnkitError, match="so it was not written"):
            export_run(digits_run, "triton", where)
    assert {p: p.read_bytes() for p in repository.rglob("*") if p.is_file()} == before
    assert (repository / "another-model").is_dir() and not list(repository.glob(".*"))
    assert not (tmp_path / "new").exists()  # a repository the export began goes with it


def test_every_export_records_its_weights_and_a_stale_onnx_is_passed_over(digits_run, tmp_path, capsys):
    onnx = pytest.importorskip("onnx", reason="needs the export extra: pip install 'cnnkit[export]'")
    run_dir = unexported_copy(digits_run, tmp_path / "run")
    run = cnnkit.load(run_dir, device="cpu")
    onnx_path = export_run(run, "onnx").path
    extra = {"cnnkit_weights_sha256": ""}
    torch.export.load(str(export_run(run, "pt2").path), extra_files=extra)
    assert recorded_weights(onnx_path) == extra["cnnkit_weights_sha256"] == sha256_of_weights(run_dir)
    assert run.exported_onnx() == onnx_path and "warning" not in capsys.readouterr().out

    with torch.no_grad():  # the run trained since: other weights than the export's
        next(run.model.parameters()).add_(0.01)
    save_weights(run.model, run_dir / "weights.safetensors")
    assert cnnkit.load(run_dir, device="cpu").exported_onnx() is None
    warned = capsys.readouterr().out
    assert warned.count("warning:") == 1 and "was exported from other weights than the run's now" in warned
    assert f"run `cnnkit export {run_dir}` again" in warned

    model = onnx.load(str(export_run(run, "onnx").path))
    assert cnnkit.load(run_dir, device="cpu").exported_onnx() == onnx_path  # exported again: up to date
    del model.metadata_props[:]  # as an older cnnkit wrote it: no hash, so no knowing its weights
    onnx.save(model, str(onnx_path))
    assert cnnkit.load(run_dir, device="cpu").exported_onnx() is None
    assert "was exported from other weights" in capsys.readouterr().out


def test_a_run_still_training_is_not_exported_and_an_export_holds_its_lock(digits_run, tmp_path, capsys, monkeypatch):
    run_dir = unexported_copy(digits_run, tmp_path / "run")
    lock = claim(run_dir)  # as the training process holds it: flock conflicts between two opens of one process too
    try:
        assert main(["export", str(run_dir)]) == 2
    finally:
        release(lock)
    assert (
        f"{run_dir} is still training (another process holds its lock): export it when the run has finished"
        in capsys.readouterr().err
    )
    assert not (run_dir / "model.onnx").exists()

    write_onnx = cnnkit.ship.export._write_onnx

    def write_while_claimed(*args):  # while the export writes, nothing else may claim the run: no --resume
        with pytest.raises(CnnkitError, match="in use by another cnnkit run"):
            claim(run_dir)
        return write_onnx(*args)

    monkeypatch.setattr(cnnkit.ship.export, "_write_onnx", write_while_claimed)
    assert main(["export", str(run_dir)]) == 0 and (run_dir / "model.onnx").is_file()
    release(claim(run_dir))  # and once written, the lock is let go
