"""A careless or hostile user, generated: hundreds of flag values, config files and tampered run files thrown
at the CLI in-process. Every case must end in a clean one-line error or a valid run: never a traceback,
never NaN in written JSON, never a hang."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import io
import json
import os
import random
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_image
from PIL import Image

import cnnkit
from cnnkit.cli.main import main
from cnnkit.settings.config import TrainConfig, field_type
from cnnkit.ship import footprint
from cnnkit.ship.export import model_name
from cnnkit.ship.serve import create_app

SEED = 20261123
PER_CASE_SECONDS = 60
# numbers, words, paths, control characters, YAML-ish and JSON-ish text: what a slip of the keyboard types
VALUES = [
    "",
    "0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "0.5",
    "1.5",
    "-0.5",
    "1e30",
    "1e400",
    "-1e400",
    "inf",
    "-inf",
    "nan",
    "abc",
    "yes",
    "no",
    "none",
    "[]",
    "{}",
    "[a]",
    "1/2/3",
    "80/10/10",
    "nan/0/100",
    "50/50/0",
    "\x1b[31m",
    "caf\u00e9",
    "x" * 300,
    "../../nowhere",
    "~",
    "sgd",
    "adamw",
    "muon",
    "cosine",
    "cpu",
    "bf16",
    "fp32",
    "mnist-fast",
    "cifar10-cpu",
    "cifar10-fast",
    "simplecnn",
    "fastcnn-small",
    "lenet",
]
# settings that could start something long or reach outside the test: a path to scan, many epochs, compiling
NOT_FUZZED = {"data", "data_dir", "out", "epochs", "compile", "image_size", "checkpoint_every", "batch_size"}
YAML_VALUES = [
    "null",
    "~",
    "[1, 2]",
    "{a: 1}",
    "1e400",
    ".nan",
    ".inf",
    "-3",
    "0",
    "1",
    "0.1",
    "true",
    "'x'",
    "&a [1]",
    "*a",
    "!!binary aGk=",
    "!!python/object:os.system {}",
    "'\x1b'",
    "2e9",
    "[[[[[]]]]]",
]
BASE = ["--epochs", "1", "--batch-size", "256", "--model", "small-cnn", "--no-report"]  # a generated --report may win


PLAUSIBLE = {  # values of the right kind, so that part of the cases are valid runs
    int: ["0", "1", "2"],
    float: ["0", "0.01", "0.1", "0.5", "0.9"],
    str: ["auto"],
    "optimizer": ["sgd", "adam", "adamw", "rmsprop", "muon"],
    "schedule": ["constant", "step", "cosine", "onecycle"],
    "device": ["auto", "cpu"],
    "precision": ["auto", "fp32", "bf16"],
    "split": ["80/10/10", "70/15/15"],
    "model": ["small-cnn", "simplecnn", "fastcnn-small", "resnet9-small"],
    "preset": ["mnist-fast", "cifar10-cpu"],
}


def plausible(name: str, rng: random.Random) -> str:
    return rng.choice(PLAUSIBLE.get(name) or PLAUSIBLE.get(field_type(name)) or ["true", "false"])


def flag(name: str, rng: random.Random) -> list[str]:
    """One setting as a user might type it: often a value of the right kind, else anything at all."""
    option = f"--{name.replace('_', '-')}"
    if field_type(name) is bool:
        return [rng.choice([option, f"--no-{option[2:]}"])] if rng.random() < 0.8 else [option, rng.choice(VALUES)]
    return [option, plausible(name, rng) if rng.random() < 0.6 else rng.choice(VALUES)]


class Hang(Exception):
    pass


def run_cli(args: list[str], out: io.StringIO | None = None) -> tuple[int, str]:
    """main(args) with a per-case time limit; (exit code, stderr), and stdout into `out` if given. Any
    exception but a hang is a failure."""

    def too_long(signum, frame):
        raise Hang(f"no answer within {PER_CASE_SECONDS}s: {args}")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(PER_CASE_SECONDS)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(out or io.StringIO()), contextlib.redirect_stderr(err):
            code = main(args)
    except SystemExit as e:  # argparse's own refusal of a malformed command line: usage, then one error line
        code = e.code if isinstance(e.code, int) else 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return code, err.getvalue()


def assert_clean(code: int, err: str, args: list[str], out: Path | None = None) -> int:
    assert code in (0, 2), (code, args, err)
    if code == 2 and err.startswith("usage:"):
        assert re.match(r"cnnkit( [a-z-]+)?: error: ", err.splitlines()[-1]), (args, err)  # argparse: its command
    elif code == 2:  # one line, or one line and the listing it announces (files to put in place)
        assert err.startswith("cnnkit: error: ") and "Traceback" not in err, (args, err)
        assert err.count("\n") == 1 or err.splitlines()[1].startswith(("  ", "Put these files")), (args, err)
    for path in out.rglob("*.json") if out is not None and out.is_dir() else []:
        json.loads(path.read_text(), parse_constant=not_json)  # NaN and Infinity are not JSON
    return code


def not_json(constant: str):
    pytest.fail(f"{constant} in a written JSON file")


def test_generated_flag_values_end_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED)
    fields = sorted(f for f in TrainConfig.__dataclass_fields__ if f not in NOT_FUZZED)
    codes = []
    for case in range(250):
        flags = []
        for name in rng.sample(fields, rng.randint(1, 2)):
            flags += flag(name, rng)
        out = tmp_path / f"flags{case}"
        args = ["train", *BASE, *flags, "--out", str(out)]
        codes.append(assert_clean(*run_cli(args), args, out))
    assert 25 <= codes.count(0) <= 225, codes  # both valid runs and refusals were exercised


def test_generated_config_files_end_cleanly(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED + 1)
    keys = sorted(set(TrainConfig.__dataclass_fields__) - {"data", "data_dir", "out", "init_from"}) + ["epoch", "?"]
    codes = []
    for case in range(150):
        lines = []
        for key in (rng.choice(keys) for _ in range(rng.randint(1, 4))):
            typed = key in TrainConfig.__dataclass_fields__ and rng.random() < 0.5
            lines.append(f"{key}: {plausible(key, rng) if typed else rng.choice(YAML_VALUES + VALUES[:20])}")
        config = tmp_path / f"config{case}.yaml"
        config.write_text("\n".join(lines) + "\n" if rng.random() < 0.9 else rng.choice(["- 1\n", ":\n", "a: [\n"]))
        out = tmp_path / f"config{case}-run"
        args = ["train", "--config", str(config), *BASE, "--out", str(out)]
        codes.append(assert_clean(*run_cli(args), args, out))
    assert 15 <= codes.count(0) <= 135, codes


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """A finished run, and an image to predict."""
    root = tmp_path_factory.mktemp("fuzz")
    assert main(["train", *BASE, "--out", str(root / "run")]) == 0
    image = save_image(root / "digit.png", np.arange(64, dtype=np.uint8).reshape(8, 8))
    return root / "run", image


def tamper_json(value, rng: random.Random):
    """`value` with one random change: a key dropped, a value replaced by something of another kind."""
    if isinstance(value, dict) and value:
        key = rng.choice(sorted(value))
        if rng.random() < 0.3:
            return {k: v for k, v in value.items() if k != key}
        return {**value, key: tamper_json(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.5:
        i = rng.randrange(len(value))
        return [*value[:i], tamper_json(value[i], rng), *value[i + 1 :]]
    return rng.choice([None, 0, -1, 1e308, "x", [], {}, [0.0], [1.0, 2.0, 3.0], True, "\x1b[2J", 10**30])


def test_tampered_model_json_ends_cleanly(finished_run, tmp_path):
    run, image = finished_run
    rng = random.Random(SEED + 2)
    original = json.loads((run / "model.json").read_text())
    codes = []
    for case in range(100):
        copy = tmp_path / f"run{case}"
        shutil.copytree(run, copy)
        (copy / "model.json").write_text(json.dumps(tamper_json(original, rng)))
        for args in (["eval", str(copy), "--json"], ["predict", str(copy), str(image), "--json"]):
            codes.append(assert_clean(*run_cli(args), args))
        shutil.rmtree(copy)
    assert 0 < codes.count(0) < len(codes), codes


def test_tampered_checkpoints_end_cleanly(finished_run, tmp_path):
    run, _ = finished_run
    rng = random.Random(SEED + 3)
    whole = (run / "checkpoint.safetensors").read_bytes()
    header = int.from_bytes(whole[:8], "little")  # safetensors: an 8-byte header size, then the JSON header
    codes = []
    for case in range(100):
        copy = tmp_path / f"run{case}"
        shutil.copytree(run, copy)
        data, kind = bytearray(whole), rng.random()
        if kind < 0.3:
            data = data[: rng.randrange(len(data))]  # cut short
        else:  # bytes changed: in the header, where the layout lives, or in the tensors' bytes
            low, high = (8, 8 + header) if kind < 0.65 else (8 + header, len(data))
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(low, high)] = rng.randrange(256)
        (copy / "checkpoint.safetensors").write_bytes(bytes(data))
        (copy / "summary.json").unlink()  # as a run stopped during its test leaves it: one to resume
        args = ["train", "--resume", str(copy)]
        codes.append(assert_clean(*run_cli(args), args, copy))
        shutil.rmtree(copy)
    assert 0 < codes.count(0) < len(codes), codes


def test_no_class_or_file_name_can_forge_a_line_of_any_command(tmp_path):
    """A newline in a class folder's name (or an image's) once printed raw: one class could forge output lines."""
    rng = np.random.default_rng(SEED)
    forged = "FORGED: 1.0000"
    for name in ("plain", f"evil\n{forged}"):
        for i in range(20):
            save_image(tmp_path / "data" / name / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    image = save_image(tmp_path / f"x\n{forged}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    run, data = str(tmp_path / "run"), str(tmp_path / "data")
    commands = [
        ["train", "--data", data, "--epochs", "1", "--model", "small-cnn", "--out", run],
        ["eval", run],
        ["predict", run, str(image), data + f"/evil\n{forged}/0.png"],
        ["summary", run],
        ["report", run],
        ["compare", run, run, "--plot", str(tmp_path / "compare.png")],
        ["export", run],
        ["predict", run, str(tmp_path / f"missing\n{forged}.png")],  # an error names the file escaped too
    ]
    said = ""
    for args in commands:
        out = io.StringIO()
        code, err = run_cli(args, out)
        said += out.getvalue() + err
        lines = (out.getvalue() + err).splitlines()
        assert code in (0, 2) and not any(line.startswith(forged) for line in lines), (args, out.getvalue(), err)
    assert "evil\\nFORGED" in said and "x\\nFORGED" in said  # shown, escaped


IN_ONE_PROCESS = """
import contextlib, io, json, sys
from cnnkit.cli.main import main
ended = []
for args in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ended.append((main(args), err.getvalue()))
print(json.dumps(ended))
"""


def read_only(folders: list[Path], commands: list[list[str]]) -> list[tuple[int, str]]:
    """Each `cnnkit ARGS` of `commands`, in one process (one start-up) that sees `folders` read-only (user and
    mount namespaces: no root needed): their (exit code, stderr)."""
    mounts = [f"mount --bind {q} {q} && mount -o remount,bind,ro {q}" for q in map(shlex.quote, map(str, folders))]
    script = " && ".join([*mounts, 'exec "$@"'])
    command = ["unshare", "-rm", "sh", "-c", script, "sh", sys.executable, "-c", IN_ONE_PROCESS, json.dumps(commands)]
    ran = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    return [(code, err) for code, err in json.loads(ran.stdout.splitlines()[-1])]


@pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0,
    reason="needs unshare with user namespaces, to mount a folder read-only",
)
def test_a_read_only_run_folder_is_said_to_be_one_by_every_command_that_writes(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    stopped = shutil.copytree(run, tmp_path / "stopped")
    (stopped / "summary.json").unlink()  # as a run stopped during its test leaves it: one to resume
    commands = [["export", str(run)], ["report", str(run)], ["train", "--resume", str(stopped)]]
    for args, (code, err) in zip(commands, read_only([run, stopped], commands), strict=True):
        assert code == 2 and "Traceback" not in err, (args, err)
        (line,) = err.splitlines()[-1:]
        assert line.startswith("cnnkit: error: cannot ") and "Read-only file system" in line, (args, line)
        assert "Copy the run folder to a place you can write" in line and "disk space" not in line
    missing = main_error(["export", str(run), "--out", str(tmp_path / "no" / "such" / "model.onnx")])
    assert "a folder in it does not exist" in missing and "disk space" not in missing


def main_error(args: list[str]) -> str:
    code, err = run_cli(args)
    assert code == 2 and "Traceback" not in err, (args, err)
    return err


def test_a_config_with_every_optional_key_null_trains_as_the_defaults_do(tmp_path, monkeypatch):
    """YAML's null is "left out": `epochs: null` (no steps, no budget) once ended in a traceback. (A required
    key set to null is refused by name: tests/test_config.py.)"""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "nulls.yaml"
    optional = [key for key, known in TrainConfig.__dataclass_fields__.items() if known.default is None]
    config.write_text("".join(f"{key}: null\n" for key in optional))
    args = ["train", "--config", str(config), "--no-report", "--out", str(tmp_path / "run")]
    assert assert_clean(*run_cli(args), args, tmp_path / "run") == 0
    trained = TrainConfig.from_yaml(tmp_path / "run" / "config.yaml")
    assert trained.steps and trained.model != "auto"  # the automatic recipe's length and model


# --search keys: settings a sweep can search, ones it cannot (where the run lives, what it reads), and slips
SEARCH_KEYS = sorted(set(TrainConfig.__dataclass_fields__) - NOT_FUZZED)
MISSPELT_KEYS = ["learning-rate", "lr_", "LR", " lr", "batchsize", "epoch", "optimiser", "", "="]
NUMBERS = ["0", "-1", "1", "2", "1e-4", "0.1", "1e30", "1e300", "1e400", "-inf", "inf", "nan", "abc", "auto", ""]
TRIALS = ["0", "-1", "junk", "1", "2"]
CHOICES = {  # more of the settings a sweep is for, with values of the right kind
    "resize": ["squash", "crop", "pad"],
    "sampler": ["uniform", "balanced"],
    "class_weights": ["none", "balanced"],
    "activation": ["gelu", "silu"],
    "lr": ["0.001", "0.003", "0.01", "auto"],
}


def choice(name: str, rng: random.Random) -> str:
    return rng.choice(CHOICES[name]) if name in CHOICES else plausible(name, rng)


def search_item(rng: random.Random, most: int) -> tuple[str, int]:
    """One --search KEY=VALUES as a user might type it, with at most `most` values listed; and how many it lists."""
    kind = rng.random()
    key = rng.choice(SEARCH_KEYS if kind < 0.85 else MISSPELT_KEYS if kind < 0.93 else ["out", "data"])
    typed = key.replace("_", "-") if rng.random() < 0.5 else key
    known = key in TrainConfig.__dataclass_fields__ and rng.random() < 0.8
    numeric = known and field_type(key) in (int, float)
    shape = rng.random()
    if shape < (0.5 if numeric else 0.9):  # values to choose from, duplicates and all
        values = [choice(key, rng) if known else rng.choice(VALUES) for _ in range(rng.randint(1, most))]
        values[-1] = rng.choice(values) if rng.random() < 0.3 else values[-1]
        return f"{typed}={','.join(values)}", len(values)
    if shape < 0.95:  # a range: of two plausible numbers, or of anything
        low, high = (
            sorted((plausible(key, rng), plausible(key, rng)), key=float) if numeric else rng.choices(NUMBERS, k=2)
        )
        return f"{typed}={low}..{high}", 1
    return rng.choice([typed, f"{typed}=", f"{typed}=..", f"{typed}=,", f"{typed}=1..2..3", f"={typed}"]), 1


def sweep_args(rng: random.Random) -> list[str]:
    """A whole `cnnkit sweep` command but its --out: a grid of at most 3 points, or at most 2 trials drawn."""
    method = rng.choice(["grid"] * 4 + ["random", "random", "tpe", "tpe", rng.choice(["bayes", "", "GRID"])])
    searched, points = [], 1
    for _ in range(1 if rng.random() < 0.6 else 2):
        item, listed = search_item(rng, max(1, 3 // points))
        searched += ["--search", item]
        points *= listed
    some = rng.choice(["1", "2", "2", rng.choice(TRIALS)])  # random and tpe: never the default 8 trials
    trials = ["--trials", some] if method != "grid" or rng.random() < 0.1 else []
    return ["sweep", *searched, "--method", method, *trials, *BASE]


SWEEPS_FOUND = [  # cases that once ended in a traceback: kept, whatever the generator draws
    ["--search", "lr=auto..0.1", "--method", "random", "--trials", "1"],  # a ValueError in parse_search
    ["--search", "lr=1e-300..1e300", "--method", "random", "--trials", "1"],  # torch's float32 overflow in a step
    ["--search", "weight-decay=1e200", "--model", "small-cnn"],
    ["--search", "val-fraction=0,0.1"],  # a TypeError in ranked(): a trial "done" with no validation accuracy
]


def test_generated_sweeps_end_cleanly_and_leave_no_trial_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rng = random.Random(SEED + 4)
    cases = [["sweep", *found, *BASE] for found in SWEEPS_FOUND] + [sweep_args(rng) for _ in range(60)]
    codes = []
    for case, args in enumerate(cases):
        out = tmp_path / f"sweep{case}"
        args = [*args, "--out", str(out)]
        codes.append(assert_clean(*run_cli(args), args, out))
        if (out / "sweep.json").is_file():
            trials = json.loads((out / "sweep.json").read_text())["trials"]
            assert {t["status"] for t in trials.values()} <= {"done", "pruned", "failed"}, (args, trials)
    assert 8 <= codes.count(0) <= 50, codes


def encoded_image(mode: str, kind: str, rng: random.Random) -> bytes:
    """An 8x8 image of `mode` (random pixels) as a `kind` file, or b"" where PIL cannot write that pair."""
    pixels = Image.frombytes("L", (8, 8), bytes(rng.randrange(256) for _ in range(64))).convert(mode)
    buffer = io.BytesIO()
    try:
        pixels.save(buffer, format=kind)
    except (OSError, ValueError, KeyError):
        return b""
    return buffer.getvalue()


def png_header(width: int, height: int) -> bytes:
    """A PNG's signature and IHDR chunk declaring width x height (its CRC right), and no pixels."""
    chunk = b"IHDR" + struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def hostile_files(good: bytes, rng: random.Random) -> list[bytes]:
    """Bytes that claim, or almost are, an image file."""
    jpeg = encoded_image("RGB", "JPEG", rng)
    flipped = bytearray(good)
    for _ in range(4):
        flipped[rng.randrange(len(flipped))] = rng.randrange(256)
    modes = ["1", "L", "LA", "P", "RGB", "RGBA", "I", "I;16", "F", "CMYK", "YCbCr"]
    kinds = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO", "PPM"]
    return [
        bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))),
        good[: rng.randrange(1, len(good))],
        jpeg[: rng.randrange(1, len(jpeg))],
        bytes(flipped),
        png_header(rng.choice([0, 1, 2**31 - 1, 100_000]), rng.choice([0, 1, 100_000])),
        encoded_image(rng.choice(modes), rng.choice(kinds), rng),
        b"\xff\xd8" + bytes(rng.randrange(256) for _ in range(20)),  # a JPEG's start, then anything
        rng.choice([b"GIF89a", b"BM", b"II*\x00", b"RIFF\x00\x00\x00\x00WEBP", b"<svg/>", b"%PDF-1.4"]),
    ]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def predict_request(good: bytes, rng: random.Random) -> dict:
    """A hostile POST /predict: the body, its content type and shape drawn at random."""
    file = rng.choice(hostile_files(good, rng) + [good])
    shape = rng.randrange(4)
    if shape == 0:  # raw bytes under any content type
        kind = rng.choice(CONTENT_TYPES)
        return {
            "content": rng.choice([file, b"", b"{}", b"x" * 5000]),
            "headers": {"content-type": kind} if kind else {},
        }
    if shape == 1:  # JSON, often of the wrong shape or types
        value = rng.choice(
            [
                {"image": b64(file)},
                {"image": "data:image/png;base64," + b64(file)},
                {"images": [b64(file), rng.choice(JSON_JUNK)]},
                {"image": rng.choice(JSON_JUNK)},
                {"images": rng.choice(JSON_JUNK)},
                {"images": [b64(good)] * rng.choice([0, 65])},
                rng.choice(JSON_JUNK),
            ]
        )
        text = json.dumps(value) if rng.random() < 0.9 else json.dumps(value)[: rng.randrange(1, 20)]
        return {"content": text.encode(), "headers": {"content-type": "application/json"}}
    if shape == 2:  # a multipart form, written here: httpx would refuse to send a name with a newline in it
        parts = [
            form_part(rng.choice(NAMES), rng.choice([file, good, b""]), rng) for _ in range(rng.choice([1, 2, 70]))
        ]
        body = b"".join(parts) + (b"--fuzz--\r\n" if rng.random() < 0.9 else b"")
        return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=fuzz"}}
    boundary = rng.choice(["", "x", "-" * 80, "\x1b"])  # a form that its type announces and its body is not
    return {"content": file, "headers": {"content-type": f"multipart/form-data; boundary={boundary}"}}


