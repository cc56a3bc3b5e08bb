"""Data-parallel runs: real processes started by torchrun (--standalone: no port to race for) on this CPU with
gloo, each test under a hard timeout that kills the whole process group. Two processes train exactly as one
process does, only the main one writes, a run killed with its launcher resumes exactly (with as many
processes, or another number), and stop signals and a dead process end every process."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import cnnkit
from cnnkit import CnnkitError
from cnnkit.training.checkpoint import load_checkpoint
from cnnkit.training.stopping import ECHO_SECONDS, stop_on_signals

SETTINGS = {  # fp32: the two runs then differ only in the order of float sums
    "model": "simplecnn",
    "epochs": 6,
    "batch_size": 32,
    "precision": "fp32",
    "rotate": 10.0,
    "erase": 0.5,
    "checkpoint_every": 5,
    "report": False,
}
TRAIN = textwrap.dedent("""
    import json, sys
    import torch.distributed as dist
    from safetensors.torch import save_file
    import cnnkit
    from cnnkit.models import unwrap

    class KeepFinalWeights(cnnkit.Callback):  # each process's own weights at the end of training
        def on_train_end(self, trainer):
            weights = {k: v.contiguous() for k, v in unwrap(trainer.model).state_dict().items()}
            save_file(weights, f"{sys.argv[2]}/rank{dist.get_rank()}.safetensors")

    cnnkit.train(callbacks=[KeepFinalWeights()], **json.loads(sys.argv[1]))
""")
LIMIT = 180  # seconds for any one launch, after which its whole process group is killed


STANDALONE = ("--standalone", "--nproc-per-node", "2")  # one machine, 2 processes


def torchrun(
    args: list[str], cwd: Path, logs: Path | None = None, place: tuple[str, ...] = STANDALONE
) -> subprocess.Popen:
    """torchrun with 2 processes (or as `place` says), in a session of its own; with `logs`, each process's output
    goes to its own files there."""
    launcher = [sys.executable, "-m", "torch.distributed.run", *place]
    if logs:
        launcher += ["--log-dir", str(logs), "--redirects", "3"]
    return subprocess.Popen(
        [*launcher, *args], cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )


def finish(process: subprocess.Popen, limit: float = LIMIT) -> str:
    try:
        return process.communicate(timeout=limit)[0]
    except subprocess.TimeoutExpired:
        for pid in [*workers(process), process.pid]:
            os.kill(pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"torchrun did not end within {limit}s: a process hung")


def wait_for(path: Path, lines: int = 0) -> None:
    """Until `path` is there, holding at least `lines` whole lines (a CSV's header and rows)."""
    deadline = time.monotonic() + LIMIT
    while time.monotonic() < deadline:
        if path.is_file() and (not lines or path.read_bytes().count(b"\n") >= lines):
            return
        time.sleep(0.02)


def workers(launcher: subprocess.Popen) -> list[int]:
    """The processes torchrun started (in sessions of their own: a signal to its group misses them)."""
    children = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in children]


def rank_output(logs: Path, rank: int, stream: str) -> str:
    (path,) = logs.glob(f"*/attempt_0/{rank}/{stream}.log")
    return path.read_text()


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    """The digits trained by two processes, each one's final weights kept beside the run folder."""
    cwd = tmp_path_factory.mktemp("two")
    script = cwd / "train.py"
    script.write_text(TRAIN)
    output = finish(torchrun([str(script), json.dumps(SETTINGS), str(cwd)], cwd, logs=cwd / "logs"))
    assert "ChildFailedError" not in output, output
    return cwd


