"""Stopping on request: Ctrl-C and SIGTERM end a run cleanly, with a checkpoint and a way to resume."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from cnnkit.core.errors import CnnkitError

ECHO_SECONDS = 2.0  # a second stop signal sooner than this after the first is the same request, passed on


class TrainingInterrupted(CnnkitError):
    """Ctrl-C or SIGTERM: a checkpoint was written and the run can be resumed."""


class TrainingDiverged(CnnkitError):
    """The loss, the weights or the model's outputs went NaN or infinite: the run stops, keeping its last good
    checkpoint, with the same advice wherever it was noticed."""

    def __init__(self, what: str, bf16: bool):
        tries = "Lower --lr (e.g. by 10x), add --warmup" + (", or try --precision fp32" if bf16 else "")
        super().__init__(f"{what}; the last good checkpoint is kept. {tries}")


@contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Ctrl-C and SIGTERM ask the loop to checkpoint and stop after the current step, instead of
    killing it mid-write; a second Ctrl-C stops at once. Off the main thread, where Python allows no
    signal handlers, the event is still returned, for the caller to set."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    asked = [0.0]

    def ask(signum, frame):
        # torchrun passes a terminal's Ctrl-C on to processes that had it already: an echo, not a second press
        if stop.is_set() and time.monotonic() - asked[0] > ECHO_SECONDS:
            raise KeyboardInterrupt
        if not stop.is_set():
            asked[0] = time.monotonic()
        stop.set()

    previous = {sig: signal.signal(sig, ask) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