def form_part(name: str, data: bytes, rng: random.Random) -> bytes:
    """One part of a multipart form: a file (named anything, even with a newline), or a text field."""
    field = 'name="note"' if rng.random() < 0.2 else f'name="file"; filename="{name}"'
    kind = f"\r\nContent-Type: {rng.choice(CONTENT_TYPES)}" if rng.random() < 0.7 else ""
    return (
        f"--fuzz\r\nContent-Disposition: form-data; {field}{kind}\r\n\r\n".encode(errors="surrogateescape")
        + data
        + b"\r\n"
    )


CONTENT_TYPES = ["", "image/png", "image/jpeg", "application/json", "multipart/form-data", "text/plain",
                 "application/x-www-form-urlencoded", "application/octet-stream", "image/*", "\x7f/\x7f"]  # fmt: skip
JSON_JUNK = [None, 0, -1, 1e308, True, "", "x" * 100_000, "data:", "data:image/png", "data:,", "=", "\u00e9\u00e9",
             [], {}, [[[[[]]]]], [None], {"image": None}, {"images": {}}, "aGk=", "!!!"]  # fmt: skip
NAMES = ["a.png", "", "x\n.png", "x\r\n\r\n.png", '"', "\udcff.png", "\x1b[2J.png", "../../etc/passwd",
         "<script>.png", "x" * 300, "caf\u00e9.png"]  # fmt: skip


