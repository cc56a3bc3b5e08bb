"""The `cnnkit` command: train, eval, predict, models, presets, summary, report, compare, lr-find, sweep,
export, serve. User mistakes end in one line, never a traceback."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch.distributed as dist

from cnnkit.cli.flags import add_config_flags, given_settings
from cnnkit.cli.inspecting import add_inspection_commands
from cnnkit.cli.shipping import add_shipping_commands
from cnnkit.cli.tuning import add_tuning_commands
from cnnkit.core.errors import CnnkitError
from cnnkit.core.files import os_problem, read_json, read_yaml, to_json
from cnnkit.core.machine import process_place
from cnnkit.core.progress import columns, printable, printable_lines
from cnnkit.core.version import __version__
from cnnkit.models import describe_models
from cnnkit.models.timm_models import INSTALL
from cnnkit.runs.folder import MODEL_INFO, SUMMARY, finished_run
from cnnkit.runs.records import ModelInfo, model_info_problem
from cnnkit.runs.run import load
from cnnkit.session.train import resume, train
from cnnkit.settings.presets import PRESETS
from cnnkit.training.stopping import TrainingDiverged, TrainingInterrupted

EXAMPLES = """examples:
  cnnkit train                                   # 8x8 digits from scikit-learn, no download
  cnnkit train --data path/to/images             # a recipe chosen from your folder (one class per sub-folder)
  cnnkit train --data path/to/images --budget 60 # the best model it can train and test in 60 seconds
  cnnkit train --data mnist --model simplecnn --epochs 1
  cnnkit train --preset mnist-fast --data-dir ../shared/data   # a tuned recipe (`cnnkit presets`)
  cnnkit train --config runs/RUN/config.yaml     # repeat a run
  cnnkit eval runs/RUN
  cnnkit predict runs/RUN cat.jpg dog.png --top-k 2
  cnnkit summary simplecnn --input 1x28x28 --classes 10   # layers, parameters, memory
  cnnkit report runs/RUN                          # plots and report.html
  cnnkit compare runs/RUN1 runs/RUN2              # settings that differ, results, curves
  cnnkit lr-find --model simplecnn                # the learning-rate range test (train --lr auto uses it)
  cnnkit sweep --search lr=0.001,0.01 --search batch-size=32,64   # 4 runs, best by validation, tested once
  cnnkit export runs/RUN --format onnx            # uint8 images in, probabilities out; checked against the run
  cnnkit serve runs/RUN --port 8000               # POST an image to /predict, get its top classes as JSON
