"""Reliability figures: real `python -m initbench` processes against a tracking server and SQLite stores,
under parallel jobs, failures, bad inputs, races, signals and resumes; one table at the end.

    python scripts/stress.py                                  # every case: about 12 minutes on 2 CPU cores
    python scripts/stress.py --cases bad-inputs,interrupts    # a subset
    python scripts/stress.py --jobs 8 --epochs 10 --race-pairs 5

Every case runs `python -m initbench` the way a user does (a subprocess in its own temporary folder, on the
CPU, small configs) and checks what it left behind. Each prints its figures as it goes; at the end one
table says, per check, what was done, what came of it, and ok or FAIL. Cases (`--cases`, comma-separated):

- parallel: N jobs at once (hydra/launcher=joblib, n_jobs=N) logging to one `mlflow server`: every run
  finished, every metric history complete (train/loss per step and the per-epoch accuracies and losses
  counted against what the config implies, every other key against the same key of the other runs), no
  run or point lost or duplicated.
- failures: a sweep of 6 on the server (4 normal jobs, 1 whose model raises, 1 that diverges): 4 finished,
  1 failed with its error text, 1 diverged, a non-zero exit code; re-running it executes exactly the
  failed job and skips the other 5.
- sigkill: a job on the server killed with SIGKILL half-way: re-running it marks the stale run KILLED and
  completes a new one; the points the dead run flushed are still in the store, in whole epochs.
- bad-inputs: each bad override (BAD_INPUTS) refused before anything is written: exit status 2, a message
  naming the key and the value, no Python traceback, nothing in the folder but Hydra's outputs/. (Hydra
  1.3.8 ends its own composition errors, a wrong type or an unknown key without +, with status 1; see
  REFUSED_STATUS.)
- store-race: pairs of processes creating one new SQLite store at the same moment: every job finishes and
  the store is usable afterwards. `--race-mode light` (default) runs, per job, what a job does to the store
  (Tracker(...), a search for its config, start, an artifact, metrics, end) in a small Python process that
  waits at a barrier, so both hit the new store in the same instant; `--race-mode full` runs two real
  `python -m initbench` (about 3x slower).
- interrupts: SIGINT, then SIGTERM, to a long single run after its first flushed epoch: the run is KILLED
  (tag initbench.status=killed) within a few seconds, with every flushed epoch kept whole.
- sweep-sigterm: SIGTERM to the parent of a 2-job joblib sweep once both runs flushed an epoch: 20 s later
  none of the processes the sweep had started (read from /proc before the signal) is alive, and both runs
  are KILLED.
- resume: a 2-init x 2-seed sweep, one of its runs deleted, the same command again: the same sweep id, the
  deleted job re-run and the other 3 skipped, and `scripts/analyze.py --no-log` (the latest sweep by
  default) counts all 4 jobs.
- live-run: a long job A, and once it is RUNNING the same config in a second process B: B says `skip ...:
  run ... of this config is running now` and exits 0; A's run stays RUNNING and A keeps training (it is then
  stopped with SIGINT and ends KILLED by its own hand, never by B).

The server (127.0.0.1, a free port, SQLite backend store and local artifact root in the work folder) is
started only for the first three cases, and stopped by its PID. Exit status 0 when every check holds, 1 if
any fails. Run it from a clone with the dev and launchers extras installed: its jobs use tests/conf and
tests/failing.py (the helpers are initbench.testing's; the script imports nothing from tests/).
`OMP_NUM_THREADS` defaults to 1 for every job.
"""

import argparse
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_CONF = ROOT / "tests" / "conf"  # its model=exploding (tests/failing.py), read by Hydra in the jobs, not imported
sys.path.insert(0, str(ROOT))  # initbench from this checkout

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from initbench.interrupts import child_pids  # noqa: E402
from initbench.testing import (  # noqa: E402
    history_steps,
    initbench_command,
    initbench_env,
    mlflow_server,
    runs_in,
)
from initbench.tracking import process_token  # noqa: E402

BATCH = 128  # conf/trainer/default.yaml
# A sweep of 6 as Hydra option files: `+case=a,b,...` picks whole jobs, not a cartesian product.
CASES = {
    "default_s0": ("mlp", "default", 0, ""),
    "default_s1": ("mlp", "default", 1, ""),
    "kaiming_s0": ("mlp", "kaiming", 0, ""),
    "kaiming_s1": ("mlp", "kaiming", 1, ""),
    "raises": ("exploding", "default", 1, ""),  # tests/conf/model/exploding.yaml: raises when seed == 1
    "diverges": ("mlp", "ones", 0, "model:\n  activation: leaky_relu\noptimizer:\n  lr: 1.0e6\n"),
}
ALL_CASES = ("parallel", "failures", "sigkill", "bad-inputs", "store-race", "interrupts", "sweep-sigterm",
             "resume", "live-run")
SERVER_CASES = ("parallel", "failures", "sigkill")

