"""A careless or hostile user, generated: hundreds of flag values, config files and tampered run files thrown
at the CLI in-process. Every case must end in a clean one-line error or a valid run: never a traceback,
never NaN in written JSON, never a hang."""

from __future__ import annotations

import contextlib
import io
import json
import random
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import save_image

from cnnkit.cli.main import main
from cnnkit.settings.config import TrainConfig, field_type

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
        assert err.splitlines()[-1].startswith(("cnnkit: error: ", "cnnkit train: error: ")), (args, err)
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


def read_only(folder: Path, args: list[str]) -> subprocess.CompletedProcess:
    """`cnnkit ARGS` with `folder` mounted read-only for it alone (user and mount namespaces: no root needed)."""
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    command = ["unshare", "-rm", "sh", "-c", script, str(folder), sys.executable, "-m", "cnnkit", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(
    shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"]).returncode != 0,
    reason="needs unshare with user namespaces, to mount a folder read-only",
)
def test_a_read_only_run_folder_is_said_to_be_one_by_every_command_that_writes(finished_run, tmp_path):
    run = shutil.copytree(finished_run[0], tmp_path / "run")
    stopped = shutil.copytree(run, tmp_path / "stopped")
    (stopped / "summary.json").unlink()  # as a run stopped during its test leaves it: one to resume
    for folder, args in (
        (run, ["export", str(run)]),
        (run, ["report", str(run)]),
        (stopped, ["train", "--resume", str(stopped)]),
    ):
        ended = read_only(folder, args)
        assert ended.returncode == 2 and "Traceback" not in ended.stderr, (args, ended.stderr)
        (line,) = ended.stderr.splitlines()[-1:]
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
