"""Running initbench as a user does (a subprocess in its own folder) and real local services: an
`mlflow server` on 127.0.0.1 and a free port, started and stopped by its PID. For the test suite and the
scripts (benchmarks), as hydra.test_utils serves Hydra's; nothing here runs at import."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mlflow.tracking import MlflowClient

from initbench.run import PARENT_ENV, SWEEP_ENV
from initbench.store import open_client
from initbench.tracking import PARENT_TAG

ROOT = Path(__file__).resolve().parents[1]  # the checkout: on PYTHONPATH, its tests/ package imports (tests.failing)
# No telemetry: the only network traffic of these runs goes to 127.0.0.1.
QUIET = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """Stop a process started with start_new_session=True, and what it spawned, by its own PID
    (its process group id is its PID): SIGTERM, wait, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            break
        except subprocess.TimeoutExpired:
            continue
    proc.wait()


@contextmanager
def mlflow_server(root: Path, startup_s: float = 120.0) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port with a SQLite backend store and a local artifact
    root under `root`; yields its URI once /health answers, and stops it by its PID on exit.
    One worker and no job execution keep it near 0.5 GB."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--default-artifact-root", str(root / "artifacts"), "--workers", "1"]
    env = {**os.environ, **QUIET, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(root / "server.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root,
                            start_new_session=True)
    try:
        wait_healthy(proc, uri, root / "server.log", startup_s)
        yield uri
    finally:
        stop_group(proc)
        log.close()


def wait_healthy(proc: subprocess.Popen, uri: str, log: Path, startup_s: float = 120.0) -> None:
    """Wait until the MLflow server `proc` answers `uri`/health; raise with the tail of its `log` if
    it exits first or does not answer in startup_s."""
    deadline = time.monotonic() + startup_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the MLflow server exited with {proc.returncode}:\n" + log.read_text()[-3000:])
        try:
            with urllib.request.urlopen(uri + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the MLflow server on {uri} did not answer /health in {startup_s:.0f} s:\n"
                               + log.read_text()[-3000:])
        time.sleep(0.5)


def initbench_command(*args: str) -> list[str]:
    """`python -m initbench ARGS` on the CPU (the override goes last: Hydra's flags such as -m first)."""
    return [sys.executable, "-m", "initbench", *args, "trainer.device=cpu"]


def initbench_env(cwd: Path) -> dict[str, str]:
    """The environment of a `python -m initbench` job: offline data under cwd, the repo importable
    (tests.failing), no inherited sweep id, no telemetry."""
    env = {**os.environ, **QUIET, "INITBENCH_DATA_DIR": str(cwd / "data"), "PYTHONPATH": str(ROOT)}
    env.pop(SWEEP_ENV, None)
    env.pop(PARENT_ENV, None)
    return env


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m initbench` the way a user does, in `cwd`, on the CPU."""
    return subprocess.run(initbench_command(*args), cwd=cwd, env=initbench_env(cwd), capture_output=True,
                          text=True, timeout=timeout)


def all_runs_in(uri: str, experiment: str) -> list:
    """Every run of `experiment`: the jobs' and the sweeps' parent runs."""
    client = open_client(uri)  # a new SQLite store: made under the lock a job takes, never raced
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


def runs_in(uri: str, experiment: str) -> list:
    """The jobs' runs of `experiment` (not the sweeps' parent runs)."""
    return [r for r in all_runs_in(uri, experiment) if PARENT_TAG not in r.data.tags]


def parent_runs_in(uri: str, experiment: str) -> list:
    return [r for r in all_runs_in(uri, experiment) if PARENT_TAG in r.data.tags]


def history_steps(uri: str, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in MlflowClient(uri).get_metric_history(run_id, key))