# Bad overrides, each one argv element (model.width=0 needs model=mlp): (argv, the key and the value its
# message must name, who refuses it: Hydra's composition (a wrong type, an unknown key without +) or
# initbench's own checks).
BAD_INPUTS = [
    (["trainer.epochs=0"], "trainer.epochs", "0", "initbench"),
    (["trainer.epochs=-1"], "trainer.epochs", "-1", "initbench"),
    (["trainer.batch_size=abc"], "trainer.batch_size", "abc", "Hydra"),
    (["trainer.epochs=abc"], "trainer.epochs", "abc", "Hydra"),
    (["optimizer.lr=abc"], "optimizer.lr", "abc", "Hydra"),
    (["trainer.batch_size=0"], "trainer.batch_size", "0", "initbench"),
    (["optimizer.lr=nan"], "optimizer.lr", "nan", "initbench"),
    (["optimizer.lr=inf"], "optimizer.lr", "inf", "initbench"),
    (["model=mlp", "model.width=0"], "model.width", "0", "initbench"),
    (["tracking.uri=garbage://x"], "tracking.uri", "garbage://x", "initbench"),
    (["tracking.experiment=''"], "tracking.experiment", "''", "initbench"),
    (["+trainer.epoch=3"], "trainer.epoch", "3", "initbench"),
    (["trainer.epoch=3"], "trainer.epoch", "3", "Hydra"),
    (["seed=4294967296"], "seed", "4294967296", "initbench"),
    (["seed=-1"], "seed", "-1", "initbench"),
]
# The exit status each is expected to end with: initbench's own refusals 2; Hydra 1.3.8 ends its own
# composition errors with status 1 (hydra._internal.utils.run_and_report), before initbench runs.
REFUSED_STATUS = {"initbench": 2, "Hydra": 1}
HYDRA_HINT = "Set the environment variable HYDRA_FULL_ERROR=1"
KILLED_WITHIN_S = 5.0  # a signalled run must read KILLED in the store this soon after the signal
SWEEP_GRACE_S = 20.0  # after SIGTERM to a sweep's parent, none of its processes may be alive this much later
RUN_LINE = re.compile(r"^MLflow run (\S+) \((\w+)\), sweep (\w+)", re.M)
SWEEP_LINE = re.compile(r"^sweep (\w+) \(", re.M)

# What one job does to a new SQLite store (initbench/run.py: open_job, start_run, train_and_log), without
# the training: it imports first, then waits for the go file, so that the two jobs of a pair open the
# store in the same instant.
RACE_JOB = """
import sys, time
from pathlib import Path
from initbench.tracking import Tracker
uri, name, go = sys.argv[1], sys.argv[2], Path(sys.argv[3])
Path(name + ".ready").touch()
while not go.exists():
    time.sleep(0.001)
tracker = Tracker(uri, "initbench")
tracker.runs_with_hash("0" * 16)              # already_done: earlier runs of this config
tracker.start(name, {"seed": name[-1]}, {"initbench.status": "running", "initbench.sweep": "race"})
Path(name + ".txt").write_text(name)
tracker.log_artifact(name + ".txt")           # config.yaml, init_report.csv
tracker.log_points([("train/loss", 1.0 / s, s) for s in range(1, 11)] + [("test/acc", 0.5, 1)])
tracker.end("finished")
"""


class CaseError(Exception):
    """A case could not go on: what it waited for did not happen."""


@dataclass
class Row:
    case: str
    done: str
    result: str
    ok: bool


class Table:
    """The rows of the final table; each is printed as it is added."""

    def __init__(self) -> None:
        self.rows: list[Row] = []

    def add(self, case: str, done: str, result: str, checks: dict[str, bool]) -> bool:
        failed = [what for what, ok in checks.items() if not ok]
        if failed:
            result += "; FAILED: " + "; ".join(failed)
        self.rows.append(Row(case, done, result, not failed))
        print(f"  [{'ok' if not failed else 'FAIL'}] {done}: {result}", flush=True)
        return not failed

    def markdown(self) -> str:
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        lines = ["| case | what was done | result | ok |", "|---|---|---|---|"]
        lines += [f"| {r.case} | {cell(r.done)} | {cell(r.result)} | {'ok' if r.ok else 'FAIL'} |" for r in self.rows]
        return "\n".join(lines)

    @property
    def failures(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]


