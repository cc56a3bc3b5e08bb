"""Any of timm's models by name, `--model timm/NAME` (`pip install 'cnnkit[timm]'`): timm builds it for the
data's channels and classes, and its pretrained config gives the spec its head, first convolution, input size
and normalisation, as a registered model's spec does. --pretrained downloads its weights from timm's hub;
--pretrained-weights FILE reads them from disk."""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from cnnkit.core.errors import CnnkitError
from cnnkit.models.spec import ModelSpec

PREFIX = "timm/"
HUB = "hf-hub:"  # a spec's `weights` that timm's hub holds (not torchvision's)
INSTALL = "pip install 'cnnkit[timm]'"


def is_timm_name(name: str) -> bool:
    return name.startswith(PREFIX)


def timm_spec(name: str) -> ModelSpec:
    """The spec of `timm/NAME`, refused with what to do when timm is missing or has no such model."""
    timm = _timm(name)
    arch = name.removeprefix(PREFIX)
    if not timm.is_model(arch):
        near = difflib.get_close_matches(arch, timm.list_models(), n=5)
        raise CnnkitError(
            f"timm has no model {arch!r}"
            + (f"; similar names: {', '.join(near)}" if near else "")
            + '. All of them: python -c "import timm; print(timm.list_models())"'
        )
    cfg = timm.get_pretrained_cfg(arch)
    return ModelSpec(
        name,
        _builder(timm, arch),
        f"timm's {arch}",
        head=_one_name(cfg.classifier if cfg else None),
        first_conv=_one_name(cfg.first_conv if cfg else None),
        input_size=cfg.input_size[-1] if cfg else None,
        mean=tuple(cfg.mean) if cfg else None,
        std=tuple(cfg.std) if cfg else None,
        weights=f"{HUB}{cfg.hf_hub_id}" if cfg and cfg.hf_hub_id else None,
    )


def _builder(timm, arch: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
        net = timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        _check_size(net, arch, in_channels, image_size)
        return net

    return build


def _check_size(net: nn.Module, arch: str, in_channels: int, image_size: int) -> None:
    """One image through the net, now: a size it cannot take fails here with the fix, not in the first step."""
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, in_channels, image_size, image_size))
    except (RuntimeError, ValueError, AssertionError) as e:  # timm's nets refuse sizes in all three ways
        size = getattr(net, "pretrained_cfg", {}).get("input_size", (0, 224))[-1]
        raise CnnkitError(
            f"timm's {arch} cannot take {image_size}x{image_size} images ({str(e).splitlines()[0][:160]}); "
            f"pass --image-size {size}, its own size, or choose another model"
        ) from None
    net.train(training)


def _one_name(names: str | tuple | None) -> str | None:
    """A config may name two heads (a distilled net's): the first is the classifier."""
    return names[0] if isinstance(names, tuple) else names


def _timm(name: str):
    try:
        import timm  # here, not above: an optional extra, and its import takes a second
    except ImportError:
        raise CnnkitError(f"--model {name} needs timm, which is not installed: {INSTALL}") from None
    return timm


def hub_weights(spec: ModelSpec) -> Path:
    """Download a timm model's pretrained weights (once: the hub keeps them) and return the file's path."""
    assert spec.weights is not None and spec.weights.startswith(HUB)
    repo = spec.weights.removeprefix(HUB)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, "model.safetensors"))
    except Exception as e:  # offline, refused, or no such file: the hub's errors have no common base
        raise CnnkitError(
            f"could not download the pretrained weights of {spec.name} ({type(e).__name__}). Without a network, "
            f"fetch model.safetensors from timm's hub repository {repo} on another machine and pass "
            "--pretrained-weights FILE"
        ) from None
