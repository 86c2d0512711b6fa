"""Running initbench as a user does (a subprocess in its own folder) and real local services: an
`mlflow server` on 127.0.0.1 and a free port, and a PostgreSQL server on a unix socket, each started
and stopped by its PID. For the test suite and the
scripts (benchmarks), as hydra.test_utils serves Hydra's; nothing here runs at import."""

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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
def mlflow_server(root: Path, startup_s: float = 120.0, backend_store: str | None = None) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 and a free port with a local artifact root under `root` and
    `backend_store` (default: a SQLite file under `root`); yields its URI once /health answers, and
    stops it by its PID on exit. One worker and no job execution keep it near 0.5 GB."""
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", backend_store or f"sqlite:///{root / 'mlflow.db'}",
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


def postgres_binaries() -> Path | None:
    """The folder of Debian's PostgreSQL server programs (initdb, postgres, createdb), the newest version;
    None where the server is not installed (apt-get install postgresql)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"), key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres") or shutil.which("initdb")
    return Path(on_path).resolve().parent if on_path else None


@dataclass(frozen=True)
class Postgres:
    """A running PostgreSQL server, reached by its unix socket in `folder` as the superuser `postgres`."""

    folder: Path
    binaries: Path

    def create_database(self, name: str) -> str:
        """Create database `name`; its SQLAlchemy URI (what tracking.uri and --backend-store-uri take)."""
        created = subprocess.run([self.binaries / "createdb", "-h", self.folder, "-U", "postgres", name],
                                 capture_output=True, text=True)
        if created.returncode:
            raise RuntimeError(f"createdb {name}: {created.stderr.strip()}")
        return f"postgresql://postgres@/{name}?host={self.folder}"


@contextmanager
def postgres_server(startup_s: float = 60.0) -> Iterator[Postgres]:
    """A new PostgreSQL cluster in a new folder under the system's temp dir, listening on a unix socket
    in that folder only (no TCP), trust authentication for it; yields it once it accepts connections,
    and on exit stops the server by its PID (SIGINT: PostgreSQL's fast shutdown) and removes the folder.
    The server refuses to run as root: under root it runs as Debian's `postgres` account, which owns
    the folder."""
    binaries = postgres_binaries()
    if binaries is None:
        raise RuntimeError("PostgreSQL's server programs were not found: apt-get install postgresql")
    root = os.geteuid() == 0
    account = pwd.getpwnam("postgres") if root else pwd.getpwuid(os.geteuid())
    as_account = {"user": account.pw_uid, "group": account.pw_gid} if root else {}
    folder = Path(tempfile.mkdtemp(prefix="initbench-pg-"))
    os.chown(folder, account.pw_uid, account.pw_gid)
    data, log_path = folder / "data", folder / "server.log"
    subprocess.run([binaries / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"],
                   check=True, capture_output=True, cwd=folder, **as_account)
    log = open(log_path, "w")
    os.chown(log_path, account.pw_uid, account.pw_gid)
    proc = subprocess.Popen([binaries / "postgres", "-D", data, "-k", folder, "-c", "listen_addresses=",
                             "-c", "fsync=off", "-c", "max_connections=200"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder, start_new_session=True, **as_account)
    try:
        deadline = time.monotonic() + startup_s
        while subprocess.run([binaries / "pg_isready", "-q", "-h", folder, "-U", "postgres"]).returncode:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start (exit {proc.poll()}):\n" + log_path.read_text()[-3000:])
            time.sleep(0.3)
        yield Postgres(folder, binaries)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: roll back open transactions, then exit
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


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
