"""SIGTERM treated as Ctrl-C, so that a job stopped either way ends its MLflow run KILLED at once.

Python stops on SIGINT with KeyboardInterrupt, which `finally` and `except` blocks see; on SIGTERM it
dies at once by default. Within `sigterm_as_interrupt()` SIGTERM raises KeyboardInterrupt too. A
sweep's parent process passes the signal on to its own child processes (a joblib launcher's workers)
first, by their PIDs, and gives them a moment to close their runs, so that none keeps training.
"""

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHILD_GRACE_S = 10.0  # how long a sweep's parent waits for its workers to close their runs


def child_pids(pid: int | None = None) -> list[int]:
    """The PIDs of the live children of `pid` (this process by default), read from Linux's /proc;
    empty where there is no /proc."""
    parent = os.getpid() if pid is None else pid
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if int(fields[1]) == parent and fields[0] != "Z":  # ppid, and not a zombie
            found.append(int(stat.parent.name))
    return found


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")


def _stop_children_then_interrupt(signum, frame) -> None:
    children = child_pids()
    for pid in children:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + CHILD_GRACE_S
    while children and time.monotonic() < deadline and set(children) & set(child_pids()):
        time.sleep(0.1)
    _interrupt(signum, frame)


def install(stop_children: bool = False):
    """Make SIGTERM raise KeyboardInterrupt in this process (first sending SIGTERM to its children and
    waiting up to CHILD_GRACE_S for them, if `stop_children`); returns the handler it replaced, for
    signal.signal to put back. Only the main thread can set a handler: elsewhere this does nothing
    and returns None."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _stop_children_then_interrupt if stop_children else _interrupt)


def stop_signals() -> list[signal.Signals]:
    """The signals that stop a training: SIGTERM; in a job submitit runs on SLURM also SIGUSR2, SLURM's
    warning hydra.launcher.signal_delay_s before the time limit. submitit's own handler for it raises
    an Exception wherever the job is, which the logging module swallows (seen); a KeyboardInterrupt
    passes every `except Exception`."""
    return [signal.SIGTERM] + ([signal.SIGUSR2] if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" else [])


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within: SIGTERM (and SLURM's SIGUSR2 warning, see stop_signals) raises KeyboardInterrupt, as SIGINT does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _interrupt) for sig in stop_signals()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