def sh(args: list[str], cwd: Path, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run(initbench_command(*args), cwd=cwd, env=initbench_env(cwd), capture_output=True,
                          text=True, timeout=timeout)


def tail(text: str, lines: int = 1) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " / ".join(kept[-lines:]) if kept else "(nothing)"


def short(run_id: str) -> str:
    return run_id[:8]


class Job:
    """`python -m initbench ARGS` started in the background in `cwd`, its output in files there."""

    def __init__(self, args: list[str], cwd: Path, name: str, new_session: bool = False):
        self.out_path, self.err_path = cwd / f"{name}.out", cwd / f"{name}.err"
        env = {**initbench_env(cwd), "PYTHONUNBUFFERED": "1"}  # its lines as they are printed
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(initbench_command(*args), cwd=cwd, env=env, stdout=out, stderr=err,
                                         start_new_session=new_session)
        self.new_session = new_session

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def runs(self) -> list[tuple[str, str, str]]:
        """(run name, run id, sweep id) of each run it has opened so far."""
        return RUN_LINE.findall(self.stdout())

    def stop(self) -> None:
        """SIGKILL it (and, if it has its own session, its process group) unless it has ended."""
        if self.proc.poll() is None:
            try:
                if self.new_session:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                else:
                    os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()


def wait_until(what: str, predicate: Callable, timeout: float, job: Job | None = None, poll: float = 0.1):
    """predicate()'s first truthy value; CaseError if `job` ends first or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if job is not None and job.proc.poll() is not None:
            raise CaseError(f"{what}: the job exited with {job.proc.returncode} first "
                            f"(stderr: {tail(job.stderr(), 3)})")
        if time.monotonic() > deadline:
            raise CaseError(f"{what}: not within {timeout:.0f} s")
        time.sleep(poll)


def job_runs(runs: list) -> list:
    """The runs of jobs: without a sweep's parent run (tag initbench.parent) and analysis summaries."""
    return [r for r in runs if r.data.tags.get("initbench.parent") != "true"
            and r.data.tags.get("initbench.summary") != "true"]


def epochs_flushed(client: MlflowClient, run_id: str) -> int:
    return len(client.get_metric_history(run_id, "test/acc"))


def steps_of(client: MlflowClient, run_id: str, key: str) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def whole_epochs(steps: list[int], epochs: int, steps_per_epoch: int) -> bool:
    return epochs >= 1 and steps == list(range(1, epochs * steps_per_epoch + 1))


def descendants(pid: int) -> dict[int, str]:
    """pid -> process token (initbench.tracking.process_token) of every live descendant of `pid`."""
    found, todo = {}, [pid]
    while todo:
        for child in child_pids(todo.pop()):
            if child not in found:
                found[child] = process_token(child)
                todo.append(child)
    return found


def alive(pid: int, token: str) -> bool:
    """The process `token` named still exists (the same start time: not a reused pid) and is no zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and process_token(pid) == token


def process_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = " ".join(a.decode(errors="replace") for a in argv if a)
    for pattern in (r"--process-name (\S+)", r"(resource_tracker)", r"-m (initbench)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return text[:40]


# --- on the tracking server ----------------------------------------------------------------------------------


def history_check(uri: str, runs: list, epochs: int, steps_per_epoch: int) -> tuple[int, int, int, int]:
    """(expected, found, lost, duplicated) metric points of `runs`, runs of one config with different seeds.
    train/loss (every step) and train/acc, test/loss, test/acc (every epoch) against what the config
    implies (see initbench/train.py); every other key (gradient norms, the init probe, validation, ...)
    against the steps the same key has in any of the runs."""
    core = {"train/loss": list(range(1, epochs * steps_per_epoch + 1))}
    core.update({k: list(range(1, epochs + 1)) for k in ("train/acc", "test/loss", "test/acc")})
    histories = {r.info.run_id: {k: history_steps(uri, r.info.run_id, k) for k in r.data.metrics} for r in runs}
    keys = set(core).union(*(h.keys() for h in histories.values()))
    expected = found = lost = duplicated = 0
    for key in keys:
        steps = core.get(key) or sorted(set().union(*(h.get(key, []) for h in histories.values())))
        for history in histories.values():
            logged = history.get(key, [])
            expected += len(steps)
            found += len(logged)
            duplicated += len(logged) - len(set(logged))
            lost += len(set(steps) - set(logged))
    return expected, found, lost, duplicated


def parallel(table: Table, uri: str, work: Path, jobs: int, epochs: int, train_size: int) -> None:
    print(f"\nparallel: {jobs} jobs at once (joblib) logging to one server")
    seeds = ",".join(str(s) for s in range(jobs))
    start = time.monotonic()
    done = sh(["-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "model=mlp", f"seed={seeds}",
               f"dataset.train_size={train_size}", f"trainer.epochs={epochs}", "trainer.progress=false",
               f"tracking.uri={uri}", "tracking.experiment=stress-parallel"], work)
    wall = time.monotonic() - start
    runs = job_runs(runs_in(uri, "stress-parallel"))
    steps_per_epoch = math.ceil(train_size / BATCH)
    expected_points, found_points, lost, duplicated = history_check(uri, runs, epochs, steps_per_epoch)
    names = [r.info.run_name for r in runs]
    finished = sum(r.info.status == "FINISHED" and r.data.tags.get("initbench.status") == "finished" for r in runs)
    table.add("parallel", f"{jobs} jobs in parallel (joblib, `n_jobs={jobs}`), one server, {epochs} epochs x "
              f"{steps_per_epoch} steps each",
              f"exit {done.returncode} after {wall:.0f} s; {len(runs)} runs, {finished} finished; {found_points} of "
              f"{expected_points} metric points present, {lost} lost, {duplicated} duplicated", {
                  "the sweep exits 0": done.returncode == 0,
                  f"{jobs} runs, one per job, no duplicate": len(runs) == jobs and len(set(names)) == jobs,
                  "every run finished": finished == len(runs),
                  "every metric history complete": lost == 0 and duplicated == 0 and found_points == expected_points,
              })


def write_cases(folder: Path) -> str:
    (folder / "case").mkdir(parents=True, exist_ok=True)
    for name, (model, init, seed, extra) in CASES.items():
        (folder / "case" / f"{name}.yaml").write_text(
            f"# @package _global_\ndefaults:\n  - override /model: {model}\n  - override /init: {init}\n"
            f"seed: {seed}\n{extra}")
    return ",".join(CASES)


def failures_sweep(table: Table, uri: str, work: Path) -> None:
    print("\nfailures: a sweep of 6 with one job that raises and one that diverges, then run again")
    cases = write_cases(work / "cases")
    sweep = ["-m", f"hydra.searchpath=[file://{TEST_CONF},file://{work / 'cases'}]", f"+case={cases}",
             "dataset.train_size=256", "trainer.epochs=2", "trainer.progress=false", f"tracking.uri={uri}",
             "tracking.experiment=stress-failures"]
    first = sh(sweep, work)
    runs = job_runs(runs_in(uri, "stress-failures"))
    by_status: dict[str, list] = {}
    for r in runs:
        by_status.setdefault(r.data.tags.get("initbench.status"), []).append(r)
    counts = {s: len(rs) for s, rs in sorted(by_status.items(), key=lambda item: str(item[0]))}
    failed = by_status.get("failed", [])
    error = failed[0].data.tags.get("initbench.error", "").strip().splitlines()[-1] if failed else ""
    table.add("failures", "sweep of 6 on the server: 4 normal jobs, 1 whose model raises, 1 that diverges",
              f"exit {first.returncode}; runs by status {counts}; the failed run's error `{error[:60]}`", {
                  "the sweep's exit code says a job failed": first.returncode != 0,
                  "4 finished, 1 failed, 1 diverged": counts == {"diverged": 1, "failed": 1, "finished": 4},
                  "the failed run is FAILED in MLflow, with its error text":
                      bool(failed) and failed[0].info.status == "FAILED" and "boom" in error,
              })

    again = sh(sweep, work)
    before = {old.info.run_id for old in runs}
    new = [r for r in job_runs(runs_in(uri, "stress-failures")) if r.info.run_id not in before]
    skipped = [line for line in again.stdout.splitlines() if line.startswith("skip ")]
    rerun = [r.info.run_name for r in new]
    table.add("failures", "the same sweep run again",
              f"exit {again.returncode}; {len(skipped)} jobs skipped; {len(new)} new run(s): {', '.join(rerun)}", {
                  "re-running the sweep executes exactly the failed job":
                      len(skipped) == 5 and rerun == [r.info.run_name for r in failed],
              })


def sigkill(table: Table, uri: str, work: Path, epochs: int, train_size: int) -> None:
    print(f"\nsigkill: a job of {epochs} epochs killed with SIGKILL half-way, then run again")
    done = f"a {epochs}-epoch job on the server killed with SIGKILL half-way, then run again"
    args = ["model=mlp", f"dataset.train_size={train_size}", f"trainer.epochs={epochs}", "trainer.progress=false",
            "seed=0", f"tracking.uri={uri}", "tracking.experiment=stress-sigkill"]
    steps_per_epoch = math.ceil(train_size / BATCH)
    job = subprocess.Popen(initbench_command(*args), cwd=work, env=initbench_env(work), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        while job.poll() is None:  # until half the epochs are flushed
            runs = runs_in(uri, "stress-sigkill")
            if runs and len(history_steps(uri, runs[0].info.run_id, "test/acc")) >= epochs // 2:
                os.kill(job.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
    finally:
        if job.poll() is None:
            os.kill(job.pid, signal.SIGKILL)
        job.wait()
    [dead] = runs_in(uri, "stress-sigkill") or [None]
    if dead is None or job.returncode != -signal.SIGKILL:
        table.add("sigkill", done, f"the job ended with {job.returncode}", {"the job was killed half-way": False})
        return
    kept_loss = history_steps(uri, dead.info.run_id, "train/loss")
    kept_epochs = len(history_steps(uri, dead.info.run_id, "test/acc"))
    again = sh(args, work)
    runs = {r.info.run_id: r for r in runs_in(uri, "stress-sigkill")}
    old = runs[dead.info.run_id]
    new = [r for rid, r in runs.items() if rid != dead.info.run_id]
    new_loss = history_steps(uri, new[0].info.run_id, "train/loss") if new else []
    still = history_steps(uri, dead.info.run_id, "train/loss")
    table.add("sigkill", done,
              f"killed after {kept_epochs} epochs; the re-run (exit {again.returncode}) marks the stale run "
              f"{old.info.status} ({old.data.tags.get('initbench.status')}) and its new run is "
              f"{new[0].info.status if new else 'missing'} ({len(new_loss)} of "
              f"{epochs * steps_per_epoch} train/loss points); the dead run keeps the {len(still)} points "
              f"({kept_epochs} whole epochs) it had flushed", {
                  "the re-run marks the stale run KILLED": again.returncode == 0 and old.info.status == "KILLED"
                  and old.data.tags.get("initbench.status") == "killed",
                  "and completes a new one": len(new) == 1 and new[0].info.status == "FINISHED"
                  and new_loss == list(range(1, epochs * steps_per_epoch + 1)),
                  "the dead run's flushed metrics are still in the store, in whole epochs":
                      0 < kept_epochs < epochs and whole_epochs(kept_loss, kept_epochs, steps_per_epoch)
                      and still == kept_loss,
              })


# --- SQLite stores in fresh folders, as a user runs it -----------------------------------------------------------


def bad_input(folder: Path, argv: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`python -m initbench` with a tiny config and `argv` last, in an empty `folder`; what it left there
    besides Hydra's outputs/."""
    folder.mkdir(parents=True)
    given = {a.lstrip("+~").split("=", 1)[0] for a in argv}
    base = [a for a in ("dataset.train_size=128", "trainer.epochs=1", "trainer.progress=false")
            if a.split("=", 1)[0] not in given]
    done = sh([*base, *argv], folder, timeout=300)
    return done, sorted(p.name for p in folder.iterdir() if p.name != "outputs")


def bad_inputs(table: Table, work: Path) -> None:
    print(f"\nbad-inputs: {len(BAD_INPUTS)} bad overrides, each in an empty folder (2 at a time)")
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda item: bad_input(work / f"input{item[0]:02d}", item[1][0]),
                             enumerate(BAD_INPUTS)))
    for (argv, key, value, by), (proc, written) in zip(BAD_INPUTS, done, strict=True):
        err = proc.stderr
        lines = [line.strip() for line in err.splitlines() if line.strip()]
        last = lines[-1] if lines else "(nothing)"
        shown = f"`{last}`"
        if last.startswith(HYDRA_HINT):  # Hydra's hint: show the line that names the key as well
            naming = next((line for line in lines if key in line), lines[0])
            shown = f"`{naming}` ... `{last}`"
        values = ("''", '""') if value == "''" else (value,)
        table.add("bad-inputs", f"`{' '.join(argv)}` (refused by {by})",
                  f"exit {proc.returncode}; {shown}; wrote {', '.join(written) or 'nothing'}", {
                      f"exit status {REFUSED_STATUS[by]}": proc.returncode == REFUSED_STATUS[by],
                      f"the message names the key ({key})": key in err,
                      f"the message names the value ({value})": any(v in err for v in values),
                      "no traceback": not any(line.startswith("Traceback") for line in err.splitlines()),
                      "nothing written (no mlflow.db, no mlruns/)": not written,
                  })


