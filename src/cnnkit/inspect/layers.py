"""What a model is made of and what it costs: a layer table (output shape, parameters, multiply-accumulates)
and the memory that training and inference take at a batch size and precision.

Every figure comes from PyTorch itself, never from a formula per layer type: multiply-accumulates from its
FLOP counter (`torch.utils.flop_counter`; a convolution or matrix product of F FLOPs is F/2 of them), the
activations from the tensors autograd saves for the backward pass (saved-tensor hooks), the optimiser
state from one real step of the optimiser the run would build.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.core.machine import Machine
from cnnkit.models import ModelSpec, num_parameters
from cnnkit.settings.config import TrainConfig
from cnnkit.training.optimizers import build_optimizer

PROBE_BATCHES = (2, 4)  # saved activations grow linearly with the batch: two small ones give the slope


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    kind: str
    output: tuple[int, ...]  # one image's output shape
    parameters: int
    macs: int  # one image's multiply-accumulates


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes at one batch size and precision."""

    weights: int  # parameters and buffers (batch-norm statistics), as stored: float32 even under bf16 autocast
    gradients: int
    optimizer: int
    activations: int  # what autograd keeps from the forward pass for the backward pass
    inference: int  # weights, and the largest input and output of one layer at once (no gradients)

    @property
    def training(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations


@dataclasses.dataclass(frozen=True)
class ModelSummary:
    layers: list[Layer]
    parameters: int
    trainable: int
    macs: int  # one image's
    memory: Memory
    input_shape: tuple[int, ...]
    batch_size: int
    precision: str
    optimizer: str

    def as_dict(self) -> dict:
        return {
            **dataclasses.asdict(self),
            "memory": {**dataclasses.asdict(self.memory), "training": self.memory.training},
        }


def summarize(
    model: nn.Module, spec: ModelSpec, input_shape: tuple[int, ...], cfg: TrainConfig, machine: Machine
) -> ModelSummary:
    """The summary of `model` on one image of `input_shape` (C, H, W), at cfg's batch size and optimiser, on a
    CPU `machine` (its precision: bf16 autocast or not). The model is left untouched: all probing runs on a copy."""
    model = copy.deepcopy(model).cpu()
    layers, largest_pair = _layers(model, input_shape, machine)
    weights = sum(t.nbytes for t in (*model.parameters(), *model.buffers()))
    trainable = [p for p in model.parameters() if p.requires_grad]
    low, high = (_saved_bytes(model, input_shape, batch, machine) for batch in PROBE_BATCHES)
    per_image = (high - low) / (PROBE_BATCHES[1] - PROBE_BATCHES[0])
    activations = round(low + per_image * (cfg.batch_size - PROBE_BATCHES[0]))
    memory = Memory(
        weights=weights,
        gradients=sum(p.nbytes for p in trainable),
        optimizer=_optimizer_bytes(model, spec, cfg, input_shape, machine),
        activations=activations,
        inference=weights + largest_pair * cfg.batch_size,
    )
    return ModelSummary(
        layers=layers,
        parameters=num_parameters(model),
        trainable=sum(p.numel() for p in trainable),
        macs=sum(layer.macs for layer in layers),
        memory=memory,
        input_shape=tuple(input_shape),
        batch_size=cfg.batch_size,
        precision="bf16" if machine.bf16 else "fp32",
        optimizer=cfg.optimizer,
    )


def _layers(model: nn.Module, input_shape: tuple[int, ...], machine: Machine) -> tuple[list[Layer], int]:
    """The table's rows (every module without children, and any other that holds parameters of its own) from
    one image, and the most bytes one of them reads and writes at once."""
    rows = [(name, m) for name, m in model.named_modules() if not any(m.children()) or _own_parameters(m)]
    seen: dict[str, tuple[tuple[int, ...], int]] = {}

    def record(name: str, inputs: tuple, output: object) -> None:
        if name not in seen and isinstance(output, torch.Tensor):
            held = sum(t.nbytes for t in inputs if isinstance(t, torch.Tensor)) + output.nbytes
            seen[name] = (tuple(output.shape[1:]), held)

    hooks = [m.register_forward_hook(lambda _, i, o, name=name: record(name, i, o)) for name, m in rows]
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad(), machine.autocast():
            model(torch.zeros(1, *input_shape))
    finally:
        for hook in hooks:
            hook.remove()
    flops = counter.get_flop_counts()
    root = type(model).__name__  # the counter names modules from the root's class name down
    layers = [
        Layer(
            name=name or root,
            kind=type(m).__name__,
            output=seen.get(name, ((), 0))[0],
            parameters=_own_parameters(m),
            macs=sum(flops.get(f"{root}.{name}" if name else root, {}).values()) // 2 if not any(m.children()) else 0,
        )
        for name, m in rows
    ]
    return layers, max((held for _, held in seen.values()), default=0)


def _own_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters(recurse=False))


def _saved_bytes(model: nn.Module, input_shape: tuple[int, ...], batch: int, machine: Machine) -> int:
    """Bytes of the distinct storages that autograd keeps from one training forward pass of `batch` images
    (the parameters themselves excluded: they are counted as weights)."""
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in parameters:
            saved[storage.data_ptr()] = storage.nbytes()  # held by the graph: no other tensor reuses the address
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), machine.autocast():
        model(torch.randn(batch, *input_shape))
    return sum(saved.values())


def measured_activations(model: nn.Module, input_shape: tuple[int, ...], batch: int, machine: Machine) -> int:
    """Bytes that one training forward pass of `batch` images leaves allocated, from PyTorch's own allocation
    records (the profiler's): what the activation estimate is checked against. The output is left out."""
    model = copy.deepcopy(model).cpu().train()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        with machine.autocast():
            output = model(torch.randn(batch, *input_shape))
    outermost = (event for event in profile.events() if event.cpu_parent is None)  # each counts its callees
    return sum(event.cpu_memory_usage for event in outermost) - output.nbytes


def _optimizer_bytes(
    model: nn.Module, spec: ModelSpec, cfg: TrainConfig, input_shape: tuple[int, ...], machine: Machine
) -> int:
    """Bytes of the optimiser's state (momentum, Adam's moments) after one real step on the model (a copy)."""
    optimizer = build_optimizer(model, cfg, spec)
    model.train()
    with machine.autocast():
        loss = model(torch.randn(PROBE_BATCHES[0], *input_shape)).float().logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    return sum(t.nbytes for state in optimizer.state.values() for t in state.values() if isinstance(t, torch.Tensor))