"""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.command(args)
    except TrainingInterrupted as e:
        _complain("cnnkit", e)
        return 130
    except CnnkitError as e:
        _complain("cnnkit: error", e)
        return 2
    except dist.DistError as e:  # another process of the run died, or stopped answering
        reason = printable(str(e).splitlines()[0] if str(e) else type(e).__name__)
        print(
            f"cnnkit: error: another process of this run stopped ({reason}); its last checkpoint is whole: "
            "start the same processes again with `cnnkit train --resume RUN`",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("cnnkit: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("cnnkit: error: out of memory; lower --batch-size or --image-size", file=sys.stderr)
        return 1
    except BrokenPipeError:  # whoever read the output stopped early (`cnnkit eval RUN | head`): not a fault
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so Python's exit flush stays quiet
        return 141
    except OSError as e:  # a file cnnkit did not expect to fail (a read-only folder, say): its cause, no traceback
        where = f" {e.filename}" if e.filename else ""
        print(printable(f"cnnkit: error: cannot use{where}: {os_problem(e)}"), file=sys.stderr)
        return 2


def _complain(prefix: str, error: CnnkitError) -> None:
    """The error in one line. A stop every process takes together is told by the main one alone; another
    error of a torchrun process is told with its rank, since the others often say the same."""
    rank = process_place()[0]
    if rank and isinstance(error, (TrainingInterrupted, TrainingDiverged)):
        return
    where = f" (process {rank})" if rank else ""
    print(
        printable_lines([f"{prefix}{where}: {error.message}", *(f"  {item}" for item in error.listing)]),
        file=sys.stderr,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkit",
        description="Train, evaluate and use convolutional image classifiers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cnnkit {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a model and write a run folder",
        description="Train a classifier. Every flag is also a key of config.yaml.",
    )
    train.add_argument(
        "--config",
        metavar="FILE",
        help="settings from a YAML file (a run's config.yaml repeats it); flags given as well override it",
    )
    train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue a stopped run from its newest whole checkpoint, with the run's own settings",
    )
    add_config_flags(train)
    train.set_defaults(command=cmd_train)

    evaluate = commands.add_parser("eval", help="recompute test metrics from a run's saved weights")
    evaluate.add_argument("run", help="run folder written by `cnnkit train`")
    evaluate.add_argument("--data", help="evaluate on this data set's test split instead of the run's own")
    evaluate.add_argument("--data-dir", help="where the named data set is found")
    evaluate.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    evaluate.set_defaults(command=cmd_eval)

    predict = commands.add_parser("predict", help="classify image files with a trained run")
    predict.add_argument("run", help="run folder written by `cnnkit train`")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, BMP, WebP, ...)")
    predict.add_argument("--top-k", type=int, default=3, help="how many classes to show per image (default: 3)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    predict.set_defaults(command=cmd_predict)

    models = commands.add_parser("models", help="list the built-in models with their parameter counts")
    models.set_defaults(command=cmd_models)

    presets = commands.add_parser("presets", help="list the tuned recipes for --preset, with their settings")
    presets.set_defaults(command=cmd_presets)

    add_inspection_commands(commands)
    add_tuning_commands(commands)
    add_shipping_commands(commands)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    given = given_settings(args, ("config", "resume"))
    if args.resume is not None:
        if not args.resume:
            raise CnnkitError("--resume needs the folder of the run to continue, e.g. --resume runs/RUN")
        if given or args.config:
            raise CnnkitError("--resume continues a run with its own settings; give no other flags with it")
        resume(args.resume)
        return 0
    settings = read_yaml(args.config) if args.config else {}
    run = train(**{**settings, **given})
    if args.config:
        _note_if_data_changed(Path(args.config).parent / MODEL_INFO, run.info)
    return 0


def _note_if_data_changed(source: Path, info: ModelInfo) -> None:
    """A repeat from a run's config.yaml on data that has changed since is a new run: say so."""
    recorded = read_json(source) if source.is_file() else None
    if recorded is not None and model_info_problem(recorded) is None and recorded.get("data", info.data) != info.data:
        print(
            "cnnkit: note: the data changed since the run this config came from was trained, so this run learned "
            "from other images and its figures are not a repeat of that run's",
            file=sys.stderr,
        )


def cmd_eval(args: argparse.Namespace) -> int:
    run = load(args.run, device=args.device)
    with finished_run(run.dir, "evaluate it"):  # the weights of a run still training change under the test
        metrics = run.evaluate(args.data, args.data_dir)
    if not (run.dir / SUMMARY).is_file():
        print(
            printable(
                f"note: {run.dir} stopped before it finished (it has no {SUMMARY}): these are the figures of its best "
                f"weights so far; resume it with: cnnkit train --resume {run.dir}"
            ),
            file=sys.stderr,
        )
    if args.json:
        print(to_json(metrics))
        return 0
    print(
        f"test accuracy {metrics['test_accuracy']:.4f}, balanced accuracy {metrics['test_balanced_accuracy']:.4f}, "
        f"macro-F1 {metrics['test_macro_f1']:.4f}, loss {metrics['test_loss']:.4f} "
        f"on {metrics['num_test_images']} images"
    )
    rows: list[tuple[str, ...]] = [("class", "images", "precision", "recall", "F1")]
    for name, s in metrics["per_class"].items():
        rows.append((name, str(s["images"]), *("-" if s[k] is None else f"{s[k]:.4f}" for k in SCORES)))
    print(printable_lines(f"  {line}" for line in columns(rows)))
    return 0


SCORES = ("precision", "recall", "f1")  # eval's per-class columns after the images; "-": nothing to divide


def cmd_predict(args: argparse.Namespace) -> int:
    results = load(args.run, device=args.device).predict(args.images, args.top_k)
    if args.json:
        print(to_json(results))
        return 0
    for result in results:
        guesses = ", ".join(f"{p['class']} ({p['probability']:.3f})" for p in result["predictions"])
        print(printable(f"{result['path']}: {guesses}"))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    rows = describe_models()
    width = max(len(name) for name, _, _ in rows)
    print(f"{'model':<{width}}  {'parameters':>10}  (for 3x32x32 images, 10 classes)")
    for name, params, doc in rows:
        print(f"{name:<{width}}  {params:>10,}  {doc}")
    print(f"\nand any of timm's models as --model timm/NAME ({INSTALL}), e.g. timm/resnet18")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    for name, recipe in PRESETS.items():
        print(f"{name}: {recipe['about']}")
        print("  " + " ".join(_as_flag(k, v) for k, v in recipe.items() if k != "about"))
    return 0


def _as_flag(key: str, value) -> str:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value}"