def race_pair(folder: Path, mode: str, train_size: int) -> list[tuple[subprocess.Popen, Path]]:
    """Two jobs, seed 0 and seed 1, started at the same moment on the new store `folder`/mlflow.db; each
    with the file its stderr goes to."""
    env = initbench_env(folder)
    go = folder / "go"
    if mode == "full":
        commands = [initbench_command("model=mlp", f"seed={seed}", f"dataset.train_size={train_size}",
                                      "trainer.epochs=1", "trainer.progress=false") for seed in (0, 1)]
    else:
        commands = [[sys.executable, "-c", RACE_JOB, "sqlite:///mlflow.db", f"race-s{seed}", str(go)]
                    for seed in (0, 1)]
    started = []
    for seed, command in enumerate(commands):
        with open(folder / f"job{seed}.err", "w") as err:
            started.append((subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=err),
                            folder / f"job{seed}.err"))
    if mode == "light":  # both have imported MLflow and wait at the barrier: release them together
        wait_until("both jobs ready", lambda: all((folder / f"race-s{s}.ready").exists() for s in (0, 1)), 300)
        go.touch()
    return started


def store_race(table: Table, work: Path, pairs: int, mode: str, train_size: int) -> None:
    what = ("`python -m initbench seed=0` and `seed=1`, model=mlp, 1 epoch" if mode == "full" else
            "each doing what a job does to the store: Tracker, search, start, artifact, metrics, end; "
            "released by one barrier")
    print(f"\nstore-race: {pairs} pairs of processes creating a new SQLite store at once: {what}")
    start = time.monotonic()
    exits, problems, runs_found, finished = [], [], 0, 0
    for pair in range(pairs):
        folder = work / f"pair{pair:02d}"
        folder.mkdir(parents=True)
        for proc, err in race_pair(folder, mode, train_size):
            try:
                proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            exits.append(proc.returncode)
            if proc.returncode != 0:
                problems.append(f"pair {pair}: exit {proc.returncode}: {tail(err.read_text(errors='replace'))}")
        client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        try:
            experiment = client.get_experiment_by_name("initbench")
            runs = client.search_runs([experiment.experiment_id]) if experiment else []
        except Exception as err:  # the store broke: say how
            problems.append(f"pair {pair}: search_runs failed: {type(err).__name__}: {tail(str(err))}")
            runs = []
        runs_found += len(runs)
        finished += sum(r.info.status == "FINISHED" for r in runs)
        print(f"  pair {pair}: exits {exits[-2:]}, {len(runs)} runs", flush=True)
    wall = time.monotonic() - start
    last = work / f"pair{pairs - 1:02d}"
    job = sh(["model=mlp", "seed=2", f"dataset.train_size={train_size}", "trainer.epochs=1",
              "trainer.progress=false"], last, timeout=600)
    analysis = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), "--no-log"], cwd=last,
                              env=initbench_env(last), capture_output=True, text=True, timeout=600)
    for name, proc in (("the job", job), ("analyze.py", analysis)):
        if proc.returncode != 0:
            problems.append(f"{name} in the last store: exit {proc.returncode}: {tail(proc.stderr, 2)}")
    if problems:
        print("  " + "\n  ".join(problems))
    jobs = 2 * pairs
    table.add("store-race", f"{pairs} pairs of {'full' if mode == 'full' else 'light'} jobs, each pair creating "
              f"one new SQLite store at the same moment ({what})",
              f"{exits.count(0)} of {jobs} jobs exit 0 in {wall:.0f} s; {runs_found} runs found by search_runs, "
              f"{finished} FINISHED; then a real job in the last store exits {job.returncode} and "
              f"`analyze.py --no-log` exits {analysis.returncode}" + (f"; first problem: {problems[0]}" if problems
                                                                        else ""), {
                  "every job exits 0": exits.count(0) == jobs,
                  "every store holds its 2 runs, FINISHED": runs_found == jobs and finished == jobs,
                  "the store is usable afterwards (a job, an analysis)": job.returncode == 0
                  and analysis.returncode == 0,
              })