def infer_request(images: torch.Tensor, good: bytes, rng: random.Random) -> dict:
    """An Open Inference Protocol request, valid (UINT8 pixels or BYTES files, as JSON or in the binary
    extension), then given up to 3 hostile changes: tensors of wrong shapes, types and lengths, outputs and
    parameters of any kind, a binary part that does not match its header."""
    n = rng.choice([1, 2])
    if rng.random() < 0.5:
        tensor: dict = {"name": "images", "datatype": "UINT8", "shape": [n, 1, 8, 8]}
        data, raw = images[:n].flatten().tolist(), images[:n].numpy().tobytes()
    else:
        tensor = {"name": "images", "datatype": "BYTES", "shape": [n]}
        data, raw = [b64(good)] * n, (len(good).to_bytes(4, "little") + good) * n
    binary = rng.random() < 0.4
    tensor.update({"parameters": {"binary_data_size": len(raw)}} if binary else {"data": data})
    header: dict = {"inputs": [tensor]}
    for _ in range(rng.choice([0, 1, 1, 2, 3])):
        change = rng.randrange(8)
        if change == 0:
            tensor["shape"] = rng.choice(OIP_SHAPES)
        elif change == 1:
            tensor["datatype"] = rng.choice(["UINT8", "BYTES", "FP32", "INT8", None, 5, "", "uint8"])
        elif change == 2:
            junk = [[256] * len(data), [-1], [str(data[0])] * len(data), [[d] for d in data], [None], "abc", None, 7]
            hostile = [b64(f) for f in hostile_files(good, rng)[:n]]
            tensor["data"] = rng.choice([data[:-1], data + data[:1], hostile, [1e30], [float("nan")], [{}], *junk])
        elif change == 3:
            tensor.pop(rng.choice(sorted(tensor)))
        elif change == 4:
            tensor["parameters"] = rng.choice([{"binary_data_size": rng.choice(OIP_JUNK)}, *OIP_JUNK])
        elif change == 5:
            header["inputs"] = rng.choice([[], [tensor, tensor], tensor, None, "x", [None], [[tensor]]])
        elif change == 6:
            header[rng.choice(["outputs", "parameters", "id"])] = rng.choice(OIP_JUNK)
        else:
            parameters = [{"classification": rng.choice(OIP_JUNK)}, {"binary_data": rng.choice(OIP_JUNK)}, *OIP_JUNK]
            named = rng.choice(["class", "probabilities", "nope", None])
            header["outputs"] = [{"name": named, "parameters": rng.choice(parameters)}]
    text = json.dumps(header).encode()
    if not binary:
        return {"content": text, "headers": {"content-type": "application/json"}}
    raw = raw if rng.random() < 0.8 else raw[: rng.randrange(len(raw))] + bytes(rng.randrange(3))
    length = str(len(text)) if rng.random() < 0.8 else rng.choice(["", "-1", "abc", "0", "1e3", str(len(text) + 1)])
    return {"content": text + raw, "headers": {"Inference-Header-Content-Length": length}}


