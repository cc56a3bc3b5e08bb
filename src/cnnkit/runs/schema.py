"""Whether a checkpoint, a module or the data still match the run that its model.json describes."""

from __future__ import annotations

import hashlib
import math

from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.data import Dataset
from cnnkit.data.splits import chunk_rows
from cnnkit.models import CUSTOM
from cnnkit.runs.records import ModelInfo, model_info_problem

DESCRIPTION = ("model", "model_options", "classes", "in_channels", "image_size", "mean", "std", "resize")  # must match


def data_fingerprint(data: Dataset) -> dict:
    """What pins a run's data down: each split's size, and a hash of its labels and a grid of its pixels
    (every 4th row and column: any changed, added or moved image shows, at a 16th of the cost)."""
    digest = hashlib.blake2b(digest_size=16)
    for name in ("train", "val", "test"):
        part = data.splits[name]
        digest.update(f"|{name}|".encode())
        digest.update(part.labels.numpy().tobytes())
        for chunk in part.images.split(chunk_rows(part.images)):  # in chunks: the images may be on disk
            digest.update(chunk[..., ::4, ::4].contiguous().numpy().tobytes())
    return {"sizes": {name: len(part) for name, part in data.splits.items()}, "hash": digest.hexdigest()}


def check_same_run(recorded: object, now: ModelInfo, what: str) -> None:
    """Refuse to use `what` (a checkpoint, a run's test split) whose recorded description differs from the run
    as it is now: another model, other classes or preprocessing, or data that changed since."""
    problem = model_info_problem(recorded)
    if problem or not isinstance(recorded, dict):
        raise CnnkitError(f"{what} describes its model wrongly ({problem}): it was edited or damaged")
    if "data" in recorded and recorded["data"] != now.data:
        then, later = _sizes(recorded["data"]), _sizes(now.data)
        raise CnnkitError(
            f"the data changed since this run was trained (train/val/test images then {then}, now {later}, or "
            f"their content), so {what} no longer matches it. To measure the run on new images, use "
            "`cnnkit eval RUN --data NEW-FOLDER`; to learn from them, train a new run; to go on, put the data back"
        )
    differs = [
        f"{k}: {recorded[k]!r} there, {getattr(now, k)!r} here"
        for k in DESCRIPTION
        if k in recorded and not _same(recorded[k], getattr(now, k))
    ]
    if differs:
        raise CnnkitError(
            f"{what} was written for another model or preprocessing ({'; '.join(differs[:3])}); "
            "use the run folder it came from"
        )


def _same(recorded, now) -> bool:
    """Equal, but for the last bits of the data's mean and std, which depend on how many threads summed them."""
    if isinstance(recorded, list) and isinstance(now, list) and len(recorded) == len(now):
        return all(
            math.isclose(a, b, rel_tol=1e-6) if isinstance(a, float) else a == b
            for a, b in zip(recorded, now, strict=True)
        )
    return recorded == now


def _sizes(fingerprint: object) -> str:
    try:
        return "/".join(str(fingerprint["sizes"][s]) for s in ("train", "val", "test"))  # type: ignore[index]
    except (KeyError, TypeError):
        return "unknown"


def require_module(info: ModelInfo, module: nn.Module | None) -> None:
    """A run of a module passed in from Python can only be loaded or resumed with an instance of it."""
    if info.model == CUSTOM and module is None:
        name = info.module or "MyNet"
        raise CnnkitError(
            f"this run trained a custom nn.Module ({name}), which cnnkit cannot rebuild by name; in "
            f"Python, pass an instance: cnnkit.load(run_dir, model={name}(...)), or "
            f"cnnkit.resume(run_dir, model={name}(...))"
        )