def long_run_args(train_size: int, epochs: int, seed: int = 0) -> list[str]:
    return ["model=mlp", f"seed={seed}", f"dataset.train_size={train_size}", f"trainer.epochs={epochs}",
            "trainer.progress=false"]


def first_flush(job: Job, folder: Path, runs: int = 1, timeout: float = 300) -> tuple[MlflowClient, list[str]]:
    """Once `job` has opened `runs` runs (so the store exists) and each has flushed an epoch: a client of
    the store and the runs' ids."""
    ids = wait_until("the job opens its run", lambda: [r[1] for r in job.runs()][:runs]
                     if len(job.runs()) >= runs else None, timeout, job)
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    wait_until("a first flushed epoch", lambda: all(epochs_flushed(client, i) >= 1 for i in ids), timeout, job)
    return client, ids


def interrupt(table: Table, work: Path, sig: signal.Signals, train_size: int, epochs: int) -> None:
    folder = work / sig.name.lower()
    folder.mkdir(parents=True)
    steps_per_epoch = math.ceil(train_size / BATCH)
    job = Job(long_run_args(train_size, epochs), folder, "job")
    try:
        client, [run_id] = first_flush(job, folder)
        before = epochs_flushed(client, run_id)
        sent = time.monotonic()
        os.kill(job.pid, sig)
        killed_after = exited_after = None
        while time.monotonic() - sent < 60 and (killed_after is None or exited_after is None):
            if exited_after is None and job.proc.poll() is not None:
                exited_after = time.monotonic() - sent
            if killed_after is None and client.get_run(run_id).info.status == "KILLED":
                killed_after = time.monotonic() - sent
            time.sleep(0.05)
    finally:
        job.stop()
    run = client.get_run(run_id)
    kept = epochs_flushed(client, run_id)
    loss = steps_of(client, run_id, "train/loss")
    killed = "never" if killed_after is None else f"{killed_after:.1f} s after the signal"
    exited = ("did not exit in 60 s" if exited_after is None
              else f"exits {job.proc.returncode} after {exited_after:.1f} s")
    tag = run.data.tags.get("initbench.status")
    table.add("interrupts", f"{sig.name} to a single {epochs}-epoch run after its first flushed epoch "
              f"({before} epochs flushed when signalled)",
              f"run {run.info.status} (initbench.status={tag}) {killed}; the process {exited}"
              f"{' with a traceback on stderr' if 'Traceback' in job.stderr() else ''}; kept {kept} whole "
              f"epochs: train/loss steps 1..{loss[-1] if loss else 0} ({len(loss)} points)", {
                  f"KILLED with initbench.status=killed within {KILLED_WITHIN_S:.0f} s":
                      run.info.status == "KILLED" and tag == "killed" and killed_after is not None
                      and killed_after <= KILLED_WITHIN_S,
                  "flushed points kept, in whole epochs": whole_epochs(loss, kept, steps_per_epoch)
                  and kept >= before,
              })


