"""A run's model.json, checked at the edge: as cnnkit wrote it, or refused with what is wrong, before any
of it builds a model or preprocesses an image (an edited or damaged file must not predict garbage); and whether
a checkpoint, a module or the data still match the run that model.json describes."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import read_json
from cnnkit.data import Dataset
from cnnkit.data.images import RESIZE_RULES
from cnnkit.data.splits import chunk_rows
from cnnkit.models import CUSTOM

DESCRIPTION = ("model", "model_options", "classes", "in_channels", "image_size", "mean", "std", "resize")  # must match


def read_model_info(path: Path) -> dict:
    info = read_json(path)
    problem = model_info_problem(info)
    if problem:
        raise CnnkitError(
            f"{path} is not a valid cnnkit model.json ({problem}); it was edited or damaged: use "
            "the run folder as `cnnkit train` wrote it, or train again"
        )
    return info


def model_info_problem(info: object) -> str | None:
    """What is wrong with a model.json's content, or None."""
    if not isinstance(info, dict):
        return "it holds no mapping"
    kinds = {
        "model": str,
        "model_options": dict,
        "in_channels": int,
        "image_size": int,
        "classes": list,
        "mean": list,
        "std": list,
    }
    for key, kind in kinds.items():
        if not isinstance(info.get(key), kind) or isinstance(info.get(key), bool):
            return f"{key!r} is missing or not a {kind.__name__}"
    channels, classes = info["in_channels"], info["classes"]
    if channels not in (1, 3):
        return f"in_channels is {channels}, not 1 or 3"
    if not 4 <= info["image_size"] <= 1024:
        return f"image_size is {info['image_size']}, not 4 to 1024"
    if len(classes) < 2 or len(set(map(str, classes))) != len(classes) or not all(isinstance(c, str) for c in classes):
        return "classes must be two or more different names"
    for key in ("mean", "std"):
        values = info[key]
        if len(values) != channels or not all(_plausible(v) for v in values):
            return f"{key} must hold {channels} number(s) from -10 to 10, one per channel (pixels are on a 0..1 scale)"
    if info.get("resize", "squash") not in RESIZE_RULES:
        return f"resize is {info['resize']!r}, not one of {', '.join(RESIZE_RULES)}"
    if min(info["std"]) < 1e-6:
        return "std must be positive: a zero std divides every pixel by zero"
    return None


def _plausible(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) <= 10


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


def check_same_run(recorded: dict, now: dict, what: str) -> None:
    """Refuse to use `what` (a checkpoint, a run's test split) whose recorded description differs from the run
    as it is now: another model, other classes or preprocessing, or data that changed since."""
    problem = model_info_problem(recorded)
    if problem:
        raise CnnkitError(f"{what} describes its model wrongly ({problem}): it was edited or damaged")
    if "data" in recorded and recorded["data"] != now["data"]:
        then, later = _sizes(recorded), _sizes(now)
        raise CnnkitError(
            f"the data changed since this run was trained (train/val/test images then {then}, now {later}, or "
            f"their content), so {what} no longer matches it. To measure the run on new images, use "
            "`cnnkit eval RUN --data NEW-FOLDER`; to learn from them, train a new run; to go on, put the data back"
        )
    differs = [
        f"{k}: {recorded[k]!r} there, {now.get(k)!r} here"
        for k in DESCRIPTION
        if k in recorded and not _same(recorded[k], now.get(k))
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


def _sizes(info: dict) -> str:
    try:
        return "/".join(str(info["data"]["sizes"][s]) for s in ("train", "val", "test"))
    except (KeyError, TypeError):
        return "unknown"


def require_module(info: dict, module: nn.Module | None) -> None:
    """A run of a module passed in from Python can only be loaded or resumed with an instance of it."""
    if info["model"] == CUSTOM and module is None:
        name = info.get("module", "MyNet")
        raise CnnkitError(
            f"this run trained a custom nn.Module ({name}), which cnnkit cannot rebuild by name; in "
            f"Python, pass an instance: cnnkit.load(run_dir, model={name}(...)), or "
            f"cnnkit.resume(run_dir, model={name}(...))"
        )
