"""What only the tests need beside initbench.testing (running initbench as a user does, local services):
the test config folder, the tiny-run overrides, a skip for a missing launcher plugin, the sizes of the
stress cases and a job started in the background."""

import importlib.util
import math
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from initbench.testing import ROOT, initbench_command, initbench_env

TEST_CONF = ROOT / "tests" / "conf"  # model=exploding: training raises when seed == 1
TINY = ["dataset.train_size=128", "trainer.epochs=1", "trainer.progress=false"]
BATCH = 128  # conf/trainer/default.yaml


def needs_plugin(name: str):
    """Skip unless Hydra's `name` launcher plugin is installed (the `launchers` extra)."""
    try:
        found = importlib.util.find_spec(f"hydra_plugins.hydra_{name}_launcher") is not None
    except ModuleNotFoundError:  # no hydra_plugins package at all
        found = False
    return pytest.mark.skipif(not found, reason=f"hydra-{name}-launcher is not installed: "
                                                "pip install -e '.[launchers]'")


@dataclass(frozen=True)
class StressSize:
    """The sizes of the stress cases (tests marked `stress`), chosen with `pytest --stress-size=NAME`:
    `small` keeps the default suite lean, `full` gives docs/reliability.md's figures."""

    name: str
    jobs: int  # joblib jobs logging at once to one server
    epochs: int  # epochs of each of them
    train_size: int  # digits examples of those jobs and of the job killed with SIGKILL
    kill_epochs: int  # epochs of the job killed with SIGKILL ...
    kill_after: int  # ... once it has flushed this many
    race_pairs: int  # pairs of processes creating one new SQLite store at the same moment
    bad_inputs: int  # how many of the bad overrides run (test_edges.BAD_INPUTS, a mix first)
    long_epochs: int  # epochs of the long runs that are interrupted (never reached)

    def steps_per_epoch(self, train_size: int | None = None) -> int:
        return math.ceil((train_size or self.train_size) / BATCH)


STRESS_SIZES = {
    "small": StressSize("small", jobs=2, epochs=1, train_size=256, kill_epochs=40, kill_after=1, race_pairs=2,
                        bad_inputs=4, long_epochs=500),
    "full": StressSize("full", jobs=4, epochs=5, train_size=1024, kill_epochs=40, kill_after=20, race_pairs=20,
                       bad_inputs=15, long_epochs=5000),
}


class Job:
    """`python -m initbench ARGS` started in the background in `cwd`, its stdout and stderr in files there."""

    def __init__(self, args: list[str], cwd: Path, name: str = "job", new_session: bool = False):
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        env = {**initbench_env(cwd), "PYTHONUNBUFFERED": "1"}  # its lines as they are printed
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(initbench_command(*args), cwd=cwd, env=env, stdout=out, stderr=err,
                                         start_new_session=new_session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.out_path.read_text(errors="replace") + self.err_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGKILL it unless it has ended."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def wait_until(what: str, predicate: Callable, timeout: float = 180, job: Job | None = None, poll: float = 0.1):
    """predicate()'s first truthy value; fails the test if `job` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if job is not None and job.proc.poll() is not None:
            pytest.fail(f"{what}: the job exited with {job.proc.returncode} first:\n{job.output()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f} s" + (f":\n{job.output()[-3000:]}" if job else ""))
        time.sleep(poll)