def interrupts(table: Table, work: Path, train_size: int, epochs: int) -> None:
    print("\ninterrupts: SIGINT, then SIGTERM, to a long single run after its first flushed epoch")
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            interrupt(table, work, sig, train_size, epochs)
        except CaseError as err:
            table.add("interrupts", f"{sig.name} to a single {epochs}-epoch run", str(err), {"the case ran": False})


def sweep_sigterm(table: Table, work: Path, train_size: int, epochs: int) -> None:
    print("\nsweep-sigterm: SIGTERM to a 2-job joblib sweep's parent once both runs flushed an epoch")
    folder = work
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "model=mlp", "seed=0,1",
            f"dataset.train_size={train_size}", f"trainer.epochs={epochs}", "trainer.progress=false"]
    job = Job(args, folder, "sweep", new_session=True)
    started: dict[int, str] = {}
    try:
        client, ids = first_flush(job, folder, runs=2)
        started = descendants(job.pid)  # the workers (and joblib's helpers), before the signal
        names = {pid: process_name(pid) for pid in started}
        sent = time.monotonic()
        os.kill(job.pid, signal.SIGTERM)  # the parent only
        timeline: list[str] = []
        statuses: dict[str, str] = {}
        parent_exit = None
        while time.monotonic() - sent < SWEEP_GRACE_S:
            now = time.monotonic() - sent
            if parent_exit is None and job.proc.poll() is not None:
                parent_exit = now
                timeline.append(f"parent exits {job.proc.returncode} at {now:.1f} s")
            for run_id in ids:
                status = client.get_run(run_id).info.status
                if statuses.get(run_id) != status:
                    statuses[run_id] = status
                    if status != "RUNNING":
                        timeline.append(f"run {short(run_id)} {status} at {now:.1f} s")
            time.sleep(0.2)
        left = {pid: names[pid] for pid, token in started.items() if alive(pid, token)}
    finally:
        job.stop()
        for pid, token in started.items():  # what the sweep left running: stopped by the PIDs read above
            if alive(pid, token):
                os.kill(pid, signal.SIGKILL)
    runs = [client.get_run(i) for i in ids]
    described = ", ".join(f"{r.info.run_name} {r.info.status} ({r.data.tags.get('initbench.status')})" for r in runs)
    parents = [r for r in client.search_runs([runs[0].info.experiment_id]) if r not in job_runs([r])]
    if parents:  # the sweep's parent run, where there is one
        described += "; the sweep's parent run " + ", ".join(r.info.status for r in parents)
    alive_text = ", ".join(f"{pid} ({name})" for pid, name in left.items()) or "none"
    print(f"  processes started by the sweep: {', '.join(f'{p} ({n})' for p, n in names.items())}")
    print(f"  timeline after the signal: {'; '.join(timeline) or 'nothing changed'}")
    print(f"  parent's stderr, last lines: {tail(job.stderr(), 3)}")
    parent = "did not exit" if parent_exit is None else f"exit {job.proc.returncode} after {parent_exit:.1f} s"
    table.add("sweep-sigterm", f"SIGTERM to the parent of a joblib sweep (n_jobs=2, seeds 0,1, {epochs} epochs) "
              f"once both runs had flushed an epoch; {len(started)} processes under it read from /proc before",
              f"parent {parent}; alive {SWEEP_GRACE_S:.0f} s after the signal: {alive_text}; runs: {described}; "
              f"{'; '.join(timeline)}", {
                  f"no process of the sweep alive {SWEEP_GRACE_S:.0f} s later": not left and parent_exit is not None,
                  "both runs KILLED (initbench.status=killed)": all(
                      r.info.status == "KILLED" and r.data.tags.get("initbench.status") == "killed" for r in runs),
              })


