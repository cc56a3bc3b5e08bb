"""Faults during training: SIGKILL and Ctrl-C then resume (bit for bit), and checkpoints that must
not be trusted (truncated, foreign, a pickle that would run code)."""

from __future__ import annotations

import csv
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import cnnkit
import cnnkit.runs.folder
import cnnkit.training.checkpoint
from cnnkit import CnnkitError
from cnnkit.training.checkpoint import load_checkpoint

SETTINGS = [
    "--epochs",
    "3",
    "--checkpoint-every",
    "3",
    "--batch-size",
    "16",  # ~80 steps an epoch
    "--flip",
]  # flips alternate by epoch: a resumed epoch must mirror the same images


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    quiet = [] if "--resume" in args else ["--no-report"]  # a resumed run keeps its own settings
    return subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "train", *args, *quiet],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def final_state(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.safetensors")["model"]


def metrics_without_times(run: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(run / "metrics.csv"))]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    assert start([*SETTINGS, "--out", "run"], cwd).wait() == 0
    return cwd / "run"


def wait_for_writes(path: Path, process: subprocess.Popen, count: int) -> None:
    """Return once `path` has been seen rewritten `count` times: a moment inside the run however fast the
    machine is (the run writes about 80 checkpoints)."""
    seen, last = 0, None
    while seen < count:
        assert process.poll() is None, process.communicate()
        try:
            stamp = path.stat().st_mtime_ns
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.002)


def assert_identical(run: Path, reference: Path) -> None:
    expected, got = final_state(reference), final_state(run)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    best, best_again = (load_file(str(r / "weights.safetensors")) for r in (reference, run))
    assert all(torch.equal(best[k], best_again[k]) for k in best)
    assert metrics_without_times(run) == metrics_without_times(reference)
    # every step's rate, as the run took it: one row a step, the same as the run never stopped
    assert (run / "rates.csv").read_text() == (reference / "rates.csv").read_text()


class Stop(Exception):
    pass


