"""Checkpoints that are safe to open: tensors in safetensors, everything else in JSON, never a pickle.

A checkpoint is one file, written whole to a temporary name, flushed to disk and renamed over the last
one, so the previous checkpoint stays intact until the new one is complete.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import atomic_write

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "cnnkit-checkpoint/1"
RUN_PARTS = ("model", "optimizer", "scheduler", "position", "rng", "run", "model_info")  # a run's checkpoint
MAX_DEPTH = 16  # nesting a training state never reaches (optimiser state: about 5)


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a nested dict of tensors, numbers, strings, lists and dicts (any key type) to one file."""
    tensors: dict[str, torch.Tensor] = {}
    layout = _flatten(state, tensors)
    meta = {"format": FORMAT, "layout": json.dumps(layout)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def require_checkpoint(path: Path) -> None:
    if not path.is_file():
        raise CnnkitError(f"no checkpoint at {path}; a run writes {CHECKPOINT} at the end of every epoch")


def load_checkpoint(path: Path, parts: tuple[str, ...] = ()) -> dict:
    """Read a checkpoint back, with every one of `parts`; anything else (a pickle, a truncated file, another
    format, a crafted layout) is refused before anything in it is used."""
    require_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CnnkitError(f"{path} is not a cnnkit checkpoint (it holds no {FORMAT} marker)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = _unflatten(json.loads(meta["layout"]), tensors)
        missing = [part for part in parts if not isinstance(state, dict) or part not in state]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return state
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise CnnkitError(
            f"{path} is not a readable cnnkit checkpoint: truncated, corrupt or another format "
            f"({type(e).__name__}); nothing in it was run. Resume from a whole checkpoint, or "
            "start the run again"
        ) from None


def _flatten(value, tensors: dict):
    """JSON layout of `value`, moving every tensor into `tensors` under a fresh key."""
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"tensor": key}
    if isinstance(value, dict):  # as pairs, so that integer keys (optimiser state) stay integers
        return {"dict": [[k, _flatten(v, tensors)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return {"list": [_flatten(v, tensors) for v in value]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"value": value}
    raise TypeError(f"cannot checkpoint a {type(value).__name__}")


def _unflatten(layout: dict, tensors: dict, depth: int = 0):
    """The value a layout describes; a layout deeper than any state, or of another shape, is refused."""
    if depth > MAX_DEPTH or not isinstance(layout, dict) or len(layout) != 1:
        raise ValueError("a layout of another shape")
    if "tensor" in layout:
        return tensors[layout["tensor"]]
    if "dict" in layout:
        return {_key(k): _unflatten(v, tensors, depth + 1) for k, v in layout["dict"]}
    if "list" in layout:
        return [_unflatten(v, tensors, depth + 1) for v in layout["list"]]
    value = layout["value"]
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ValueError("a value of another type")
    return value


def _key(key):
    if not isinstance(key, (int, str)):
        raise ValueError("a key of another type")
    return key