OIP_SHAPES = [[1, 1, 8], [0, 1, 8, 8], [65, 1, 8, 8], [-1, 1, 8, 8], [1, 3, 8, 8], [1, 1, 8, 8.0], ["a", 1, 8, 8],
              [1.5, 1, 8, 8], [True, 1, 8, 8], [1], [2], [1, 1], [2, 1], [], "x", None, [10**30, 1, 8, 8],
              [1, [1], 8, 8]]  # fmt: skip
OIP_JUNK = [None, 0, -1, 2, 10**30, 2.5, True, "3", "x", [], [1], {}, {"a": 1}, [{"name": "class"}] * 3]


def found_requests(images: torch.Tensor, good: bytes) -> list[tuple[str, dict]]:
    """Requests that once got a 500 (a traceback in the server), kept whatever the generator draws."""
    pixels = {"name": "images", "datatype": "UINT8", "data": images[:1].flatten().tolist()}
    files = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [b64(good)]}
    return [
        ("/predict", {"json": {"images": [b64(good), "data:image/png"]}}),  # a data URL with no comma: IndexError
        ("infer", {"json": {"inputs": [{**files, "parameters": 2}]}}),  # parameters not an object: TypeError
        ("infer", {"json": {"inputs": [files], "outputs": [{"name": "class", "parameters": [1]}]}}),  # AttributeError
        ("infer", {"json": {"inputs": [files], "outputs": 5}}),  # TypeError
        ("infer", {"json": {"inputs": [{**pixels, "shape": [1, 1, 8, 8.0]}]}}),  # 8.0 == 8, no size: TypeError
        ("infer", {"json": {"inputs": [{**files, "shape": [1, [1]]}]}}),  # a ValueError in np.prod
    ]


