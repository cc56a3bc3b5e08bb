"""cnnkit's default against Ultralytics YOLO classify and fastai, at equal wall time, on the same splits.

For each image folder (FOLDER/<class>/<image>, imbalanced or not) one stratified, seeded 70/10/20 split into
train/val/test is written as hard links under OUT/<name>/split/{train,val,test}/<class>/ (files PIL cannot decode
left out, and listed; a folder with its own train/ and test/ keeps its test, and an eighth of train becomes val),
and every tool trains on train/, picks or watches on val/ and is scored on test/ by this script's own count:

- cnnkit: its default (the automatic recipe), `cnnkit.train(data=SPLIT, budget=SECONDS, report=False)`.
- Ultralytics: YOLO26n-cls from scratch (yolo26n-cls.yaml; yolo11n-cls.yaml where 26 is unknown), 64 px,
  `time=SECONDS/3600` (which re-plans the epochs after each one and stops training on time), on the CPU; that
  bounds its training loop only, so its setup, final validation and the test predictions come on top.
- fastai: xresnet18 from scratch, 64 px, `fit_one_cycle(E, 1e-3)` with E from one timed throwaway epoch, so
  that the whole fit, the throwaway epoch included, takes about SECONDS.

It prints a Markdown table (folder | tool | test accuracy | balanced accuracy | seconds) and writes the same rows,
with details, to OUT/peers.json. Balanced accuracy is the mean recall over the classes in test/. Seconds are the
wall time of each tool's whole run (data loading, training, testing), timed inside a fresh process per tool
(Python's start-up and imports excluded), so that no tool's global settings reach another: Ultralytics sets
torch's CPU threads to one less than the cores (one thread on 2 cores), its own choice, kept here and recorded
in each row's torch_threads. Each tool's process refuses every connection off this machine and the rows list
any it tried: nothing is downloaded (no weights, fonts or data sets).

The peers live in their own venv, outside the repository, with cnnkit installed there as an editable package:

    python3 -m venv /work/peers-venv
    /work/peers-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/peers-venv/bin/pip install ultralytics fastai timm
    /work/peers-venv/bin/pip install -e .
    /work/peers-venv/bin/python benchmarks/peers.py FOLDER [FOLDER ...] --seconds 120 --seed 0 --out /tmp/peers-runs
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

TOOLS = ("cnnkit", "ultralytics", "fastai")
SPLITS = (("test", 0.2), ("val", 0.1))  # the rest, 70%, is train
IMAGE_SUFFIXES = {".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp"}
IMAGE_SIZE = 64  # the peers' input size; cnnkit picks its own
YOLO_CONFIGS = ("yolo26n-cls.yaml", "yolo11n-cls.yaml")  # from scratch: a model yaml, so no weights are fetched
LOCAL_HOSTS = {None, "", "localhost", "127.0.0.1", "::1", "0.0.0.0"}
network_attempts: list[str] = []


# the split


def class_files(folder: Path) -> dict[str, list[Path]]:
    """The image files of each class folder, sorted by name."""
    classes = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = {d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES) for d in classes}
    return {name: found for name, found in files.items() if found}


def decodes(file: Path) -> bool:
    """Whether PIL decodes the whole file: the split leaves out broken ones, so that no tool stops on them."""
    from PIL import Image

    try:
        with Image.open(file) as image:
            image.load()
        return True
    except (OSError, SyntaxError, ValueError):  # PIL's errors for a truncated or unknown file
        return False


def split_class(files: list[Path], rng: random.Random) -> dict[str, list[Path]]:
    """One class's files shuffled and cut 70/10/20; a class of three or more has at least one in val and test."""
    files = files[:]
    rng.shuffle(files)
    parts = {}
    for part, share in SPLITS:
        count = max(1, round(share * len(files))) if len(files) >= 3 else 0
        parts[part], files = files[:count], files[count:]
    return {"train": files, **parts}


def link(source: Path, target: Path) -> None:
    # hard links, not symbolic ones: cnnkit follows no link that leads outside its data folder
    try:
        os.link(source, target)
    except OSError:  # another file system: copy
        shutil.copy2(source, target)


