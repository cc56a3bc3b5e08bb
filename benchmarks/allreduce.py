"""What DDP sends per optimiser step, measured, for every built-in model, and what that means for 8 GPUs.

    torchrun --standalone --nproc-per-node 2 benchmarks/allreduce.py [--classes 10 --image-size 32]

Each model is wrapped in DistributedDataParallel (gloo, on the CPU) with a communication hook that counts the
bytes of every gradient bucket it all-reduces, and takes two real training steps (the first one builds the
buckets); the second step's bytes are printed. The 8-GPU columns are an estimate on paper: a ring all-reduce
moves 2 (N - 1) / N times the gradient bytes through each GPU's link, at the stated bandwidths, and the
step's compute is its training FLOPs (PyTorch's FLOP counter: forward and backward) at the stated share of
an H100's dense bf16 peak.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.flop_counter import FlopCounterMode

from cnnkit.models import create_model, model_names, num_parameters

GPUS = 8
LINKS = {"NVLink (H100, ~400 GB/s per GPU)": 400e9, "100 Gb/s Ethernet": 12.5e9}  # bytes per second
H100_BF16 = 989e12  # dense bf16 FLOP/s at peak
UTILISATION = (0.1, 0.4)  # shares of that peak a small convnet may keep busy: assumptions, printed with the figures
CIFAR_RECIPE = ("fastcnn", 2000)  # the cifar10-fast preset: its model and global batch


def gradient_bytes(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[int, int]:
    """(bytes all-reduced in the second of two DDP steps, buckets)."""
    sent: list[int] = []

    def counting(state, bucket):
        sent.append(bucket.buffer().numel() * bucket.buffer().element_size())
        return allreduce_hook(state, bucket)

    ddp = nn.parallel.DistributedDataParallel(model)
    ddp.register_comm_hook(None, counting)
    for _ in range(2):
        sent.clear()
        nn.functional.cross_entropy(ddp(images), labels).backward()
    return sum(sent), len(sent)


def training_flops(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> int:
    """FLOPs of one forward and backward pass over `images`."""
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    dist.init_process_group("gloo")
    main_process = dist.get_rank() == 0
    torch.manual_seed(0)
    images = torch.randn(4, 3, args.image_size, args.image_size)
    labels = torch.randint(0, args.classes, (4,))
    if main_process:
        links = " | ".join(f"{GPUS}-GPU ring, {link}" for link in LINKS)
        print(f"| model | parameters | all-reduced per step (MB) | buckets | {links} |")
        print("| --- | --- | --- | --- | " + " | ".join("---" for _ in LINKS) + " |")
    for name in model_names():
        model = create_model(name, 3, args.classes, max(args.image_size, 32))
        sent, buckets = gradient_bytes(model, images, labels)
        ring = [2 * (GPUS - 1) / GPUS * sent / bandwidth * 1e6 for bandwidth in LINKS.values()]
        if main_process:
            times = " | ".join(f"{us:,.1f} µs" for us in ring)
            print(f"| {name} | {num_parameters(model):,} | {sent / 1e6:.2f} | {buckets} | {times} |", flush=True)
    if main_process:
        recipe_estimate(args.image_size)
    dist.destroy_process_group()


def recipe_estimate(image_size: int) -> None:
    """The CIFAR-10 recipe on 8 GPUs: each GPU's compute per step against the gradient's all-reduce."""
    name, batch = CIFAR_RECIPE
    model = create_model(name, 3, 10, image_size)
    per_image = training_flops(model, torch.randn(8, 3, image_size, image_size), torch.zeros(8, dtype=torch.long)) / 8
    share = batch // GPUS
    compute_ms = [per_image * share / (H100_BF16 * used) * 1e3 for used in UTILISATION]
    grad = 4 * num_parameters(model)  # fp32 gradients, as DDP all-reduces them
    print(
        f"\n{name}, global batch {batch} on {GPUS} GPUs ({share} images each): {per_image / 1e6:.1f} MFLOP per image "
        "trained, so per step "
        + " or ".join(f"{ms:.2f} ms of compute at {used:.0%}" for ms, used in zip(compute_ms, UTILISATION, strict=True))
        + " of an H100's dense bf16 peak"
    )
    for link, bandwidth in LINKS.items():
        ring_ms = 2 * (GPUS - 1) / GPUS * grad / bandwidth * 1e3
        shares = " to ".join(f"{ring_ms / ms:.0%}" for ms in reversed(compute_ms))
        print(f"  {link}: all-reduce {ring_ms:.3f} ms, {shares} of the compute")


if __name__ == "__main__":
    main()