def test_hostile_http_bodies_get_a_4xx_with_a_message_and_the_server_goes_on(finished_run):
    testclient = pytest.importorskip("fastapi.testclient", reason="needs the serve extra: pip install 'cnnkit[serve]'")
    run_dir, image = finished_run
    run = cnnkit.load(run_dir, device="cpu")
    client = testclient.TestClient(create_app(run, max_bytes=2**20), raise_server_exceptions=False)
    good, rng = image.read_bytes(), random.Random(SEED + 5)
    images = torch.from_numpy(np.stack([np.asarray(Image.open(image))[None]] * 2))  # (2, 1, 8, 8) uint8
    infer = f"/v2/models/{model_name(run.dir)}/infer"
    cases = [(infer if path == "infer" else path, request) for path, request in found_requests(images, good)]
    for case in range(240):
        if case % 3 == 2:
            cases.append(
                (rng.choice([infer, infer, infer, "/v2/models/other/infer"]), infer_request(images, good, rng))
            )
        else:
            cases.append(("/predict", predict_request(good, rng)))
    statuses = []
    for path, request in cases:
        answer = client.post(path, **request)
        assert answer.status_code < 500, (path, request, answer.status_code, answer.text)
        if answer.status_code >= 400:
            message = answer.json().get("error" if path.startswith("/v2/") else "detail")
            assert message and isinstance(message, str), (path, request, answer.text)
        statuses.append((path == infer, answer.status_code))
    assert {(False, 200), (True, 200), (False, 400), (True, 400), (False, 415)} <= set(statuses)  # both kinds
    assert client.post("/predict", content=good).json()["predictions"][0]["probability"] > 0
    assert client.get("/health").json()["status"] == "ok"