def test_two_processes_train_as_one_process_does_and_only_the_main_one_writes(two_process_run, tmp_path):
    cwd = two_process_run
    (run_dir,) = (cwd / "runs").iterdir()  # one run folder, named by the main process
    assert "test accuracy" in rank_output(cwd / "logs", 0, "stderr") + rank_output(cwd / "logs", 0, "stdout")
    assert rank_output(cwd / "logs", 1, "stdout") == "" and rank_output(cwd / "logs", 1, "stderr") == ""
    rank0, rank1 = weights(cwd / "rank0.safetensors"), weights(cwd / "rank1.safetensors")
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)  # DDP kept both processes' weights the same
    one = cnnkit.train(out=str(tmp_path / "one"), **SETTINGS)  # the same global batch, in one process
    assert largest_difference(weights(run_dir / "weights.safetensors"), weights(one.dir / "weights.safetensors")) < 1e-4
    two = json.loads((run_dir / "summary.json").read_text())
    assert two["test_accuracy"] > 0.9
    assert abs(two["test_accuracy"] - one.summary.test_accuracy) <= 0.005
    assert two["num_test_images"] == one.summary.num_test_images == 359  # each test image counted once
    with open(run_dir / "metrics.csv") as f:
        assert len(f.readlines()) == 1 + SETTINGS["epochs"]


def test_a_run_killed_with_its_launcher_resumes_exactly_with_any_number_of_processes(two_process_run, tmp_path):
    killed = tmp_path / "killed"
    launcher = torchrun(["-m", "cnnkit", "train", *flags(SETTINGS), "--out", str(killed)], tmp_path)
    wait_for(killed / "checkpoint.safetensors")
    for pid in [*workers(launcher), launcher.pid]:  # the whole job at once, mid-run, as a scheduler kills it
        os.kill(pid, signal.SIGKILL)
    launcher.communicate()
    assert (killed / "checkpoint.safetensors").is_file() and not (killed / "summary.json").exists()
    again = tmp_path / "again"
    shutil.copytree(killed, again)
    output = finish(torchrun(["-m", "cnnkit", "train", "--resume", str(killed)], tmp_path))
    assert "resuming" in output and "test accuracy" in output, output
    uninterrupted = weights(next((two_process_run / "runs").iterdir()) / "weights.safetensors")
    assert largest_difference(weights(killed / "weights.safetensors"), uninterrupted) < 1e-6
    cnnkit.resume(again)  # one process takes the same global batches up, shared one way
    assert largest_difference(weights(again / "weights.safetensors"), uninterrupted) < 1e-4


