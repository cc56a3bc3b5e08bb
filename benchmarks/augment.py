"""What each augmentation adds to a training batch: seconds per batch of 256 colour images, on this machine.

    python benchmarks/augment.py                  # 3x32x32 and 3x64x64, on the CPU, wall time
    python benchmarks/augment.py --cpu-time --threads 1  # CPU seconds: steady while other work shares the cores
    python benchmarks/augment.py --device cuda

The baseline is today's batch (gather, random crop, alternating flip, normalise); each row adds one setting
to it, and the last row all four. On random uint8 images; the fastest of 40 batches after 5 untimed ones.
Wall time is what training waits for; on a machine shared with other work, CPU time is steadier.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator

import torch

from cnnkit.data.augment import Augment
from cnnkit.data.loader import DeviceBatches
from cnnkit.data.preprocess import Preprocess
from cnnkit.data.sets import ImageSet

BATCH = 256
ROUNDS = 40
TODAY = "crop + flip (today)"
SETTINGS = {
    TODAY: {},
    "+ rotate 15": {"rotate": 15.0},
    "+ scale 0.1": {"scale": 0.1},
    "+ rotate 15, scale 0.1": {"rotate": 15.0, "scale": 0.1},
    "+ jitter 0.2": {"jitter": 0.2},
    "+ erase 0.25": {"erase": 0.25},
    "+ all four": {"rotate": 15.0, "scale": 0.1, "jitter": 0.2, "erase": 0.25},
}


def endless(batches: DeviceBatches) -> Iterator[torch.Tensor]:
    epoch = 1
    while True:
        yield from (x for x, _ in batches.iterate(batches.new_order(), epoch=epoch))
        epoch += 1


def seconds_per_batch(size: int, device: torch.device, clock: Callable[[], float]) -> dict[str, float]:
    """The settings take turns, one batch each, so a burst of other work on the machine hits them all alike;
    the fastest of ROUNDS batches is the one least disturbed."""
    images = torch.randint(0, 256, (BATCH * 8, 3, size, size), dtype=torch.uint8)
    data = ImageSet(images, torch.zeros(len(images), dtype=torch.long))
    preprocess = Preprocess([0.5] * 3, [0.25] * 3).to(device)
    streams = {
        name: endless(
            DeviceBatches(data, BATCH, preprocess, sampler="uniform", augment=Augment(size // 10, True, **settings))
        )
        for name, settings in SETTINGS.items()
    }
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(ROUNDS + 5):
        for name, stream in streams.items():
            started = clock()
            next(stream).sum().item()  # waits for the device, as a training step would
            times[name].append(clock() - started)
    return {name: min(t[5:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--cpu-time", action="store_true", help="this process's CPU seconds, not wall seconds")
    args = parser.parse_args()
    device, clock = torch.device(args.device), time.process_time if args.cpu_time else time.perf_counter
    torch.set_num_threads(args.threads)
    what = "CPU" if args.cpu_time else "wall"
    print(f"{device}, {args.threads} threads, batch {BATCH}; {what} ms per batch (added to today's)")
    for size in (32, 64):
        seconds = seconds_per_batch(size, device, clock)
        base = seconds[TODAY]
        for name, ms in ((name, 1000 * t) for name, t in seconds.items()):
            added = f"(+{ms - 1000 * base:.2f})" if name != TODAY else ""
            print(f"3x{size}x{size}  {name:<24} {ms:7.2f} {added}")


if __name__ == "__main__":
    main()
