"""`cnnkit export`: a run's whole prediction (uint8 images in, probabilities out: `Run.inference_model()`) as an
ONNX file, a torch.export program (.pt2) or a Triton Inference Server model repository, for any batch size,
written only once it gives the run's own probabilities on the run's real test images. Each export records the hash
of the weights it was made from (so `Run.exported_onnx` can pass over a stale one) and is made under the run
folder's lock (so no training of the run changes them meanwhile)."""

from __future__ import annotations

import io
import itertools
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.core.errors import CnnkitError, require_extra
from cnnkit.core.files import atomic_write, writing
from cnnkit.core.progress import printable
from cnnkit.models.inference import OnnxClassifier
from cnnkit.runs.folder import ONNX, WEIGHTS_SHA256, finished_run, weights_sha256
from cnnkit.runs.records import ModelInfo
from cnnkit.runs.run import Run

FORMATS = {"onnx": ONNX, "pt2": "model.pt2", "triton": "triton"}  # each one's place in RUN (triton's: a folder)
PARITY = 1e-4  # the largest difference in any probability an export may show against the run itself
CHECKED_BATCHES = (1, 3, 64)  # batch sizes the check runs: one image, an odd few, a full batch
EXAMPLE_BATCH = 2  # exported from a batch of 2: an example of 1 would freeze the batch size (pytorch #157621)
TRITON_MAX_BATCH = 64  # the largest batch Triton's dynamic batcher forms (the ONNX model takes any)
TRITON_CONFIG, LABELS = "config.pbtxt", "labels.txt"
Predict = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class Exported:
    path: Path  # the model file
    largest_difference: float  # in any probability, over every image checked
    images: int  # real test images checked, in batches of CHECKED_BATCHES
    repository: Path | None = None  # with --format triton: the model repository that holds it


def export_run(run: Run, fmt: str, path: Path | None = None) -> Exported:
    """Export `run` to `path` (default RUN/model.onnx, RUN/model.pt2 or the repository RUN/triton) after checking it
    on real test images; an export that disagrees is refused and nothing is written. Refused while the run is
    training, and no resume of it starts until the export is written."""
    if fmt not in FORMATS:
        raise CnnkitError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    if fmt != "pt2":
        require_extra("exporting to ONNX", "export", "onnx", "onnxscript", "onnxruntime")
    run.network("export again (its model.onnx is the export)")
    path = path or run.dir / FORMATS[fmt]
    with finished_run(run.dir, "export it"):  # the weights hashed are the weights exported
        program, parts, expected = _traced(run)
        weights = weights_sha256(run.dir)
        largest: list[float] = []  # the check's finding, once written

        def write(tmp: Path) -> None:
            predict = _write_pt2(program, tmp, weights) if fmt == "pt2" else _write_onnx(program, tmp, weights)
            largest.append(max(float(np.abs(predict(p) - want).max()) for p, want in zip(parts, expected, strict=True)))
            if not largest[-1] <= PARITY:  # NaN fails too
                raise CnnkitError(
                    f"the {fmt} export gives other probabilities than the run itself (by up to {largest[-1]:.2g} on "
                    f"its test images, more than {PARITY:g}), so it was not written; please report this with the "
                    "run's model"
                )

        if fmt == "triton":
            model, repository = _write_triton(run, path, write), path
        else:
            atomic_write(path, write)
            model, repository = path, None
    return Exported(model, largest[-1], sum(map(len, parts)), repository)


def _traced(run: Run) -> tuple[torch.export.ExportedProgram, list[torch.Tensor], list[np.ndarray]]:
    """The run's whole prediction as a program for any batch size, and the test images in batches of
    CHECKED_BATCHES with the run's own probabilities for them: what an export is checked against."""
    classifier = run.inference_model().cpu()
    images = run.split().images[: sum(CHECKED_BATCHES)]  # a tensor, even from images kept on disk
    example = images[:EXAMPLE_BATCH].clone()  # a copy: the program keeps it, and a view keeps all the images
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(classifier, (example,), dynamic_shapes={"images": {0: batch}})
        parts = _batches(images)
        return program, parts, [classifier(part).numpy() for part in parts]


def _batches(images: torch.Tensor) -> list[torch.Tensor]:
    """The images cut into batches of CHECKED_BATCHES, as many as there are images for."""
    edges = [0, *itertools.accumulate(CHECKED_BATCHES)]
    return [images[a:b].contiguous() for a, b in itertools.pairwise(edges) if a < len(images)]


