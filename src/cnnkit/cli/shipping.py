"""The `cnnkit` commands that take a trained model elsewhere: export, compress and serve (cli.py wires them in)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cnnkit.core.errors import CnnkitError
from cnnkit.core.progress import printable
from cnnkit.runs.run import load
from cnnkit.ship.compress import CALIBRATION_IMAGES, prune, quantize
from cnnkit.ship.export import CHECKED_BATCHES, FORMATS, PARITY, export_run
from cnnkit.ship.footprint import footprint_table
from cnnkit.ship.serve import MAX_BYTES, MAX_PIXELS, REQUEST_SECONDS, create_app, serve

MOST_MB = 1024  # --max-mb's ceiling: a body is held in memory
MOST_MEGAPIXELS = 1000  # --max-megapixels': a decoded image is held in memory


def add_shipping_commands(commands) -> None:
    """Add export and serve to the `cnnkit` command's sub-commands."""
    export = commands.add_parser(
        "export",
        help="a run's model as ONNX, a torch.export program or a Triton model repository, checked against the run",
        description=(
            "Export a run's whole prediction: uint8 images (N, C, H, W) of the run's channels and size in, "
            f"class probabilities out, for any N. Written only if, on the run's own test images at batch sizes "
            f"{', '.join(map(str, CHECKED_BATCHES))}, it gives the run's probabilities within {PARITY:g}. "
            "--format triton writes a Triton Inference Server model repository: NAME/config.pbtxt, NAME/labels.txt "
            "and NAME/1/model.onnx, NAME the run folder's name. Refused while the run is still training."
        ),
    )
    export.add_argument("run", help="run folder written by `cnnkit train`")
    export.add_argument("--format", choices=tuple(FORMATS), default="onnx", help="onnx (default), pt2 or triton")
    export.add_argument(
        "--out",
        metavar="PATH",
        help="where to write it (default RUN/model.onnx, RUN/model.pt2 or the folder RUN/triton)",
    )
    export.set_defaults(command=cmd_export)

    compress = commands.add_parser(
        "compress",
        help="a smaller model from a run (int8 or pruned) in a new run folder, measured beside the original",
        description=(
            "Make a smaller version of a run in a new run folder, and print its size, CPU latency per image and "
            "test accuracy beside the original's. --quantize int8: the whole prediction as an ONNX model with int8 "
            f"weights and activations, ranges calibrated on {CALIBRATION_IMAGES} training images (onnxruntime: pip "
            "install 'cnnkit[export]'); predict, evaluate and serve run it. --prune FRACTION: that share of the "
            "conv and linear weights, the smallest, set to zero and kept there through a short fine-tune (a tenth "
            "of the run's steps at a tenth of its rates) on the run's own data; a run like any other."
        ),
    )
    compress.add_argument("run", help="run folder written by `cnnkit train`")
    how = compress.add_mutually_exclusive_group(required=True)
    how.add_argument("--quantize", choices=("int8",), help="int8 static quantisation, calibrated on training images")
    how.add_argument("--prune", type=float, metavar="FRACTION", help="share of the weights set to zero, e.g. 0.5")
    compress.add_argument("--out", metavar="DIR", help="the new run folder (default: RUN-int8 or RUN-prunedNN)")
    compress.add_argument(
        "--calibration-images", type=int, metavar="N", help=f"with --quantize (default {CALIBRATION_IMAGES})"
    )
    compress.add_argument("--steps", type=int, help="with --prune: fine-tune steps (default a tenth of the run's)")
    compress.set_defaults(command=cmd_compress)

    serve = commands.add_parser(
        "serve",
        help="a run behind HTTP: POST an image to /predict, or open the page; the Open Inference Protocol under /v2",
        description="Serve a run. POST /predict takes an image's bytes (curl --data-binary @cat.jpg "
        "http://127.0.0.1:8000/predict), a multipart form with one or more files (curl -F file=@cat.jpg ...), or "
        'JSON {"image": BASE64}; GET / is a page to drop an image on; /docs describes every route; /v2/... speaks '
        "the Open Inference Protocol (KServe v2: tritonclient and KServe clients). Images that arrive together are "
        "predicted as one batch. Needs pip install "
        "'cnnkit[serve]'; with onnxruntime and an up-to-date RUN/model.onnx (cnnkit export), ONNX answers.",
    )
    serve.add_argument("run", help="run folder written by `cnnkit train`")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--top-k", type=int, default=3, help="classes in each answer (default 3)")
    serve.add_argument(
        "--max-mb", type=float, default=MAX_BYTES / 2**20, help=f"largest upload in MiB (default 10, at most {MOST_MB})"
    )
    serve.add_argument(
        "--max-megapixels",
        type=float,
        default=MAX_PIXELS / 1e6,
        help=f"most pixels an image may decode to, in millions (default {MAX_PIXELS / 1e6:g}); a JPEG past it is "
        "decoded at a reduced scale, any other image refused",
    )
    serve.add_argument(
        "--timeout",
        type=float,
        default=REQUEST_SECONDS,
        metavar="SECONDS",
        help=f"a client's time to send a request, headers and body (default {REQUEST_SECONDS:g}); then it is closed",
    )
    serve.set_defaults(command=cmd_serve)


def cmd_export(args: argparse.Namespace) -> int:
    exported = export_run(load(args.run, device="cpu"), args.format, Path(args.out) if args.out else None)
    size = exported.path.stat().st_size / 2**20
    print(
        printable(
            f"exported to {exported.path} ({size:.2f} MiB); on {exported.images} of the run's test images it gives "
            f"the run's probabilities within {exported.largest_difference:.1e}"
        )
    )
    if exported.repository is not None:
        print(printable(f"serve it with: tritonserver --model-repository={exported.repository.resolve()}"))
    return 0


def cmd_compress(args: argparse.Namespace) -> int:
    if args.quantize and args.steps is not None:
        raise CnnkitError("--steps is the fine-tune's, after --prune; --quantize int8 trains nothing")
    if args.prune is not None and args.calibration_images is not None:
        raise CnnkitError("--calibration-images goes with --quantize int8; --prune calibrates nothing")
    run, out = load(args.run, device="cpu"), Path(args.out) if args.out else None
    if args.quantize:
        smaller = quantize(run, out, CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images)
    else:
        smaller = prune(run, args.prune, out, args.steps)
    compressed = smaller.summary.compressed
    assert compressed is not None  # quantize and prune write their record into the summary they return
    for line in footprint_table(compressed["versions"]):
        print(printable(line))
    print(printable(f"the {args.quantize or 'pruned'} run is {smaller.dir}"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.top_k < 1 or not 0 < args.port < 65536 or not 0 < args.timeout <= 3600:
        raise CnnkitError("--top-k must be 1 or more, --port between 1 and 65535, and --timeout 0-3600 seconds")
    if not 0 < args.max_mb <= MOST_MB or not 0 < args.max_megapixels <= MOST_MEGAPIXELS:  # NaN fails too
        raise CnnkitError(f"--max-mb must be above 0 and at most {MOST_MB}, --max-megapixels at most {MOST_MEGAPIXELS}")
    app = create_app(load(args.run), args.top_k, int(args.max_mb * 2**20), int(args.max_megapixels * 1e6))
    url = f"http://{args.host}:{args.port}"

    def said() -> None:
        print(
            printable(f"serving {args.run} on {url}: open it in a browser, or POST an image to /predict; Ctrl-C stops")
        )

    serve(app, args.host, args.port, said, args.timeout)
    return 0
