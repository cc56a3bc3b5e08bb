"""Rank-aware runs: in a run of several processes only the main one prints, writes and names the run
folder. Two real processes in a gloo process group on this CPU, started as torchrun would start them."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import cnnkit
from cnnkit import CnnkitError

PROCESS = textwrap.dedent("""
    import os, sys
    import torch.distributed as dist
    import cnnkit
    rank, port = int(sys.argv[1]), sys.argv[2]
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2")
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    run = cnnkit.train(epochs=2, checkpoint_every=10)
    if rank:
        print(run.dir, file=sys.stderr)  # where rank 1 found the folder (only read by the test)
    dist.destroy_process_group()
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_only_the_main_process_prints_writes_and_names_the_run_folder(tmp_path):
    port, script = free_port(), tmp_path / "process.py"
    script.write_text(PROCESS)
    cwds = [tmp_path / f"rank{rank}" for rank in (0, 1)]
    processes = []
    for rank, cwd in enumerate(cwds):
        cwd.mkdir()
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script), str(rank), str(port)],
                cwd=cwd,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
    (out0, err0), (out1, err1) = (p.communicate(timeout=300) for p in processes)
    assert [p.returncode for p in processes] == [0, 0], err0 + err1
    assert "test accuracy" in out0 and "epoch 2/2" in out0
    assert out1 == ""  # rank 1 printed nothing ...
    (run_dir,) = (cwds[0] / "runs").iterdir()
    assert Path(err1.strip().splitlines()[-1]) == run_dir.resolve()  # ... was told the main process's folder
    assert list(cwds[1].iterdir()) == []  # ... and wrote nothing
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.8
    assert {p.name for p in run_dir.iterdir()} == {
        "config.yaml",
        "model.json",
        "metrics.csv",
        "weights.safetensors",
        "summary.json",
        "checkpoint.safetensors",
        "report.html",
        "plots",
    }


def test_torchrun_variables_without_a_process_group_are_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(CnnkitError, match="process 1 of 2 .* does not train data-parallel yet"):
        cnnkit.train(out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