def _write_pt2(program: torch.export.ExportedProgram, path: Path, weights: str) -> Predict:
    archive = io.BytesIO()  # through memory: torch.export reads and writes only files named *.pt2, or buffers
    with warnings.catch_warnings():  # torch warns of weights that may not be on the CPU: these are
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, archive, extra_files={WEIGHTS_SHA256: weights})
        path.write_bytes(archive.getvalue())
        archive.seek(0)
        module = torch.export.load(archive).module()  # read back: the check runs what was written
    return lambda images: module(images).detach().numpy()


def _write_onnx(program: torch.export.ExportedProgram, path: Path, weights: str) -> Predict:
    onnx_program = torch.onnx.export(
        program, (), dynamo=True, input_names=["images"], output_names=["probabilities"], verbose=False
    )
    assert onnx_program is not None  # given no file to write, it returns the program
    onnx_program.model.metadata_props[WEIGHTS_SHA256] = weights
    onnx_program.save(str(path), external_data=False)  # the weights inside the one file (up to ONNX's 2 GB)
    classifier = OnnxClassifier(path)  # read back: the check runs what was written
    return lambda images: classifier(images).numpy()


def _write_triton(run: Run, repository: Path, write_onnx: Callable[[Path], None]) -> Path:
    """The run as one model of the Triton model repository `repository` (made if need be): NAME/config.pbtxt,
    NAME/labels.txt and NAME/1/model.onnx. The model's folder is made in a hidden folder inside the repository,
    then renamed into place, so a failure leaves the repository as it was; its other models are never touched."""
    if any("\n" in c or "\r" in c for c in run.classes):  # labels.txt has one class a line
        raise CnnkitError("a class name holds a line break, which Triton's labels.txt cannot; rename that class")
    for c in run.classes:  # a folder name's bytes that are not UTF-8: Triton would answer them as no text at all
        if c.encode("utf-8", "replace").decode("utf-8") != c:
            raise CnnkitError(f"class {printable(c)} is not UTF-8 text, which Triton's labels.txt must be; rename it")
    name = model_name(run.dir)
    made = not repository.exists()
    try:
        with writing(repository / name):
            repository.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=repository, prefix=f".{name}.") as scratch:
                model = Path(scratch) / name
                _fill_triton_model(model, run, write_onnx)
                if (repository / name).exists():  # an older export: set aside, and removed with the scratch folder
                    (repository / name).rename(Path(scratch) / "older")
                model.rename(repository / name)
    except BaseException:
        if made:  # a repository this export began leaves nothing behind either
            shutil.rmtree(repository, ignore_errors=True)
        raise
    return repository / name / "1" / ONNX


def _fill_triton_model(model: Path, run: Run, write_onnx: Callable[[Path], None]) -> None:
    """The model folder's files: the ONNX model (written and checked by `write_onnx`), its labels, its config."""
    (model / "1").mkdir(parents=True)  # version 1: Triton serves the highest version it finds
    atomic_write(model / "1" / ONNX, write_onnx)
    atomic_write(model / LABELS, lambda tmp: tmp.write_text("".join(f"{c}\n" for c in run.classes)))
    atomic_write(model / TRITON_CONFIG, lambda tmp: tmp.write_text(_triton_config(model.name, run.info)))


def model_name(run_dir: Path) -> str:
    """The run folder's name as a model name for Triton and the Open Inference Protocol (`cnnkit serve`'s /v2):
    letters, digits, `_`, `-` and `.` kept, anything else `_`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", run_dir.resolve().name)


def _triton_config(name: str, info: ModelInfo) -> str:
    """config.pbtxt for the exported ONNX model: Triton batches requests itself (up to TRITON_MAX_BATCH), and the
    probabilities' class names come from labels.txt (Triton's classification extension). Written as text, in the
    schema of Triton's ModelConfig protobuf, so that exporting needs no Triton package (the tests parse it with
    tritonclient's)."""
    side = info.image_size
    return f"""name: "{name}"
platform: "onnxruntime_onnx"
max_batch_size: {TRITON_MAX_BATCH}
input [
  {{
    name: "images"
    data_type: TYPE_UINT8
    dims: [ {info.in_channels}, {side}, {side} ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {len(info.classes)} ]
    label_filename: "{LABELS}"
  }}
]
dynamic_batching {{ }}
"""
