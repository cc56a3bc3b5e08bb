"""Weights files: safetensors with plain parameter names, never a pickle, whatever wrapper trained them."""

from __future__ import annotations

from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import atomic_write
from cnnkit.models.spec import unwrap

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # added by torch.compile and DDP; never part of saved names


def save_weights(model: nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt"}))


def load_weights(model: nn.Module, path: Path, remake_head: str | None = None) -> list[str]:
    """Load safetensors weights (never a pickle) into a plain model, whatever wrapper they were saved from.

    With `remake_head` (the head module's name), a head sized for another class count keeps its fresh
    initialisation; the names of such tensors are returned. Any other difference is refused, naming it.
    """
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as e:
        raise CnnkitError(f"{path} is not a readable safetensors weights file ({e})") from None
    return fit_state(model, state, path, remake_head)


def fit_state(model: nn.Module, state: dict[str, Tensor], path: Path, remake_head: str | None = None) -> list[str]:
    """Load `state` (read from `path`) into the model, as `load_weights` says."""
    for prefix in WRAPPER_PREFIXES:
        state = {k.removeprefix(prefix): v for k, v in state.items()}
    expected = unwrap(model).state_dict()
    head = f"{remake_head}." if remake_head else None
    fresh = [k for k in expected if head and k.startswith(head) and k in state and state[k].shape != expected[k].shape]
    state.update({k: expected[k] for k in fresh})
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [
        f"{k} holds NaN or infinite values"
        for k, v in state.items()
        if v.is_floating_point() and not bool(v.isfinite().all())
    ]  # such weights predict nothing but NaN
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k}: saved as {state[k].dtype}, model has {v.dtype}"
        for k, v in expected.items()
        if k in state and state[k].dtype != v.dtype
    ]
    problems += [
        f"{k}: saved {tuple(state[k].shape)}, model has {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if problems:
        raise CnnkitError(
            f"the weights in {path} do not fit this model: "
            + "; ".join(problems[:5])
            + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        )
    unwrap(model).load_state_dict(state)
    return fresh
