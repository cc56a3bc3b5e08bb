"""A run's model.json, checked at the edge: as cnnkit wrote it, or refused with what is wrong, before any
of it builds a model or preprocesses an image (an edited or damaged file must not predict garbage)."""

from __future__ import annotations

import math
from pathlib import Path

from cnnkit.data.images import RESIZE_RULES
from cnnkit.errors import CnnkitError
from cnnkit.files import read_json


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
