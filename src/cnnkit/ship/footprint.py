"""What a version of a model costs and gives, measured one way for all (`cnnkit compress` and its benchmark):
its file's size as it is and zipped, CPU latency per image at batch 1 and 64, and accuracy on the test split."""

from __future__ import annotations

import statistics
import time
import zlib
from pathlib import Path

import torch
from torch import nn

from cnnkit.core.progress import columns
from cnnkit.data.sets import ImageSet
from cnnkit.models.inference import probabilities_of
from cnnkit.training.evaluation import eval_batch

LATENCY_BATCHES = (1, 64)  # one image at a time, as a request comes; a full batch, as a job or a busy server runs
WARMUP_CALLS = 3  # untimed calls first: the first ones allocate and pick kernels
TIMED_SECONDS = 1.0  # each latency is the median of repeated calls that fill at least this long
TIMED_CALLS = 5  # and at least this many


def footprint(classifier: nn.Module, file: Path, test: ImageSet) -> dict:
    """The size of `file` (the model), and the CPU latency and test accuracy of `classifier` (uint8 images in,
    probabilities out) on `test`."""
    data = file.read_bytes()
    answers = probabilities_of(classifier, test.images, eval_batch(test.images.shape[-1])).argmax(1)
    return {
        "file": file.name,
        "bytes": len(data),
        "zipped_bytes": len(zlib.compress(data)),  # what a download weighs: pruned zeros cost little there
        **{f"ms_per_image_batch_{n}": ms_per_image(classifier, _batch(test, n)) for n in LATENCY_BATCHES},
        "test_accuracy": round(float((answers == test.labels).float().mean()), 6),
    }


@torch.no_grad()
def ms_per_image(classifier: nn.Module, images: torch.Tensor) -> float:
    for _ in range(WARMUP_CALLS):
        classifier(images)
    times: list[float] = []
    while sum(times) < TIMED_SECONDS or len(times) < TIMED_CALLS:
        start = time.perf_counter()
        classifier(images)
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times) / len(images), 4)


def _batch(test: ImageSet, size: int) -> torch.Tensor:
    """`size` real test images (repeated if the split has fewer)."""
    return test.images[torch.arange(size) % len(test)]


def footprint_table(versions: dict[str, dict]) -> list[str]:
    """Versions (name -> footprint) as aligned lines, with a header."""
    rows = [("", "file", "size MiB", "zipped MiB", *(f"ms/image @{n}" for n in LATENCY_BATCHES), "test accuracy")]
    for name, f in versions.items():
        latencies = (f"{f[f'ms_per_image_batch_{n}']:.3f}" for n in LATENCY_BATCHES)
        sizes = (f"{f[key] / 2**20:.3f}" for key in ("bytes", "zipped_bytes"))
        rows.append((name, f["file"], *sizes, *latencies, f"{f['test_accuracy']:.4f}"))
    return columns(rows, left=2)
