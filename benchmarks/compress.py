"""Size, CPU latency and test accuracy of a run's float32, int8 and pruned versions (`cnnkit compress`).

    python benchmarks/compress.py RUN [RUN ...] [--prune 0.5] [--out DIR] [--rounds 3]

For each run: the float32 model as cnnkit runs it (torch) and as exported to ONNX (onnxruntime), then the
int8 and pruned versions `cnnkit.quantize` and `cnnkit.prune` make (in DIR/NAME-int8 and DIR/NAME-prunedNN,
reused when already there). Every version is measured by `footprint` on the run's whole test split; then the
latencies are measured again, the versions taking turns, for --rounds rounds in all, and the median round is
kept (a version timed alone can catch a slow spell of a shared machine). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from torch import nn

import cnnkit
from cnnkit.models.inference import OnnxClassifier
from cnnkit.ship.export import export_run
from cnnkit.ship.footprint import LATENCY_BATCHES, footprint, ms_per_image


def versions(run_dir: Path, fraction: float, out: Path) -> dict[str, tuple[nn.Module, Path]]:
    """Name -> (classifier, model file) for the run's four versions, made once."""
    run = cnnkit.load(run_dir, device="cpu")
    made = {"int8": out / f"{run_dir.name}-int8", "pruned": out / f"{run_dir.name}-pruned{round(100 * fraction)}"}
    if not (made["int8"] / "summary.json").is_file():
        cnnkit.quantize(run, made["int8"])
    if not (made["pruned"] / "summary.json").is_file():
        cnnkit.prune(run, fraction, made["pruned"])
    onnx = out / f"{run_dir.name}-float32.onnx"
    if not onnx.is_file():
        export_run(run, "onnx", onnx)
    int8, pruned = (cnnkit.load(made[name], device="cpu") for name in ("int8", "pruned"))
    return {
        "float32 (torch)": (run.inference_model(), run_dir / "weights.safetensors"),
        "float32 (onnxruntime)": (OnnxClassifier(onnx), onnx),
        "int8 (onnxruntime)": (int8.inference_model(), made["int8"] / "model.onnx"),
        f"pruned {fraction:g} (torch)": (pruned.inference_model(), made["pruned"] / "weights.safetensors"),
    }


def measured(run_dir: Path, fraction: float, out: Path, rounds: int) -> dict[str, dict]:
    test = cnnkit.load(run_dir, device="cpu").split()
    made = versions(run_dir, fraction, out)
    results = {name: footprint(classifier, file, test) for name, (classifier, file) in made.items()}
    for n in LATENCY_BATCHES:
        key, batch = f"ms_per_image_batch_{n}", test.images[:n]
        times = {name: [result[key]] for name, result in results.items()}
        for _ in range(rounds - 1):
            for name, (classifier, _) in made.items():
                times[name].append(ms_per_image(classifier, batch))
        for name, result in results.items():
            result[key] = statistics.median(times[name])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--prune", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path("runs"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    latency = " | ".join(f"ms/image at batch {n}" for n in LATENCY_BATCHES)
    lines = [f"| run | version | file | MiB | zipped MiB | {latency} | test accuracy |", "|" + " --- |" * 8]
    for run_dir in args.runs:
        for name, f in measured(run_dir, args.prune, args.out, args.rounds).items():
            times = " | ".join(f"{f[f'ms_per_image_batch_{n}']:.3f}" for n in LATENCY_BATCHES)
            sizes = f"{f['bytes'] / 2**20:.3f} | {f['zipped_bytes'] / 2**20:.3f}"
            lines.append(f"| {run_dir.name} | {name} | {f['file']} | {sizes} | {times} | {f['test_accuracy']:.4f} |")
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
