"""GPU benchmark (run it through the device tool): cnnkit's presets timed the way the records time.

    python benchmarks/gpu.py cifar --data DIR [--runs 5]   # DIR holds cifar10-jpeg/
    python benchmarks/gpu.py mnist --data DIR              # DIR holds MNIST/raw/

cifar: `--preset cifar10-fast` trained on all 50,000 training images (no validation split, as the records
do), N seeds; the timed part is training plus the final test evaluation, data already on the GPU and
compilation excluded, as airbench's and hiverge's timers do. mnist: test accuracy and time for
`--preset mnist-fast` at 1..3 epochs (time to 99.0% and 99.5%), and the tutorial loop against cnnkit
for the same network (images per second of training).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from tutorial_baselines import tutorial_mnist

import cnnkit


def run_cnnkit(**settings) -> tuple[dict, float]:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        run = cnnkit.train(out=f"{out}/run", **settings)
        return run.summary.to_json(), time.perf_counter() - started


def cifar(data: Path, runs: int, extra: dict) -> None:
    rows = []
    for seed in range(runs):
        s, wall = run_cnnkit(
            preset="cifar10-fast", data=str(data / "cifar10-jpeg"), val_fraction=0.0, seed=seed, **extra
        )
        timed = s["train_seconds"] + s["test_seconds"]
        rows.append((s["test_accuracy"], timed, wall))
        print(
            f"run {seed}: accuracy {s['test_accuracy']:.4f}, timed {timed:.3f}s "
            f"(compile {s['compile_seconds']:.1f}s), whole call {wall:.1f}s",
            flush=True,
        )
    accuracies = [r[0] for r in rows]
    print(
        f"cifar10-fast over {runs} runs: mean accuracy {statistics.mean(accuracies):.4f} "
        f"(sd {statistics.pstdev(accuracies):.4f}), median timed {statistics.median(r[1] for r in rows):.3f}s, "
        f"median whole call {statistics.median(r[2] for r in rows):.1f}s"
    )


def mnist(data: Path) -> None:
    for epochs in (1, 2, 3):
        s, wall = run_cnnkit(preset="mnist-fast", data_dir=str(data), epochs=epochs)
        print(
            f"mnist-fast {epochs} epoch(s): accuracy {s['test_accuracy']:.4f}, "
            f"train {s['train_seconds']:.2f}s, whole call {wall:.1f}s",
            flush=True,
        )
    accuracy, seconds = tutorial_mnist(data, epochs=1, device="cuda")
    print(
        f"tutorial loop, PyTorch MNIST example net, batch 64, 1 epoch: {60000 / seconds:,.0f} images/s "
        f"(wall {seconds:.1f}s incl. test, accuracy {accuracy:.4f})"
    )
    s, _ = run_cnnkit(
        data="mnist",
        data_dir=str(data),
        model="pytorch-mnist",
        batch_size=64,
        epochs=1,
        optimizer="sgd",
        lr=0.01,
        schedule="constant",
    )
    print(
        f"cnnkit, pytorch-mnist (the same net), batch 64, 1 epoch: "
        f"{s['num_train_images'] / s['train_seconds']:,.0f} images/s "
        f"(accuracy {s['test_accuracy']:.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=["cifar", "mnist"])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="cifar: train with torch.compile")
    args = parser.parse_args()
    print(f"device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'}, torch {torch.__version__}")
    if args.job == "cifar":
        cifar(args.data, args.runs, {"compile": True} if args.compile else {})
    else:
        mnist(args.data)


if __name__ == "__main__":
    main()