def analyzed_jobs(markdown: str) -> int | None:
    """The sum of the `n` column of analyze.py's table (None if there is no such table)."""
    header = None
    total = 0
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None and "n" in cells and "init" in cells:
            header = cells.index("n")
        elif header is not None and line.startswith("|") and cells[header].isdigit():
            total += int(cells[header])
    return total if header is not None else None


def resume(table: Table, work: Path, epochs: int) -> None:
    print("\nresume: a 2-init x 2-seed sweep, one run deleted, the same command again, then analyze.py")
    folder = work
    sweep = ["-m", "model=mlp", "init=default,kaiming", "seed=0,1", "dataset.train_size=128",
             f"trainer.epochs={epochs}", "trainer.progress=false"]
    first = sh(sweep, folder, timeout=900)
    first_id = (SWEEP_LINE.findall(first.stdout) or ["?"])[0]
    client = MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("initbench")
    runs = job_runs(client.search_runs([experiment.experiment_id])) if experiment else []
    if first.returncode != 0 or len(runs) != 4:
        table.add("resume", "a 2x2 sweep", f"exit {first.returncode}, {len(runs)} runs: {tail(first.stderr, 2)}",
                  {"the first sweep runs 4 jobs": False})
        return
    lost = sorted(runs, key=lambda r: r.info.run_name)[-1]
    client.delete_run(lost.info.run_id)
    again = sh(sweep, folder, timeout=900)
    again_id = (SWEEP_LINE.findall(again.stdout) or ["?"])[0]
    skipped = [line for line in again.stdout.splitlines() if line.startswith("skip ")]
    new = [name for name, _, _ in RUN_LINE.findall(again.stdout)]
    active = job_runs(client.search_runs([experiment.experiment_id]))
    sweeps = {r.data.tags.get("initbench.sweep") for r in active}
    analysis = subprocess.run([sys.executable, str(ROOT / "scripts" / "analyze.py"), "--no-log"], cwd=folder,
                              env=initbench_env(folder), capture_output=True, text=True, timeout=600)
    counted = analyzed_jobs(analysis.stdout)
    out = folder / "results" / first_id
    table.add("resume", f"a 2-init x 2-seed sweep ({epochs} epochs), run {lost.info.run_name} deleted "
              "(MlflowClient.delete_run), the same command again, then `analyze.py --no-log`",
              f"sweep id {first_id}, then {again_id}; exits {first.returncode}, {again.returncode}; {len(skipped)} "
              f"skipped, re-ran {', '.join(new) or 'nothing'}; {len(active)} job runs in sweep(s) "
              f"{', '.join(sorted(map(str, sweeps)))}; analyze.py exit {analysis.returncode}, n = {counted} "
              f"(table written to results/{first_id}: {'yes' if out.is_dir() else 'no'})", {
                  "the same sweep id": first_id == again_id != "?",
                  "exactly the deleted job re-runs": again.returncode == 0 and len(skipped) == 3
                  and new == [lost.info.run_name],
                  "analyze.py (latest sweep) counts all 4 jobs": analysis.returncode == 0 and counted == 4
                  and sweeps == {first_id} and out.is_dir(),
              })


