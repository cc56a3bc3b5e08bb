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

from cnnkit.errors import CnnkitError
from cnnkit.files import atomic_write

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "cnnkit-checkpoint/1"


def save_checkpoint(path: Path, state: dict) -> None:
    """Write a nested dict of tensors, numbers, strings, lists and dicts (any key type) to one file."""
    tensors: dict[str, torch.Tensor] = {}
    layout = _flatten(state, tensors)
    meta = {"format": FORMAT, "layout": json.dumps(layout)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint back; anything else (a pickle, a truncated file, another format) is refused unread."""
    if not path.is_file():
        raise CnnkitError(f"no checkpoint at {path}; a run writes {CHECKPOINT} at the end of every epoch")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CnnkitError(f"{path} is not a cnnkit checkpoint (it holds no {FORMAT} marker)")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return _unflatten(json.loads(meta["layout"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
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


def _unflatten(layout: dict, tensors: dict):
    if "tensor" in layout:
        return tensors[layout["tensor"]]
    if "dict" in layout:
        return {k: _unflatten(v, tensors) for k, v in layout["dict"]}
    if "list" in layout:
        return [_unflatten(v, tensors) for v in layout["list"]]
    return layout["value"]
