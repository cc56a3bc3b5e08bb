"""Which device a run uses, the precision and memory layout that pay off there, and which process of a
multi-process run this is (rank, local rank and world size, as torchrun sets them)."""

from __future__ import annotations

import atexit
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cnnkit.core.errors import CnnkitError

T = TypeVar("T")

# how long a process waits for the others at a collective before it gives up: long enough for the main process
# to decode a large folder into the cache while the others wait, short enough that a hung peer is noticed
PEER_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class Machine:
    device: torch.device
    bf16: bool  # autocast matmuls and convs to bfloat16: tensor cores, half the memory traffic
    channels_last: bool  # NHWC lets cuDNN and oneDNN pick their fastest convolution kernels
    rank: int = 0  # this process among all of the run's processes; 0 is the main one
    local_rank: int = 0  # ... among those on this machine: which GPU it drives
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """Only the main process prints, writes files and names the run folder."""
        return self.rank == 0

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def sync(self) -> None:
        """Wait for queued GPU work: a clock read without it times the queuing, not the computing."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def any_rank(self, flag: bool) -> bool:
        """Whether `flag` holds on any process: a stop or a non-finite loss stops every process at once."""
        if not distributed():
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def share(self, value: T) -> T:
        """The main process's `value`, on every process (the run folder's name, say)."""
        if not distributed():
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. until the main one has written the best weights)."""
        if distributed():
            dist.barrier()

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """The main process runs the block first (decoding a folder into the cache, a download), the others
        after it, reading what it left."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()

    def rows(self, n: int) -> slice:
        return share_rows(n, self.rank, self.world_size)

    def sum(self, values: list[float]) -> list[float]:
        """Each value summed over the processes (counts and sums, never means: shares differ in size)."""
        if not distributed():
            return values
        total = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(total)
        return total.tolist()

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Every process's `rows`, concatenated in rank order: whole splits from contiguous shares."""
        if not distributed():
            return rows
        counts = [torch.zeros(1, dtype=torch.long, device=self.device) for _ in range(self.world_size)]
        dist.all_gather(counts, torch.tensor([len(rows)], device=self.device))
        longest = int(max(counts).item())
        padded = rows.new_zeros((longest, *rows.shape[1:]), device=self.device)  # all_gather takes equal sizes
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        whole = torch.cat([part[: int(count.item())] for part, count in zip(parts, counts, strict=True)])
        return whole.to(rows.device)  # NCCL gathers on the GPU; an RNG state comes back to the CPU

    def align_buffers(self, model: nn.Module) -> None:
        """The main process's buffers (batch norm's running statistics, which each process updates from its
        own share) on every process, so that the shares of an evaluation measure the one model it keeps."""
        if distributed():
            for buffer in model.buffers():
                dist.broadcast(buffer, src=0)

    def data_parallel(self, model: nn.Module) -> nn.Module:
        """The model wrapped in DistributedDataParallel when there are several processes (gradients averaged
        over them at each step, parameters broadcast from the main process at the start); else as it is."""
        if not distributed():
            return model
        ids = [self.device] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def share_rows(n: int, rank: int, processes: int) -> slice:
    """Process `rank`'s contiguous share of n rows (shares differ by at most one row and none is padded, so no
    image counts twice in a metric)."""
    return slice(rank * n // processes, (rank + 1) * n // processes)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def process_place() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torch.distributed or torchrun's variables; one process if neither."""
    if distributed():
        return dist.get_rank(), int(os.environ.get("LOCAL_RANK", dist.get_rank())), dist.get_world_size()
    try:
        return tuple(
            int(os.environ.get(name, default))
            for name, default in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1))  # type: ignore[return-value]
        )
    except ValueError:
        raise CnnkitError("RANK, LOCAL_RANK and WORLD_SIZE must be whole numbers (torchrun sets them)") from None


def is_main_process() -> bool:
    return process_place()[0] == 0


def pick_machine(device: str = "auto", precision: str = "auto") -> Machine:
    rank, local_rank, world_size = process_place()
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if world_size > 1 and not distributed():
        join_process_group(device, rank, local_rank, world_size)
    if device == "cuda" and not torch.cuda.is_available():
        raise CnnkitError("--device cuda was asked for, but PyTorch sees no CUDA GPU; use --device auto or cpu")
    if device == "mps" and not torch.backends.mps.is_available():
        raise CnnkitError("--device mps was asked for, but this machine has no Apple GPU; use --device auto or cpu")
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    if device == "cuda":
        torch.backends.cudnn.benchmark = True  # batch shapes are fixed: time cuDNN's algorithms once, keep the best
    place = torch.device(f"cuda:{local_rank}") if device == "cuda" and world_size > 1 else torch.device(device)
    # channels-last is faster for convolutions on both cuDNN and oneDNN (measured: 1.3-2x on a 2-core EPYC)
    return Machine(place, bf16, device in ("cuda", "cpu"), rank, local_rank, world_size)


def join_process_group(device: str, rank: int, local_rank: int, world_size: int) -> None:
    """Join the run's other processes, as torchrun describes them in the environment: NCCL between GPUs, gloo
    between CPUs. Left when the process exits."""
    if "MASTER_ADDR" not in os.environ or "MASTER_PORT" not in os.environ:
        raise CnnkitError(
            f"this is process {rank} of {world_size} (RANK and WORLD_SIZE are set), but MASTER_ADDR and MASTER_PORT "
            "are not: start every process with torchrun (see the README's 'Several processes')"
        )
    if device == "mps":
        raise CnnkitError("several processes train on CUDA GPUs or CPUs, not on an Apple GPU; use --device cpu")
    if device == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise CnnkitError(
                f"process {local_rank} on this machine has no GPU of its own ({torch.cuda.device_count()} "
                "here); give torchrun --nproc-per-node at most that many"
            )
        torch.cuda.set_device(local_rank)  # before NCCL starts: each process drives its own GPU
    dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=PEER_TIMEOUT)
    atexit.register(_leave_process_group)


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def native_bf16(device: str) -> bool:
    """Whether the hardware computes bfloat16 itself (recent NVIDIA GPUs; CPUs with AVX512-BF16 or AMX)."""
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return device == "cpu" and torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def device_name(device: torch.device) -> str:
    """The hardware's own name, for provenance: the GPU's model, or the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:  # Linux names the CPU model here; platform.processor() often does not
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