def make_split(folder: Path, split_dir: Path, seed: int) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Writes split_dir/{train,val,test}/<class>/<file>; returns the image count of each part and class, and
    the files left out as broken. A folder with its own train/ and test/ keeps its test images, and an eighth
    of its training images (at least one a class) becomes val."""
    shutil.rmtree(split_dir, ignore_errors=True)
    rng = random.Random(seed)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    broken: list[str] = []
    own_test = (folder / "train").is_dir() and (folder / "test").is_dir()
    tests = class_files(folder / "test") if own_test else {}
    for name, files in class_files(folder / "train" if own_test else folder).items():
        readable = {f: decodes(f) for f in files}  # each file decoded once
        broken += [str(f.relative_to(folder)) for f, ok in readable.items() if not ok]
        good = [f for f, ok in readable.items() if ok]
        if own_test:
            rng.shuffle(good)
            val = max(1, len(good) // 8)
            parts = {"train": good[val:], "val": good[:val], "test": [f for f in tests.get(name, []) if decodes(f)]}
        else:
            parts = split_class(good, rng)
        for part, chosen in parts.items():
            (split_dir / part / name).mkdir(parents=True, exist_ok=True)
            for source in chosen:
                link(source, split_dir / part / name / source.name)
            counts[part][name] = len(chosen)
    return counts, broken


def test_items(split_dir: Path) -> list[tuple[Path, str]]:
    """(file, class) of every test image."""
    return [(f, name) for name, files in class_files(split_dir / "test").items() for f in files]


def scores(truth: list[str], predicted: list[str]) -> tuple[float, float]:
    """Accuracy, and balanced accuracy: the mean over the true classes of the share of each that was found."""
    pairs = list(zip(truth, predicted, strict=True))
    found = {name: sum(t == p == name for t, p in pairs) / truth.count(name) for name in set(truth)}
    return sum(t == p for t, p in pairs) / len(pairs), sum(found.values()) / len(found)


# the tools, each run in its own process


def run_cnnkit(split_dir: Path, seconds: float, seed: int, out: Path) -> dict:
    import cnnkit

    shutil.rmtree(out, ignore_errors=True)  # cnnkit refuses a run folder that already holds files
    run = cnnkit.train(data=str(split_dir), budget=seconds, seed=seed, report=False, out=str(out))
    summary = json.loads((run.dir / "summary.json").read_text())
    return {
        "test_accuracy": summary["test_accuracy"],
        "balanced_accuracy": summary["test_balanced_accuracy"],
        "detail": f"{summary['model']}, {summary['steps']} steps",
    }


def yolo_model(notes: list[str]):
    from ultralytics import YOLO

    for config in YOLO_CONFIGS:
        try:
            return YOLO(config), config
        except FileNotFoundError:
            notes.append(f"{config} is unknown to this Ultralytics")
    raise SystemExit(f"none of {', '.join(YOLO_CONFIGS)} is known to this Ultralytics")


def run_ultralytics(split_dir: Path, seconds: float, seed: int, out: Path) -> dict:
    notes: list[str] = []
    model, config = yolo_model(notes)
    model.train(
        data=str(split_dir),
        epochs=1000,  # a ceiling only: time= re-plans the epochs after each one and stops on time
        time=seconds / 3600,
        imgsz=IMAGE_SIZE,
        pretrained=False,  # from scratch, as the others
        plots=False,  # plots would fetch a font
        amp=False,  # on a GPU its AMP check would fetch yolo26n.pt
        device="cpu",
        workers=2,
        seed=seed,
        project=str(out),
        name="train",
        exist_ok=True,
    )
    items = test_items(split_dir)
    predicted = []
    for start in range(0, len(items), 64):
        paths = [str(f) for f, _ in items[start : start + 64]]
        results = model.predict(paths, imgsz=IMAGE_SIZE, device="cpu", verbose=False)
        predicted += [r.names[r.probs.top1] for r in results]
    accuracy, balanced = scores([name for _, name in items], predicted)
    epochs = model.trainer.epoch + 1 if model.trainer else None
    return {
        "test_accuracy": accuracy,
        "balanced_accuracy": balanced,
        "detail": "; ".join([f"{config}, {epochs} epochs", *notes]),
    }


def fastai_learner(dls, seed: int, out: Path):
    from fastai.vision.all import Learner, accuracy, set_seed, xresnet18

    set_seed(seed)
    return Learner(dls, xresnet18(n_out=len(dls.vocab), c_in=3), metrics=accuracy, path=out)


def run_fastai(split_dir: Path, seconds: float, seed: int, out: Path) -> dict:
    from fastai.vision.all import ImageDataLoaders, Resize

    started = time.perf_counter()
    dls = ImageDataLoaders.from_folder(
        split_dir, train="train", valid="val", item_tfms=Resize(IMAGE_SIZE), bs=64, num_workers=0, seed=seed
    )
    probe = time.perf_counter()
    probe_learner = fastai_learner(dls, seed, out)
    with probe_learner.no_bar():
        probe_learner.fit_one_cycle(1, 1e-3)  # thrown away: it times one epoch
    epoch_seconds = time.perf_counter() - probe
    epochs = max(1, math.floor((seconds - (time.perf_counter() - started)) / epoch_seconds))
    learn = fastai_learner(dls, seed, out)
    with learn.no_bar():  # the epochs' lines only: the bars fill a log
        learn.fit_one_cycle(epochs, 1e-3)
    items = test_items(split_dir)
    with learn.no_bar():
        preds, _ = learn.get_preds(dl=learn.dls.test_dl([f for f, _ in items], with_labels=True))
    predicted = [learn.dls.vocab[i] for i in preds.argmax(dim=1).tolist()]
    accuracy, balanced = scores([name for _, name in items], predicted)
    return {
        "test_accuracy": accuracy,
        "balanced_accuracy": balanced,
        "detail": f"xresnet18, {epochs} epochs after a {epoch_seconds:.1f} s timing epoch",
    }


RUNNERS = {"cnnkit": run_cnnkit, "ultralytics": run_ultralytics, "fastai": run_fastai}
MODULES = {"cnnkit": "cnnkit", "ultralytics": "ultralytics.models", "fastai": "fastai.vision.all"}  # imported untimed


def refuse_network() -> None:
    """Every connection and name look-up off this machine fails at once, and is noted in `network_attempts`."""
    connect, getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def off_machine(host) -> bool:
        return host not in LOCAL_HOSTS and not str(host).startswith("127.")

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and off_machine(address[0]):
            network_attempts.append(f"connect {address[0]}:{address[1]}")
            raise ConnectionRefusedError(f"peers.py refuses network access ({address[0]})")
        return connect(sock, address)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if off_machine(host):
            network_attempts.append(f"look up {host}")
            raise socket.gaierror(socket.EAI_NONAME, f"peers.py refuses network access ({host})")
        return getaddrinfo(host, *args, **kwargs)

    socket.socket.connect = guarded_connect  # type: ignore[method-assign]
    socket.getaddrinfo = guarded_getaddrinfo  # type: ignore[assignment]


def tool_process(tool: str, split_dir: Path, seconds: float, seed: int, out: Path, result: Path) -> None:
    """The child's side: run one tool, time it, and write its row."""
    import torch

    os.environ["YOLO_OFFLINE"] = "1"  # read by Ultralytics at import: no online checks, no analytics
    refuse_network()
    importlib.import_module(MODULES[tool])
    started = time.perf_counter()
    row = RUNNERS[tool](split_dir, seconds, seed, out)
    row["seconds"] = time.perf_counter() - started
    row["torch_threads"] = torch.get_num_threads()  # at the end: Ultralytics sets its own count
    row["network_attempts"] = network_attempts
    result.write_text(json.dumps(row, indent=2))