CLASS_NAMES = {  # class folder names a careless or hostile user could give, a run's worth each
    "lines": ["new\nline", "\x1b[31mred\x1b[0m \x1b[2J", "$5 or $6 <img src=x onerror=alert(1)>"],
    "bytes": [os.fsdecode(b"caf\xe9"), "y" * 200, "   "],  # a Latin-1 name, not UTF-8: Python holds it escaped
}


@pytest.fixture(scope="module", params=sorted(CLASS_NAMES))
def hostile_run(request, tmp_path_factory) -> tuple[Path, Path]:
    """A run trained on 8x8 images in class folders of hostile names, and one of its images."""
    root, rng = tmp_path_factory.mktemp(f"names-{request.param}"), np.random.default_rng(SEED)
    try:
        for name in CLASS_NAMES[request.param]:
            for i in range(12):
                save_image(root / "data" / name / f"{i}.png", rng.integers(0, 255, (8, 8), dtype=np.uint8))
    except (OSError, UnicodeError):
        pytest.skip(f"this file system takes no folder named {CLASS_NAMES[request.param]!r}")
    args = ["train", "--data", str(root / "data"), *BASE, "--out", str(root / "run")]
    assert assert_clean(*run_cli(args), args) == 0
    return root / "run", root / "data" / CLASS_NAMES[request.param][0] / "0.png"


