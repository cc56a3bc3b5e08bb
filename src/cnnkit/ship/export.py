"""`cnnkit export`: a run's whole prediction (uint8 images in, probabilities out: `Run.inference_model()`) as an
ONNX file or a torch.export program (.pt2), for any batch size, written only once it gives the run's own
probabilities on the run's real test images."""

from __future__ import annotations

import io
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.core.errors import CnnkitError, require_extra
from cnnkit.core.files import atomic_write
from cnnkit.models.inference import OnnxClassifier
from cnnkit.runs.folder import ONNX
from cnnkit.runs.run import Run

FORMATS = {"onnx": ONNX, "pt2": "model.pt2"}
PARITY = 1e-4  # the largest difference in any probability an export may show against the run itself
CHECKED_BATCHES = (1, 3, 64)  # batch sizes the check runs: one image, an odd few, a full batch
EXAMPLE_BATCH = 2  # exported from a batch of 2: an example of 1 would freeze the batch size (pytorch #157621)
Predict = Callable[[torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class Exported:
    path: Path
    largest_difference: float  # in any probability, over every image checked
    images: int  # real test images checked, in batches of CHECKED_BATCHES


def export_run(run: Run, fmt: str, path: Path | None = None) -> Exported:
    """Export `run` to `path` (default RUN/model.onnx or RUN/model.pt2) after checking it on real test images;
    an export that disagrees is refused and nothing is written."""
    if fmt not in FORMATS:
        raise CnnkitError(f"--format {fmt} is not one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        require_extra("exporting to ONNX", "export", "onnx", "onnxscript", "onnxruntime")
    run.network("export again (its model.onnx is the export)")
    classifier = run.inference_model().cpu()
    images = run.split().images[: sum(CHECKED_BATCHES)]  # a tensor, even from images kept on disk
    example = images[:EXAMPLE_BATCH].clone()  # a copy: the program keeps it, and a view keeps all the images
    path = path or run.dir / FORMATS[fmt]
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(classifier, (example,), dynamic_shapes={"images": {0: batch}})
        parts = _batches(images)
        expected = [classifier(part).numpy() for part in parts]
    checked: dict[str, float] = {}

    def write(tmp: Path) -> None:
        predict = _write_onnx(program, tmp) if fmt == "onnx" else _write_pt2(program, tmp)
        largest = max(float(np.abs(predict(part) - want).max()) for part, want in zip(parts, expected, strict=True))
        if not largest <= PARITY:  # NaN fails too
            raise CnnkitError(
                f"the {fmt} export gives other probabilities than the run itself (by up to {largest:.2g} on its test "
                f"images, more than {PARITY:g}), so it was not written; please report this with the run's model"
            )
        checked["largest"] = largest

    atomic_write(path, write)
    return Exported(path, checked["largest"], len(images))


def _batches(images: torch.Tensor) -> list[torch.Tensor]:
    """The images cut into batches of CHECKED_BATCHES, as many as there are images for."""
    edges = [0, *itertools.accumulate(CHECKED_BATCHES)]
    return [images[a:b].contiguous() for a, b in itertools.pairwise(edges) if a < len(images)]


def _write_pt2(program: torch.export.ExportedProgram, path: Path) -> Predict:
    archive = io.BytesIO()  # through memory: torch.export reads and writes only files named *.pt2, or buffers
    with warnings.catch_warnings():  # torch warns of weights that may not be on the CPU: these are
        warnings.filterwarnings("ignore", message="No complete tensor found")
        torch.export.save(program, archive)
        path.write_bytes(archive.getvalue())
        archive.seek(0)
        module = torch.export.load(archive).module()  # read back: the check runs what was written
    return lambda images: module(images).detach().numpy()


def _write_onnx(program: torch.export.ExportedProgram, path: Path) -> Predict:
    torch.onnx.export(  # the weights inside the one file (up to ONNX's 2 GB), not in a file beside it
        program,
        (),
        str(path),
        dynamo=True,
        input_names=["images"],
        output_names=["probabilities"],
        external_data=False,
        verbose=False,
    )
    classifier = OnnxClassifier(path)
    return lambda images: classifier(images).numpy()