def run_tool(tool: str, split_dir: Path, seconds: float, seed: int, out: Path) -> dict:
    """One tool in a fresh process; a failure is a row too."""
    result = out / f"{tool}-result.json"
    result.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--tool", tool, "--split", str(split_dir), "--result", str(result)]
    command += ["--seconds", str(seconds), "--seed", str(seed), "--out", str(out / tool)]
    code = subprocess.run(command).returncode
    if code != 0 or not result.exists():
        return {"test_accuracy": None, "balanced_accuracy": None, "seconds": None, "detail": f"failed (exit {code})"}
    return json.loads(result.read_text())


# the table


def cell(value: float | None, digits: int) -> str:
    return "failed" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict]) -> str:
    lines = ["| folder | tool | test accuracy | balanced accuracy | seconds |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        scores_ = cell(r["test_accuracy"], 3), cell(r["balanced_accuracy"], 3), cell(r["seconds"], 0)
        lines.append(f"| {r['folder']} | {r['tool']} | {' | '.join(scores_)} |")
    return "\n".join(lines)


def names(folders: list[Path]) -> list[str]:
    """Each folder's own name, numbered where two share one."""
    seen: dict[str, int] = {}
    out = []
    for folder in folders:
        name = folder.resolve().name
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return out


def compare(folders: list[Path], tools: list[str], seconds: float, seed: int, out: Path) -> None:
    rows = []
    for folder, name in zip(folders, names(folders), strict=True):
        split_dir = out / name / "split"
        counts, broken = make_split(folder, split_dir, seed)
        left_out = f"; left out as broken: {', '.join(broken)}" if broken else ""
        print(f"{name}: " + ", ".join(f"{part} {sum(c.values())}" for part, c in counts.items()) + left_out, flush=True)
        for tool in tools:
            row = {"folder": name, "tool": tool, **run_tool(tool, split_dir, seconds, seed, out / name)}
            rows.append({**row, "split": counts, "broken": broken, "budget_seconds": seconds, "seed": seed})
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    (out / "peers.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))
    for r in rows:
        print(f"{r['folder']} {r['tool']}: {r['detail']}")
        if r.get("network_attempts"):
            print(f"  refused network access: {', '.join(r['network_attempts'])}")
    print(f"rows in {out / 'peers.json'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", type=Path, nargs="*", help="image folders, FOLDER/<class>/<image>")
    parser.add_argument("--seconds", type=float, default=120, help="wall-time budget of each tool")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("/tmp/peers-runs"))
    parser.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS))
    parser.add_argument("--tool", choices=TOOLS, help=argparse.SUPPRESS)  # the child's own arguments
    parser.add_argument("--split", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tool:
        tool_process(args.tool, args.split, args.seconds, args.seed, args.out, args.result)
    elif not args.folders:
        parser.error("give at least one image folder")
    else:
        compare(args.folders, args.tools, args.seconds, args.seed, args.out.resolve())


if __name__ == "__main__":
    main()
