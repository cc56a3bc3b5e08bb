"""Pretrained weights for a model's backbone: torchvision's download (--pretrained) or a local file
(--pretrained-weights), read as safetensors or with `weights_only=True`: never a full unpickle.

The head is made anew when the class count differs, and a colour backbone's first filters are summed over
the three colours for grey images (the response to a grey image stays what it was).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from cnnkit.core.errors import CnnkitError
from cnnkit.models.registry import model_names, model_spec
from cnnkit.models.spec import ModelSpec
from cnnkit.models.timm_models import HUB, hub_weights
from cnnkit.models.weights import fit_state

NESTED_KEYS = ("state_dict", "model")  # where Lightning's and many training scripts' checkpoints keep the weights


def with_weights() -> list[str]:
    """The models that --pretrained can download weights for."""
    return [name for name in model_names() if model_spec(name).weights]


def downloads() -> Path:
    """The folder of downloaded weights files, $TORCH_HOME/hub/checkpoints as torch.hub keeps them."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_file(spec: ModelSpec) -> Path:
    """Where torchvision's download of the model's weights is kept (under $TORCH_HOME, as torch.hub does)."""
    if not spec.weights:
        raise CnnkitError(
            f"model {spec.name!r} has no pretrained weights; models that have: "
            f"{', '.join(with_weights())}. Or pass --pretrained-weights FILE"
        )
    return downloads() / weights_url(spec).rsplit("/", 1)[1]


def weights_url(spec: ModelSpec) -> str:
    """Where torchvision downloads the model's weights from."""
    import torchvision  # here, not above: importing it takes seconds, which every command would wait for

    return torchvision.models.get_weight(spec.weights).url


def at_hand(name: str) -> bool:
    """Whether the model's pretrained weights are on this machine already (nothing to download). Where nothing
    was ever downloaded, that is known without asking torchvision for the file's name (its import takes seconds)."""
    folder = downloads()
    if not model_spec(name).weights or not folder.is_dir() or not any(folder.iterdir()):
        return False
    return cached_file(model_spec(name)).is_file()


def download(spec: ModelSpec) -> Path:
    """The model's pretrained weights file, downloaded once (with its hash checked) and then read from disk."""
    if spec.weights and spec.weights.startswith(HUB):  # a timm model's: the hub downloads and keeps them
        return hub_weights(spec)
    path = cached_file(spec)
    if path.is_file():
        return path
    url = weights_url(spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    hash_prefix = re.search(r"-([a-f0-9]+)\.", path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix.group(1) if hash_prefix else None)
    except (OSError, RuntimeError) as e:  # offline, refused, or a download whose hash is wrong
        raise CnnkitError(
            f"could not download the pretrained weights of {spec.name} ({e}). Without a network, fetch {url} "
            f"on another machine and pass --pretrained-weights FILE, or put the file at {path}"
        ) from None
    return path


def read_state(path: Path) -> dict[str, Tensor]:
    """A weights file's tensors by name: safetensors, or a PyTorch file of tensors only."""
    if not path.is_file():
        raise CnnkitError(f"--pretrained-weights {path}: no such file")
    with path.open("rb") as f:
        is_safetensors = f.read(9)[8:] == b"{"  # an 8-byte header length, then the JSON header
    try:
        state = load_file(str(path)) if is_safetensors else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the safe unpickler fails in many ways on files that hold more than tensors
        raise CnnkitError(
            f"{path} cannot be read as plain weights ({type(e).__name__}: {str(e).splitlines()[0][:200]}). cnnkit "
            "reads safetensors files, or PyTorch files that hold tensors alone, never a full unpickle (which can "
            "run any code): save the weights with torch.save(model.state_dict(), FILE), or as safetensors"
        ) from None
    while isinstance(state, dict) and any(isinstance(state.get(k), dict) for k in NESTED_KEYS):
        state = next(state[k] for k in NESTED_KEYS if isinstance(state.get(k), dict))
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()):
        raise CnnkitError(f"{path} holds no mapping of names to tensors (a state_dict), so it holds no weights")
    return state


def load_pretrained(net: nn.Module, spec: ModelSpec, path: Path) -> list[str]:
    """Load a backbone's weights from `path` into `net`; returns the head tensors made anew."""
    state = read_state(path)
    first = f"{spec.first_conv}.weight"
    if spec.first_conv and first in state and state[first].ndim == 4 and state[first].shape[1] == 3:
        if spec.first_conv_module(net, "--pretrained").in_channels == 1:  # colour filters for grey images
            state[first] = state[first].sum(1, keepdim=True)
    return fit_state(net, state, path, spec.head)
