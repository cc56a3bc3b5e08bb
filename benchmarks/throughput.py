"""Training images per second at each global batch size, for one GPU (or, under torchrun, several).

    python benchmarks/throughput.py --data DIR/cifar10-jpeg                       # 1 GPU, batch 256 .. 4096
    torchrun --standalone --nproc-per-node 8 benchmarks/throughput.py --data DIR/cifar10-jpeg   # 8 GPUs
    python benchmarks/throughput.py --data digits --batch-sizes 64 --steps 3 6 --preset ""      # a CPU check

Each batch size trains twice, for the two step counts of --steps, with the preset's recipe (cifar10-fast:
fastcnn, Muon, bf16; add --compile for compiled steps), no validation and no test; the rate is the difference in images
over the difference in training seconds (cnnkit's own count: compilation and the first steps' set-up cancel
out). The global batch is --batch-size whatever the number of processes (README: Several processes).
"""

from __future__ import annotations

import argparse
import tempfile

import cnnkit
from cnnkit.core.machine import is_main_process


def seconds(settings: dict, steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        run = cnnkit.train(out=f"{out}/run", steps=steps, val_fraction=0.0, test=False, report=False, **settings)
        return run.summary.train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--preset", default="cifar10-fast", help='a preset, or "" for the automatic recipe')
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--steps", type=int, nargs=2, default=[20, 60], metavar=("FEW", "MORE"))
    parser.add_argument("--compile", action="store_true", help="torch.compile (about a minute more per run)")
    args = parser.parse_args()
    settings = {"data": args.data, "compile": args.compile, **({"preset": args.preset} if args.preset else {})}
    for batch in args.batch_sizes:
        few, more = (seconds({**settings, "batch_size": batch}, steps) for steps in args.steps)
        rate = (args.steps[1] - args.steps[0]) * batch / (more - few)
        if is_main_process():
            print(f"batch {batch}: {rate:,.0f} images/s ({few:.2f}s and {more:.2f}s of training)", flush=True)


if __name__ == "__main__":
    main()