def live_run(table: Table, work: Path, train_size: int, epochs: int) -> None:
    print("\nlive-run: a long job A, then the same config in a second process B while A trains")
    folder = work
    args = long_run_args(train_size, epochs)
    job = Job(args, folder, "a")
    try:
        client, [run_id] = first_flush(job, folder)
        second = sh(args, folder, timeout=600)
        status_after_b = client.get_run(run_id).info.status
        a_alive = job.proc.poll() is None
        flushed = epochs_flushed(client, run_id)
        wait_until("A flushes another epoch after B", lambda: epochs_flushed(client, run_id) > flushed, 60, job)
        os.kill(job.pid, signal.SIGINT)  # now stop A: its own handler must end its run
        job.proc.wait(60)
    finally:
        job.stop()
    skip = next((line for line in second.stdout.splitlines() if line.startswith("skip ")), "")
    marked = [line for line in second.stdout.splitlines() if line.startswith("marking run")]
    run = client.get_run(run_id)
    error = run.data.tags.get("initbench.error", "")
    table.add("live-run", f"job A ({epochs} epochs) RUNNING; the same config started in process B",
              f"B exit {second.returncode}: `{skip}`; A's run {status_after_b} after B, A "
              f"{'alive and still flushing' if a_alive else 'gone'}; then SIGINT to A: its run "
              f"{run.info.status} by A itself (`{error}`)", {
                  "B skips: `run ... of this config is running now`, exit 0": second.returncode == 0
                  and f"run {run_id} of this config is running now" in skip and str(job.pid) in skip,
                  "B marks nothing KILLED; A's run stays RUNNING": not marked and status_after_b == "RUNNING"
                  and a_alive,
                  "A's run ends KILLED by A's own interrupt": run.info.status == "KILLED"
                  and error.startswith("KeyboardInterrupt"),
              })


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(ALL_CASES),
                        help=f"comma-separated cases to run (default: all: {', '.join(ALL_CASES)})")
    parser.add_argument("--jobs", type=int, default=4, help="parallel joblib jobs (parallel)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per parallel job (parallel)")
    parser.add_argument("--train-size", type=int, default=1024, help="digits training examples per job "
                        "(parallel, sigkill)")
    parser.add_argument("--kill-epochs", type=int, default=40, help="epochs of the job killed half-way (sigkill)")
    parser.add_argument("--race-pairs", type=int, default=20, help="pairs of jobs racing on a new store (store-race)")
    parser.add_argument("--race-mode", choices=("light", "full"), default="light",
                        help="light: what a job does to the store; full: real runs (store-race)")
    parser.add_argument("--small-size", type=int, default=256, help="digits training examples of the jobs of "
                        "store-race, interrupts, sweep-sigterm and live-run")
    parser.add_argument("--long-epochs", type=int, default=5000, help="epochs of the long runs that are "
                        "interrupted (interrupts, sweep-sigterm, live-run)")
    parser.add_argument("--sweep-epochs", type=int, default=2, help="epochs per job of the resumed sweep (resume)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (server log, stores, outputs)")
    args = parser.parse_args()
    chosen = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(ALL_CASES))
    if unknown or not chosen:
        parser.error(f"unknown case(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(ALL_CASES)}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # 2 cores shared by several jobs: one thread each
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # started in the background: give the jobs a
        signal.signal(signal.SIGINT, signal.default_int_handler)  # terminal's SIGINT (default), not an ignored one
    work = args.keep or Path(tempfile.mkdtemp(prefix="initbench-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    table = Table()
    start = time.monotonic()
    print(f"work folder {work}; cases: {', '.join(chosen)}")

    def guarded(case: str, body: Callable[[], None]) -> None:
        (work / case).mkdir(exist_ok=True)
        try:
            body()
        except Exception as err:  # a case that could not run is a failed check, and the others still run
            table.add(case, "the case", f"stopped by {type(err).__name__}: {tail(str(err), 2)}", {"it ran": False})

    on_server = [c for c in chosen if c in SERVER_CASES]
    if on_server:
        with mlflow_server(work / "server") as uri:
            print(f"mlflow server {uri}: SQLite store and artifacts under {work / 'server'}")
            runners = {
                "parallel": lambda: parallel(table, uri, work / "parallel", args.jobs, args.epochs, args.train_size),
                "failures": lambda: failures_sweep(table, uri, work / "failures"),
                "sigkill": lambda: sigkill(table, uri, work / "sigkill", args.kill_epochs, args.train_size),
            }
            for case in on_server:
                guarded(case, runners[case])
    local = {
        "bad-inputs": lambda: bad_inputs(table, work / "bad-inputs"),
        "store-race": lambda: store_race(table, work / "store-race", args.race_pairs, args.race_mode, args.small_size),
        "interrupts": lambda: interrupts(table, work / "interrupts", args.small_size, args.long_epochs),
        "sweep-sigterm": lambda: sweep_sigterm(table, work / "sweep-sigterm", args.small_size, args.long_epochs),
        "resume": lambda: resume(table, work / "resume", args.sweep_epochs),
        "live-run": lambda: live_run(table, work / "live-run", args.small_size, args.long_epochs),
    }
    for case in chosen:
        if case in local:
            guarded(case, local[case])

    wall = time.monotonic() - start
    failed = table.failures
    print(f"\n{table.markdown()}\n")
    print(f"{len(table.rows) - len(failed)} of {len(table.rows)} checks ok, {len(failed)} FAIL; {wall:.0f} s in all "
          f"(MLflow {mlflow.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}); work folder {work}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