@pytest.mark.timeout(150)  # three launches of about 10-20 s on 2 cores, each under LIMIT
def test_two_machines_on_loopback_make_one_run_that_one_process_resumes(tmp_path):
    """The two-machine command of docs/several-processes.md, both "machines" here: an agent each, in folders of
    their own, one process each, meeting at a c10d rendezvous on a free loopback port, writing to one shared --out."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    place = ("--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d")
    place += ("--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "loopback")
    out, epochs = tmp_path / "shared" / "run", 3
    machines = [tmp_path / "first", tmp_path / "second"]
    args = ["-m", "cnnkit", "train", *flags({**SETTINGS, "epochs": epochs}), "--out", str(out)]
    agents = []
    for cwd in machines:
        cwd.mkdir()
        agents.append(torchrun(args, cwd, place=place))
    wait_for(out / "metrics.csv", lines=2)  # epoch 1 done: stop the job in epoch 2, as a preemption does ...
    for agent in agents:
        agent.send_signal(signal.SIGTERM)  # ... with what a cluster sends each machine's launcher before it does
    stopped = "".join(finish(agent) for agent in agents)
    assert stopped.count("a checkpoint is saved. Resume with: cnnkit train --resume") == 1, stopped
    state = load_checkpoint(out / "checkpoint.safetensors")
    assert state["processes"] == 2 and state["rng"]["torch"].shape[0] == 2  # one job of 2, each one's random state
    assert not (out / "summary.json").exists()
    resumed = subprocess.run(  # one plain process, on the first machine alone
        [sys.executable, "-m", "cnnkit", "train", "--resume", str(out)],
        cwd=machines[0],
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=LIMIT,
    ).stdout
    assert "test accuracy" in resumed and "written by 2 processes and this run has 1 process" in resumed, resumed
    assert [p.name for p in (tmp_path / "shared").iterdir()] == ["run"]  # one run folder, in the shared --out
    assert all(not any(cwd.iterdir()) for cwd in machines)  # and no runs/ of either machine's own
    assert {"summary.json", "weights.safetensors", "metrics.csv"} <= {p.name for p in out.iterdir()}

    def said(output: str) -> list[int]:
        return [int(n) for n in re.findall(rf"^epoch (\d+)/{epochs} ", output, re.MULTILINE)]

    assert said(stopped)[:1] == [1], stopped  # the two machines said epoch 1 ...
    assert sorted(said(stopped) + said(resumed)) == list(range(1, epochs + 1)), stopped + resumed  # ... each once
    with open(out / "metrics.csv") as f:
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(1, epochs + 1))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == epochs and summary["num_test_images"] == 359 and summary["test_accuracy"] > 0.8


def test_a_process_that_dies_stops_the_others(tmp_path):
    out = tmp_path / "run"
    launcher = torchrun(["-m", "cnnkit", "train", *flags({**SETTINGS, "epochs": 500}), "--out", str(out)], tmp_path)
    wait_for(out / "checkpoint.safetensors")
    os.kill(workers(launcher)[-1], signal.SIGKILL)
    output = finish(launcher, limit=90)  # torchrun ends the other process: no hang
    assert launcher.returncode != 0 and "SIGKILL" in output
    assert (out / "checkpoint.safetensors").is_file() and not (out / "summary.json").exists()


def test_a_loss_gone_infinite_on_the_processes_stops_them_all_with_one_message(tmp_path):
    out = tmp_path / "run"
    settings = {**SETTINGS, "lr": 1e30, "optimizer": "sgd", "checkpoint_every": 0}
    output = finish(torchrun(["-m", "cnnkit", "train", *flags(settings), "--out", str(out)], tmp_path))
    # said once, by the main one ("(process 1)": torchrun's own lines name processes by PID, as "process 15047")
    assert output.count("NaN or infinite") == 1 and "(process 1)" not in output, output
    assert not (out / "summary.json").exists()


def test_processes_from_python_train_data_parallel_and_report_a_process_error(tmp_path):
    source = cnnkit.train(model="simplecnn", epochs=1, report=False, out=str(tmp_path / "source"))
    settings = {"init_from": str(source.dir), "freeze_epochs": 1, "epochs": 2, "report": False}  # head first, then all
    run = cnnkit.train(out=str(tmp_path / "run"), processes=2, **settings)
    assert run.dir == tmp_path / "run" and run.summary.test_accuracy > 0.85
    with pytest.raises(CnnkitError, match=r"process \d of 2 failed: --batch-size 63 is the global batch.*try 62 or 64"):
        cnnkit.train(batch_size=63, epochs=1, out=str(tmp_path / "odd"), processes=2)
    with pytest.raises(CnnkitError, match="processes=0 must be"):
        cnnkit.train(processes=0)


def test_a_script_starting_processes_without_a_main_guard_is_told_what_to_write(tmp_path):
    script = tmp_path / "train.py"  # as most tutorials' scripts are: each process that imports it runs it again
    script.write_text("import cnnkit\ncnnkit.train(model='simplecnn', epochs=1, report=False, processes=2)\n")
    result = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=LIMIT)
    assert result.returncode != 0
    assert result.stderr.strip().endswith('`if __name__ == "__main__":`, since each process imports the script anew')


def test_torchrun_variables_without_a_rendezvous_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(CnnkitError, match="process 1 of 2 .* MASTER_ADDR and MASTER_PORT are not: start every process"):
        cnnkit.train(out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_a_launcher_passing_on_ctrl_c_is_one_request_and_a_later_second_one_stops_at_once():
    with stop_on_signals() as stop:
        os.kill(os.getpid(), signal.SIGINT)  # the terminal's Ctrl-C ...
        os.kill(os.getpid(), signal.SIGINT)  # ... and torchrun passing it on: one request to stop
        assert stop.is_set()
        time.sleep(ECHO_SECONDS + 0.1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # pressed again: stop now
            time.sleep(1)


def flags(settings: dict) -> list[str]:
    given = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        given += [flag if value else f"--no-{flag[2:]}"] if isinstance(value, bool) else [flag, str(value)]
    return given
