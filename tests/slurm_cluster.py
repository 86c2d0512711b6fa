"""A real one-node SLURM cluster on 127.0.0.1 for the tests, from Debian's packages (slurm-wlm,
slurmdbd, munge, mariadb-server): munged on a unix socket, MariaDB with no TCP (its socket only),
slurmdbd (accounting: `sacct`, which submitit polls for job states), slurmctld and slurmd, all in a new
folder under the system's temp dir, each started in the foreground and stopped by its PID, last first.

    with slurm_cluster() as cluster:      # SLURM_CONF is set for this process and its children
        subprocess.run(["sinfo"])         # one node, this machine's CPUs and memory, partition `debug`

slurmd starts jobs as their user, so it needs root: `missing()` says why a cluster cannot run here.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from initbench.testing import free_port

PROGRAMS = {"munged": "munge", "mungekey": "munge", "slurmctld": "slurmctld", "slurmd": "slurmd",
            "slurmdbd": "slurmdbd", "sacct": "slurm-client", "mariadbd": "mariadb-server",
            "mariadb-install-db": "mariadb-server"}
PARTITION = "debug"
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])  # daemons live in sbin


def program(name: str) -> str | None:
    return shutil.which(name, path=SEARCH_PATH)


def missing() -> str | None:
    """Why a cluster cannot start here (not root, or which Debian packages to install); None if it can."""
    if os.geteuid() != 0:
        return "a SLURM cluster's slurmd must run as root"
    absent = sorted({package for name, package in PROGRAMS.items() if program(name) is None})
    return f"SLURM is not installed: apt-get install {' '.join(absent)}" if absent else None


@dataclass(frozen=True)
class Cluster:
    folder: Path
    env: dict[str, str]  # SLURM_CONF: what the SLURM commands of a test need

    def command(self, *args: str) -> str:
        """stdout of a SLURM command (sinfo, squeue, sacct, scancel, ...) on this cluster."""
        return subprocess.run(args, capture_output=True, text=True, check=True, env={**os.environ, **self.env},
                              timeout=60).stdout

    def states(self) -> dict[str, str]:
        """SLURM job id (array jobs: ID_TASK) -> state, of every job sacct knows (not its steps)."""
        out = self.command("sacct", "-a", "-X", "-n", "-P", "-o", "JobID,State")
        return dict(line.split("|")[:2] for line in out.splitlines() if line)


def _wait(what: str, ready, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{what} did not start (exit {proc.poll()}):\n{tail}")
        time.sleep(0.3)


@contextmanager
def _daemon(args: list, log: Path, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """A daemon run in the foreground, its output appended to `log`; SIGTERM by its PID on exit (SIGKILL
    after 20 s)."""
    with open(log, "a") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env},
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def _slurm_conf(folder: Path, ports: dict[str, int]) -> str:
    cpus = os.cpu_count() or 1
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
    return f"""ClusterName=initbench
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports['slurmctld']}
SlurmdPort={ports['slurmd']}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports['slurmdbd']}
AccountingStoragePass={folder}/munge.socket
MpiDefault=none
ReturnToService=2
KillWait=5
OverTimeLimit=0
MinJobAge=600
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


def _slurmdbd_conf(folder: Path, port: int) -> str:
    return f"""AuthType=auth/munge
AuthInfo=socket={folder}/munge.socket
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={port}
SlurmUser=root
LogFile={folder}/slurmdbd.log
PidFile={folder}/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=root
StorageLoc=slurm_acct_db
"""


@contextmanager
def slurm_cluster() -> Iterator[Cluster]:
    """Start the cluster, wait until sinfo shows its node idle, yield it; stop and remove it on exit."""
    folder = Path(tempfile.mkdtemp(prefix="initbench-slurm-"))
    ports = {name: free_port() for name in ("slurmctld", "slurmd", "slurmdbd")}
    for sub in ("state", "spool", "db"):
        (folder / sub).mkdir()
    (folder / "slurm.conf").write_text(_slurm_conf(folder, ports))
    (folder / "slurmdbd.conf").write_text(_slurmdbd_conf(folder, ports["slurmdbd"]))
    (folder / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a config others can read
    env = {"SLURM_CONF": str(folder / "slurm.conf"), "MYSQL_UNIX_PORT": str(folder / "mysql.sock")}
    cluster = Cluster(folder, {"SLURM_CONF": env["SLURM_CONF"]})
    log = folder / "daemons.log"
    previous = os.environ.get("SLURM_CONF")
    try:
        with ExitStack() as stack:
            subprocess.run([program("mungekey"), "--create", f"--keyfile={folder}/munge.key"], check=True,
                           capture_output=True)
            munged = stack.enter_context(_daemon([
                program("munged"), "--foreground", "--force", f"--socket={folder}/munge.socket",
                f"--key-file={folder}/munge.key", f"--pid-file={folder}/munged.pid", f"--seed-file={folder}/munge.seed",
                f"--log-file={folder}/munged.log"], log, env))
            _wait("munged", (folder / "munge.socket").exists, munged, log)
            subprocess.run([program("mariadb-install-db"), "--no-defaults", f"--datadir={folder}/db", "--user=root",
                            "--auth-root-authentication-method=normal", "--skip-test-db"], check=True,
                           capture_output=True)
            mariadb = stack.enter_context(_daemon([
                program("mariadbd"), "--no-defaults", f"--datadir={folder}/db", f"--socket={folder}/mysql.sock",
                "--skip-networking", "--user=root", f"--pid-file={folder}/mariadb.pid"], log, env))
            _wait("MariaDB", (folder / "mysql.sock").exists, mariadb, log)
            slurmdbd = stack.enter_context(_daemon([program("slurmdbd"), "-D"], log, env))
            _wait("slurmdbd", lambda: "slurmdbd version" in _text(folder / "slurmdbd.log"), slurmdbd, log)
            slurmctld = stack.enter_context(_daemon([program("slurmctld"), "-D", "-i"], log, env))
            slurmd = stack.enter_context(_daemon([program("slurmd"), "-D"], log, env))
            _wait("slurmd", lambda: _idle(cluster), slurmd, log)
            if slurmctld.poll() is not None:
                raise RuntimeError(f"slurmctld exited:\n{_text(folder / 'slurmctld.log')[-3000:]}")
            os.environ["SLURM_CONF"] = env["SLURM_CONF"]  # for submitit's sbatch and sacct in the jobs
            yield cluster
    finally:
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
        shutil.rmtree(folder, ignore_errors=True)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _idle(cluster: Cluster) -> bool:
    try:
        return cluster.command("sinfo", "-h", "-o", "%T").split() == ["idle"]
    except subprocess.CalledProcessError:
        return False