class StopAt(cnnkit.Callback):
    """Fails the run at one step: what a crash there leaves is the last periodic checkpoint."""

    def __init__(self, epoch: int, step: int):
        self.epoch, self.step = epoch, step

    def on_step_end(self, trainer, loss):
        if (trainer.pos.epoch, trainer.pos.step) == (self.epoch, self.step):
            raise Stop


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_moment_then_resume_is_bit_identical(tmp_path, reference, seed):
    process = start([*SETTINGS, "--out", "run"], tmp_path)
    rng = random.Random(seed)
    wait_for_writes(tmp_path / "run" / "checkpoint.safetensors", process, rng.randint(1, 30))
    time.sleep(rng.uniform(0, 0.05))  # then anywhere: mid-step, mid-write, across an epoch's end
    assert process.poll() is None, "the run ended before the kill: the test would compare a run with itself"
    process.send_signal(signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(
        [sys.executable, "-m", "cnnkit", "train", "--resume", "run"], cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr
    assert_identical(tmp_path / "run", reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_says_how_to_resume(tmp_path, reference, sig):
    process = start([*SETTINGS, "--out", "run"], tmp_path)
    wait_for(tmp_path / "run" / "checkpoint.safetensors", process)
    process.send_signal(sig)
    out, err = process.communicate()
    if process.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert process.returncode == 130 and "Traceback" not in err
    assert "a checkpoint is saved. Resume with: cnnkit train --resume run" in err
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    cnnkit.resume(tmp_path / "run")
    assert state["position"]["step"] > 0 or state["position"]["epoch"] > 1
    assert_identical(tmp_path / "run", reference)


class Exploit:
    """Unpickling this would create a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_checkpoints_that_are_not_trustworthy_are_refused_unread(tmp_path, reference):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.safetensors").write_bytes(pickle.dumps(Exploit(marker)))
    torch.save({"x": Exploit(marker)}, tmp_path / "evil.pt")
    whole = (reference / "checkpoint.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(whole[: len(whole) // 2])
    weights = reference / "weights.safetensors"  # valid safetensors, but not a checkpoint
    for path in ("evil.safetensors", "evil.pt", "cut.safetensors", str(weights)):
        with pytest.raises(CnnkitError, match="not a (readable )?cnnkit checkpoint"):
            load_checkpoint(tmp_path / path)
    assert not marker.exists()


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(CnnkitError, match="no checkpoint at"):
        cnnkit.resume(tmp_path)


@pytest.mark.parametrize("precision", ["auto", "fp32"])  # bf16 where the CPU has it: the loss or the weights first
def test_a_loss_that_turns_nan_stops_and_keeps_the_last_good_checkpoint(tmp_path, precision):
    with pytest.raises(
        CnnkitError,
        match=r"the (training loss became NaN or infinite at|weights became NaN or infinite by) epoch \d+, step \d+; "
        r"the last good checkpoint is kept. Lower --lr",
    ) as stopped:
        cnnkit.train(
            report=False,
            precision=precision,
            epochs=3,
            optimizer="sgd",
            lr=1e6,
            schedule="constant",
            checkpoint_every=1,
            out=str(tmp_path / "run"),
        )
    state = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert all(torch.isfinite(t).all() for t in state["model"].values())  # good weights, not the NaN ones
    bf16 = cnnkit.core.machine.pick_machine("auto", precision).bf16
    assert ("--precision fp32" in str(stopped.value)) == bf16  # no advice to take what the run already had


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one_whole(tmp_path):
    from cnnkit.core.files import atomic_write
    from cnnkit.training.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.safetensors"
    save_checkpoint(path, {"weights": torch.ones(3), "epoch": 2})

    def disk_fills_up(tmp: Path) -> None:
        tmp.write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    with pytest.raises(CnnkitError, match="No space left on device; the previous version of the file is intact"):
        atomic_write(path, disk_fills_up)
    state = load_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["weights"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.safetensors"]


class NaNOnFifthStep(nn.Module):
    """A working digits classifier whose fifth training forward pass returns NaN: an injected fault."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 64, 10))
        self.calls = 0

    def forward(self, x):
        out = self.body(x)
        if self.training:
            self.calls += 1
            if self.calls == 5:
                out = out * float("nan")
        return out


def test_an_injected_nan_stops_at_its_step_or_is_skipped_with_the_flag(tmp_path, capsys):
    with pytest.raises(CnnkitError, match="loss became NaN or infinite at epoch 1, step 5"):
        cnnkit.train(report=False, model=NaNOnFifthStep(), epochs=2, out=str(tmp_path / "stops"))
    assert not (tmp_path / "stops" / "checkpoint.safetensors").exists()  # no checkpoint of poisoned weights
    run = cnnkit.train(
        report=False,
        model=NaNOnFifthStep(),
        epochs=2,
        skip_nonfinite=True,
        lr=0.004,
        schedule="constant",
        out=str(tmp_path / "skips"),
    )
    assert "skipped epoch 1, step 5: the loss was nan; learning rate halved" in capsys.readouterr().out
    assert run.summary.test_accuracy > 0.8
    assert load_checkpoint(run.dir / "checkpoint.safetensors")["scheduler"]["base_lrs"] == [0.002, 0.002]


def test_a_disk_too_full_for_the_run_fails_before_training(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30 - 2**20, 2**20))
    with pytest.raises(CnnkitError, match="only 1.0 MiB are free .* free some space or pass --out"):
        cnnkit.train(report=False, out=str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.csv").exists()  # stopped before the first epoch


def test_a_run_folder_belongs_to_one_run_at_a_time_and_is_evaluated_only_once_stopped(tmp_path):
    long = ["--epochs", "300", "--model", "simplecnn"]  # minutes of digits: still going while we try
    first = start([*long, "--out", "run"], tmp_path)
    wait_for(tmp_path / "run" / "weights.safetensors", first)  # its first epoch is done
    in_use, training = "run is in use by another cnnkit run that is still going", "run is still training"
    for second, refusal in (  # neither a new run nor a resume may write into it, nor eval test weights that change
        (["train", "--out", "run"], in_use),
        (["train", "--resume", "run"], in_use),
        (["eval", "run"], training),
    ):
        refused = subprocess.run(
            [sys.executable, "-m", "cnnkit", *second], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refusal in refused.stderr and "test accuracy" not in refused.stdout, refused.stderr
    assert first.poll() is None
    first.send_signal(signal.SIGTERM)  # the first run stops cleanly, and with it goes its claim
    assert first.wait(timeout=120) == 130
    with cnnkit.runs.folder.RunFolder.reopen(tmp_path / "run", cnnkit.core.machine.pick_machine("cpu")):
        pass  # claimed and let go again: nothing holds the folder any more
    stopped = subprocess.run([sys.executable, "-m", "cnnkit", "eval", "run"], cwd=tmp_path, capture_output=True)
    assert stopped.returncode == 0 and b"test accuracy" in stopped.stdout
    assert b"run stopped before it finished" in stopped.stderr and b"cnnkit train --resume run" in stopped.stderr


def test_two_runs_started_together_on_one_folder_never_mix(tmp_path):
    runs = [start(["--epochs", "2", "--out", "run"], tmp_path) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    assert sorted(code for code, _ in results) == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "in use by another cnnkit run" in refused or "already holds files" in refused
    assert [row["epoch"] for row in csv.DictReader(open(tmp_path / "run" / "metrics.csv"))] == ["1", "2"]


def test_a_failed_start_keeps_a_folder_the_user_made(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(CnnkitError, match="does not exist"):
        cnnkit.train(report=False, data=str(tmp_path / "missing"), out=str(tmp_path / "mine"))
    assert (tmp_path / "mine").is_dir()  # empty, as it was: still the user's
    with pytest.raises(CnnkitError, match="does not exist"):
        cnnkit.train(report=False, data=str(tmp_path / "missing"), out=str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()  # made by the failed run, so removed by it


def test_weights_gone_non_finite_while_steps_are_skipped_are_never_kept(tmp_path):
    with pytest.raises(
        CnnkitError, match=r"(NaN or infinite|non-finite validation loss).* the last good checkpoint is kept"
    ):
        cnnkit.train(
            report=False,
            epochs=2,
            optimizer="sgd",
            lr=1e6,
            schedule="constant",
            skip_nonfinite=True,
            out=str(tmp_path / "run"),
        )
    assert not (tmp_path / "run" / "summary.json").exists()  # no run that says "saved" with NaN weights
    weights = tmp_path / "run" / "weights.safetensors"
    assert not weights.exists() or all(torch.isfinite(t).all() for t in load_file(str(weights)).values())


def test_written_json_is_strict_and_undefined_figures_are_null(tmp_path):
    import json

    from cnnkit.core.files import write_json
    from cnnkit.training.evaluation import test_metrics

    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    metrics = test_metrics(logits, torch.tensor([0, 1]), ["a", "b", "c"])  # no test image of class c
    assert metrics["per_class_accuracy"] == {"a": 1.0, "b": 1.0, "c": None}
    write_json(tmp_path / "m.json", {**metrics, "test_loss": float("nan"), "other": [float("inf")]})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)["test_loss"] is None and json.loads(text)["other"] == [None]


def test_a_disk_full_at_the_start_leaves_a_folder_ready_for_the_next_run(tmp_path, monkeypatch):
    import errno
    import os

    real_fsync = os.fsync

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    (tmp_path / "mine").mkdir()
    monkeypatch.setattr(os, "fsync", disk_full)
    for out in ("mine", "new"):
        with pytest.raises(CnnkitError, match=r"cannot write .*config.yaml: No space left on device; the previous"):
            cnnkit.train(report=False, epochs=1, out=str(tmp_path / out))
    assert list((tmp_path / "mine").iterdir()) == [] and not (tmp_path / "new").exists()
    monkeypatch.setattr(os, "fsync", real_fsync)  # space freed: the same folder takes the run
    assert cnnkit.train(report=False, epochs=1, out=str(tmp_path / "mine")).summary.epochs == 1


def test_a_disk_that_fills_during_training_keeps_a_resumable_run(tmp_path, monkeypatch):
    import safetensors.torch

    import cnnkit.training.checkpoint

    writes = []

    def fills_up(tensors, filename, metadata=None):
        writes.append(filename)
        if len(writes) > 3:  # the fourth checkpoint finds the disk full
            raise safetensors.SafetensorError("No space left on device")
        safetensors.torch.save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(cnnkit.training.checkpoint, "save_file", fills_up)
    with pytest.raises(
        CnnkitError,
        match=r"checkpoint.safetensors: No space left on device; the previous version "
        r".* once there is space, resume with: cnnkit train --resume",
    ):
        cnnkit.train(report=False, model="simplecnn", epochs=3, checkpoint_every=20, out=str(tmp_path / "run"))
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "run").iterdir())  # no half files left
    monkeypatch.undo()
    run = cnnkit.resume(tmp_path / "run")
    assert run.summary.epochs == 3 and run.summary.test_accuracy > 0.8


def small_folder(root, per_class: int, start: int = 0):
    from conftest import save_image, shape_image

    rng = np.random.default_rng(start)
    for label in ("bar", "ring"):
        for i in range(start, start + per_class):
            save_image(root / label / f"{i}.png", shape_image(label, 16, rng))
    return root


def test_a_run_refuses_data_that_changed_since_it_trained(tmp_path):
    folder = small_folder(tmp_path / "shapes", 30)
    run = cnnkit.train(report=False, data=str(folder), model="small-cnn", epochs=2, out=str(tmp_path / "run"))
    assert cnnkit.load(run.dir).evaluate()["test_accuracy"] == pytest.approx(run.summary.test_accuracy)
    small_folder(folder, 5, start=100)  # new images: the old test split would now mix with training images
    with pytest.raises(
        CnnkitError,
        match=r"the data changed since this run was trained \(train/val/test images "
        r"then 44/4/12, now 50/6/14.*its test split no longer matches",
    ):
        cnnkit.load(run.dir).evaluate()
    (run.dir / "summary.json").unlink()  # as a run stopped during its test leaves it: one to resume
    with pytest.raises(CnnkitError, match="the data changed .* the checkpoint in .* no longer matches"):
        cnnkit.resume(run.dir)


def test_a_checkpoint_of_another_model_is_refused_by_name(tmp_path):
    first = cnnkit.train(report=False, epochs=1, out=str(tmp_path / "a"))
    other = cnnkit.train(report=False, epochs=1, model="small-cnn", image_size=16, out=str(tmp_path / "b"))  # same data
    shutil.copy(other.dir / "checkpoint.safetensors", first.dir / "checkpoint.safetensors")
    (first.dir / "summary.json").unlink()  # as a run stopped during its test leaves it: one to resume
    with pytest.raises(
        CnnkitError,
        match="was written for another model or preprocessing \\(model: 'small-cnn' there, 'fastcnn-small' here",
    ):
        cnnkit.resume(first.dir)


def test_a_fine_tuning_run_resumes_after_its_source_is_gone(tmp_path):
    source = cnnkit.train(report=False, epochs=1, out=str(tmp_path / "source"))
    tuning = dict(report=False, init_from=str(source.dir), epochs=2)
    whole = cnnkit.train(**tuning, out=str(tmp_path / "whole"))
    with pytest.raises(Stop):
        cnnkit.train(**tuning, out=str(tmp_path / "tuned"), callbacks=[StopAt(epoch=2, step=1)])
    shutil.rmtree(source.dir)
    assert cnnkit.resume(tmp_path / "tuned").summary.test_accuracy == pytest.approx(whole.summary.test_accuracy)


def test_a_finished_run_is_not_resumed_and_the_refusal_says_what_to_do_instead(tmp_path):
    run = cnnkit.train(report=False, model="simplecnn", epochs=1, out=str(tmp_path / "run"))
    with pytest.raises(CnnkitError, match=r"already finished .*nothing to resume: `cnnkit eval .*--init-from"):
        cnnkit.resume(run.dir)
    assert len(metrics_without_times(run.dir)) == 1  # no "epoch 2 of 1"


def test_edits_to_config_yaml_are_said_and_ignored_on_resume(tmp_path, capsys):
    settings = dict(report=False, model="simplecnn", epochs=2)
    reference = cnnkit.train(**settings, out=str(tmp_path / "reference")).dir
    with pytest.raises(Stop):
        cnnkit.train(**settings, out=str(tmp_path / "run"), callbacks=[StopAt(epoch=2, step=1)])
    config = tmp_path / "run" / "config.yaml"
    written = config.read_text()
    config.write_text(written.replace("epochs: 2", "epochs: 302").replace("\nlr: ", "\nlr: 5.0 #"))
    capsys.readouterr()
    cnnkit.resume(tmp_path / "run")
    said = capsys.readouterr().out
    assert "these edits are ignored" in said and "epochs: 302 (the run's: 2)" in said and "lr: 5.0 (the run's" in said
    assert_identical(tmp_path / "run", reference)  # trained as it started: 2 epochs at its own rate
    assert config.read_text() == written  # and config.yaml repeats that run again


def test_data_paths_expand_the_home_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    small_folder(tmp_path / "photos", 10)
    run = cnnkit.train(report=False, data="~/photos", model="small-cnn", epochs=1, out=str(tmp_path / "run"))
    assert run.config.data == str((tmp_path / "photos").resolve())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return cnnkit.train(report=False, epochs=1, out=str(tmp_path_factory.mktemp("finished") / "run")).dir


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda info: info.pop("classes"), "'classes' is missing"),
        (lambda info: info.update(image_size="8"), "'image_size' is missing or not a int"),
        (lambda info: info.update(mean=[0.1, 0.2]), "mean must hold 1 number"),
        (lambda info: info.update(std=[0.0]), "std must be positive"),
        (lambda info: info.update(classes=["a", "a"]), "two or more different names"),
    ],
)
def test_a_tampered_model_json_is_refused_with_what_is_wrong(finished, tmp_path, change, message):
    import json

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    info = json.loads((run / "model.json").read_text())
    change(info)
    (run / "model.json").write_text(json.dumps(info))
    (run / "summary.json").unlink()  # as a run stopped during its test leaves it: one to resume
    for use in (cnnkit.load, cnnkit.resume):
        with pytest.raises(CnnkitError, match=f"not a valid cnnkit model.json \\(.*{message}"):
            use(run)


def test_weights_of_another_dtype_are_refused(finished, tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    half = {k: v.half() for k, v in load_file(str(run / "weights.safetensors")).items()}
    save_file(half, str(run / "weights.safetensors"))
    with pytest.raises(CnnkitError, match="saved as torch.float16, model has torch.float32"):
        cnnkit.load(run)


def test_a_checkpoint_with_a_crafted_layout_is_refused_before_use(finished, tmp_path):
    import json

    from safetensors.torch import save_file

    layouts = {
        "deep": '{"list": [' * 5000 + '{"value": 1}' + "]}" * 5000,  # nesting far past any training state
        "deep-enough": '{"list": [' * 40 + '{"value": 1}' + "]}" * 40,
        "odd": json.dumps({"dict": [[["not", "a", "key"], {"value": 1}]]}),
        "object": json.dumps({"dict": [["model", {"value": {"x": 1}}]]}),
        "parts": json.dumps({"dict": [["model", {"dict": []}]]}),  # a valid layout, but not a whole state
    }
    for name, layout in layouts.items():
        path = tmp_path / f"{name}.safetensors"
        save_file({"t0": torch.zeros(1)}, str(path), metadata={"format": "cnnkit-checkpoint/1", "layout": layout})
        with pytest.raises(CnnkitError, match="not a readable cnnkit checkpoint"):
            load_checkpoint(path, cnnkit.training.checkpoint.RUN_PARTS)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b]\n",
            "uses YAML anchors or aliases",
        ),
        ("epochs: 1\n" + "# padding\n" * 10000, "is over 64 KiB"),
    ],
)
def test_config_files_are_read_with_limits(tmp_path, text, message):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(CnnkitError, match=message):
        cnnkit.TrainConfig.from_yaml(tmp_path / "c.yaml")


def test_weights_holding_nan_are_refused_not_used_to_predict(finished, tmp_path):
    from safetensors.torch import save_file

    run = tmp_path / "run"
    shutil.copytree(finished, run)
    weights = load_file(str(run / "weights.safetensors"))
    weights["head.weight"][0, 0] = float("nan")
    save_file(weights, str(run / "weights.safetensors"))
    with pytest.raises(CnnkitError, match="head.weight holds NaN or infinite values"):
        cnnkit.load(run)
