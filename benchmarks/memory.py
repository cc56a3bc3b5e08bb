"""Is `cnnkit summary`'s activation memory right? Its estimate against what PyTorch allocates.

The estimate counts the tensors autograd saves for the backward pass (saved-tensor hooks on two small
batches, scaled to the batch); the measurement is the bytes one training forward pass leaves allocated,
from the profiler's allocation records. Prints a Markdown table.

    python benchmarks/memory.py
    python benchmarks/memory.py --models simplecnn resnet18 --batches 32 128 --size 64
"""

from __future__ import annotations

import argparse

from cnnkit.core.machine import pick_machine
from cnnkit.inspect.layers import measured_activations, summarize
from cnnkit.models import create_model, model_spec
from cnnkit.settings.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["simplecnn", "fastcnn-small", "resnet9-small", "resnet18"])
    parser.add_argument("--batches", nargs="+", type=int, default=[32, 128])
    parser.add_argument("--size", type=int, default=32, help="image side in pixels (3 channels)")
    args = parser.parse_args()
    shape = (3, args.size, args.size)
    print("| model | input | batch | precision | estimate MiB | measured MiB | estimate / measured |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        model = create_model(name, 3, 10, args.size)
        for batch in args.batches:
            for precision in ("fp32", "bf16"):
                machine = pick_machine("cpu", precision)
                summary = summarize(model, model_spec(name), shape, TrainConfig(batch_size=batch), machine)
                estimate, measured = summary.memory.activations, measured_activations(model, shape, batch, machine)
                print(
                    f"| {name} | 3x{args.size}x{args.size} | {batch} | {precision} "
                    f"| {estimate / 2**20:.2f} | {measured / 2**20:.2f} | {estimate / measured:.3f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