@pytest.fixture
def quick_footprint(monkeypatch):
    """`cnnkit compress` times each model for a second at two batch sizes; its clock is not what these tests
    check, and a hundredth of a second still measures."""
    monkeypatch.setattr(footprint, "TIMED_SECONDS", 0.01)


def assert_readable(args: list[str], made: Path) -> None:
    """What a command that ended well wrote can be read back: the page, the ONNX model."""
    if args[0] == "report":
        assert (made / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>"), args
    if args[0] in ("export", "compress") and importlib.util.find_spec("onnxruntime") is not None:
        import onnxruntime

        onnxruntime.InferenceSession(str(made / "model.onnx"), providers=["CPUExecutionProvider"])


def test_hostile_class_names_are_exported_compressed_reported_and_predicted(hostile_run, tmp_path, quick_footprint):
    run, image = hostile_run
    int8 = tmp_path / "int8"
    commands = [
        (["export", str(run)], run),
        (["compress", str(run), "--quantize", "int8", "--calibration-images", "8", "--out", str(int8)], int8),
        (["report", str(run)], run),
        (["eval", str(run)], None),
        (["predict", str(run), str(image)], None),
        (["eval", str(int8)], None),
        (["predict", str(int8), str(image), "--json"], None),
        (["summary", str(run)], None),
    ]
    for args, made in commands:
        code, err = run_cli(args)
        assert assert_clean(code, err, args, made) == 0 and not err, (args, err)  # nothing warned, either
        if made is not None:
            assert_readable(args, made)
    # Triton's labels.txt is one UTF-8 line a class: such names are refused there, in one line, not written
    args = ["export", str(run), "--format", "triton", "--out", str(tmp_path / "triton")]
    code, err = run_cli(args)
    assert assert_clean(code, err, args) == 2 and "rename" in err and not (tmp_path / "triton").exists()


def test_a_server_answers_with_hostile_class_names_as_json(hostile_run):
    testclient = pytest.importorskip("fastapi.testclient", reason="needs the serve extra: pip install 'cnnkit[serve]'")
    run_dir, image = hostile_run
    run = cnnkit.load(run_dir, device="cpu")
    client = testclient.TestClient(create_app(run, top_k=3), raise_server_exceptions=False)
    infer = f"/v2/models/{model_name(run.dir)}/infer"
    tensor = {"name": "images", "datatype": "BYTES", "shape": [1], "data": [b64(image.read_bytes())]}
    answers = [
        client.get("/health"),
        client.get("/"),
        client.post("/predict", content=image.read_bytes()),
        client.get(f"/v2/models/{model_name(run.dir)}"),
        client.post(infer, json={"inputs": [tensor], "parameters": {"binary_data_output": True}}),
        client.post(
            infer,
            json={"inputs": [tensor], "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]},
        ),
    ]
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers]
    shown = {p["class"] for p in answers[2].json()["predictions"]}
    assert shown == {c.encode("utf-8", "backslashreplace").decode() for c in run.classes}  # escaped only if not UTF-8


CONFIG_EDITS = [  # config.yaml keys set to null or to a value of another kind; "-" drops the key
    {"lr": "abc"},
    {"epochs": "[1]"},
    {"tta": "3"},
    {"model": "null"},
    {"head_lr": "2e9"},  # text to YAML (its floats need a dot), a number to cnnkit: the report's plot once failed
    {"optimizer": "muon", "lr": "-"},  # the plot once read the rate from the file alone: a KeyError
]


def edited(config: str, edit: dict[str, str]) -> str:
    for key, value in edit.items():
        line = "" if value == "-" else f"{key}: {value}\n"
        config = re.sub(rf"^{key}:.*\n", lambda _, line=line: line, config, flags=re.M)  # the text as it is
    return config


def test_a_tampered_config_yaml_ends_cleanly_in_every_command(finished_run, tmp_path, quick_footprint):
    run, image = finished_run
    rng = random.Random(SEED + 6)
    keys = [line.split(":")[0] for line in (run / "config.yaml").read_text().splitlines()]
    generated = [{k: rng.choice([*YAML_VALUES, *VALUES[:20], "-"]) for k in rng.sample(keys, 2)} for _ in range(8)]
    codes = []
    for case, edit in enumerate(CONFIG_EDITS + generated):
        copy = shutil.copytree(run, tmp_path / f"run{case}", ignore=shutil.ignore_patterns("plots", "report.html"))
        (copy / "config.yaml").write_text(edited((copy / "config.yaml").read_text(), edit))
        int8 = tmp_path / f"run{case}-int8"
        for args, made in (
            (["eval", str(copy)], None),
            (["predict", str(copy), str(image)], None),
            (["report", str(copy)], copy),
            (["export", str(copy)], copy),
            (["compress", str(copy), "--quantize", "int8", "--calibration-images", "8", "--out", str(int8)], int8),
        ):
            codes.append(assert_clean(*run_cli(args), args, made))
            if codes[-1] == 0 and made is not None:
                assert_readable(args, made)
    assert 0 < codes.count(0) < len(codes), codes
