"""Several processes started from Python (a notebook, a script): `cnnkit.train(..., processes=N)` starts them
with torch's own elastic launcher, as `torchrun --standalone --nproc-per-node N` would, on this machine."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from cnnkit.core.errors import CnnkitError
from cnnkit.core.machine import distributed

NOT_RECORDED = "To enable traceback"  # torch's message for a process that ended with no error recorded


def check_launch(processes: int) -> None:
    if not isinstance(processes, int) or processes < 1:
        raise CnnkitError(f"processes={processes!r} must be a whole number of processes, 1 or more")
    if distributed():
        raise CnnkitError("processes= starts a run's processes, so it cannot be given inside one (torchrun)")


def launch_train(processes: int, train_process: Callable[..., str | None], *arguments: Any) -> Path:
    """`train_process(*arguments)` in `processes` processes of this machine; returns the run folder the main
    one wrote. The function (a module's own, decorated with torch's `record`) and its arguments travel to each
    process by pickling."""
    launch = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=processes,
        run_id=uuid.uuid4().hex,
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port of this machine's, as torchrun --standalone takes
        max_restarts=0,  # a failed run is reported, not started again from scratch
        monitor_interval=0.2,
        start_method="spawn",  # a fresh interpreter each: fork would copy this process's threads and CUDA state
    )
    try:
        results = elastic_launch(launch, train_process)(*arguments)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
        reason = message.strip().removeprefix(f"{CnnkitError.__name__}: ")
        if not reason or reason.startswith(NOT_RECORDED):  # it died before it could train: most often, this
            reason = (  # script ran again in it, as each process imports the script it was started from
                "it stopped before training (its output is above); in a script, call cnnkit.train(processes=...) "
                'under `if __name__ == "__main__":`, since each process imports the script anew'
            )
        raise CnnkitError(f"process {rank} of {processes} failed: {reason}") from None
    return Path(results[0])


def share_cores() -> None:
    """As torchrun does: the processes of one machine share its cores, rather than each taking them all."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
