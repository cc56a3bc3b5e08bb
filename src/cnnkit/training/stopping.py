"""Stopping on request: Ctrl-C and SIGTERM end a run cleanly, with a checkpoint and a way to resume."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cnnkit.errors import CnnkitError


class TrainingInterrupted(CnnkitError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed."""


class TrainingDiverged(CnnkitError):
    """The loss, the weights or the model's outputs went NaN or infinite: the run stops, keeping its last good
    checkpoint, with the same advice wherever it was noticed."""

    def __init__(self, what: str):
        super().__init__(
            f"{what}; the last good checkpoint is kept. Lower --lr (e.g. by 10x), add --warmup, or try --precision fp32"
        )


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM ask the loop to checkpoint and stop after the current step, instead of
    killing it mid-write; a second Ctrl-C stops at once. Off the main thread, where Python allows no
    signal handlers, the event is still returned, for the caller to set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def ask(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
