"""Reliability figures for a tracking server under real sweeps: parallel jobs, failures, a SIGKILL.

    python scripts/stress.py                    # about 3-5 minutes on 2 CPU cores
    python scripts/stress.py --jobs 8 --epochs 10

It starts its own `mlflow server` (127.0.0.1, a free port, SQLite backend store and local artifact
root in a temporary folder), runs `python -m initbench` against it the way a user does, on the CPU, and
stops the server by its PID at the end. Three checks, each printed with its figures:

1. parallel: N jobs at once (hydra/launcher=joblib, n_jobs=N) logging to the one server: every run
   finished, every metric history complete (points counted per key against what the config implies),
   no run or point lost or duplicated.
2. failures: a sweep of 6 (4 normal jobs, 1 whose model raises, 1 that diverges): 4 finished, 1 failed
   with its error text, 1 diverged, and a non-zero exit code; re-running the same sweep executes exactly
   the failed job and skips the other 5.
3. sigkill: a job killed with SIGKILL half-way: re-running it marks the stale run KILLED and completes a
   new one; the points the dead run flushed before it died are still in the store, in whole epochs.

Exit code 0 when every check holds. Run it from a clone with the dev and launchers extras installed: it
uses the tests package (its server helper, tests/conf and tests/failing.py).
"""

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests package: the server helper, tests/conf's exploding model

from mlflow.tracking import MlflowClient  # noqa: E402

from tests.support import (  # noqa: E402
    TEST_CONF,
    history_steps,
    initbench_command,
    initbench_env,
    mlflow_server,
    runs_in,
)

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


def sh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(initbench_command(*args), cwd=cwd, env=initbench_env(cwd), capture_output=True,
                          text=True, timeout=1800)


def check(ok: bool, what: str, failures: list[str]) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {what}")
    if not ok:
        failures.append(what)


def expected_history(client: MlflowClient, run, epochs: int, steps_per_epoch: int) -> dict[str, list[int]]:
    """Metric key -> the steps the config implies (see initbench/train.py)."""
    keys = set(client.get_run(run.info.run_id).data.metrics)
    every_step = list(range(1, epochs * steps_per_epoch + 1))
    expected = {"train/loss": every_step}
    expected.update({k: list(range(1, epochs + 1)) for k in ("train/acc", "test/loss", "test/acc")})
    expected.update({k: list(range(1, steps_per_epoch + 1)) for k in keys if k.startswith("grad_norm/")})
    expected.update({k: [0] for k in keys if k.startswith(("act_std/", "backprop_std/"))})
    return expected


def parallel(uri: str, work: Path, jobs: int, epochs: int, train_size: int, failures: list[str]) -> None:
    print(f"\n1. parallel: {jobs} jobs at once (joblib) logging to one server")
    seeds = ",".join(str(s) for s in range(jobs))
    start = time.monotonic()
    done = sh(["-m", "hydra/launcher=joblib", f"hydra.launcher.n_jobs={jobs}", "model=mlp", f"seed={seeds}",
               f"dataset.train_size={train_size}", f"trainer.epochs={epochs}", "trainer.progress=false",
               f"tracking.uri={uri}", "tracking.experiment=stress-parallel"], work)
    wall = time.monotonic() - start
    client = MlflowClient(uri)
    runs = runs_in(uri, "stress-parallel")
    steps_per_epoch = math.ceil(train_size / BATCH)
    expected_points = found_points = duplicated = lost = 0
    for run in runs:
        for key, steps in expected_history(client, run, epochs, steps_per_epoch).items():
            logged = history_steps(uri, run.info.run_id, key)
            expected_points += len(steps)
            found_points += len(logged)
            duplicated += len(logged) - len(set(logged))
            lost += len(set(steps) - set(logged))
    names = [r.info.run_name for r in runs]
    print(f"  exit code {done.returncode}; {len(runs)} runs in {wall:.1f} s; {found_points} metric points "
          f"({expected_points} expected: {epochs} epochs x {steps_per_epoch} steps of train/loss per run, "
          f"first-epoch grad norms per parameter, per-epoch accuracies, the init probe); "
          f"{lost} lost, {duplicated} duplicated")
    check(done.returncode == 0, "the sweep exits 0", failures)
    check(len(runs) == jobs and len(set(names)) == jobs, f"{jobs} runs, one per job, no duplicate", failures)
    check(all(r.info.status == "FINISHED" and r.data.tags["initbench.status"] == "finished" for r in runs),
          "every run finished", failures)
    check(lost == 0 and duplicated == 0 and found_points == expected_points,
          "every metric history complete: no point lost or duplicated", failures)


def write_cases(folder: Path) -> str:
    (folder / "case").mkdir(parents=True)
    for name, (model, init, seed, extra) in CASES.items():
        (folder / "case" / f"{name}.yaml").write_text(
            f"# @package _global_\ndefaults:\n  - override /model: {model}\n  - override /init: {init}\n"
            f"seed: {seed}\n{extra}")
    return ",".join(CASES)


def failures_sweep(uri: str, work: Path, failures: list[str]) -> None:
    print("\n2. failures: a sweep of 6 with one job that raises and one that diverges, then run again")
    cases = write_cases(work / "cases")
    sweep = ["-m", f"hydra.searchpath=[file://{TEST_CONF},file://{work / 'cases'}]", f"+case={cases}",
             "dataset.train_size=256", "trainer.epochs=2", "trainer.progress=false", f"tracking.uri={uri}",
             "tracking.experiment=stress-failures"]
    first = sh(sweep, work)
    runs = runs_in(uri, "stress-failures")
    by_status = {}
    for r in runs:
        by_status.setdefault(r.data.tags["initbench.status"], []).append(r)
    counts = {s: len(rs) for s, rs in sorted(by_status.items())}
    failed = by_status.get("failed", [])
    error = failed[0].data.tags.get("initbench.error", "").strip().splitlines()[-1] if failed else ""
    print(f"  first run: exit code {first.returncode}; runs by status {counts}; the failed run's error: {error!r}")
    check(first.returncode != 0, "the sweep's exit code says a job failed", failures)
    check(counts == {"diverged": 1, "failed": 1, "finished": 4}, "4 finished, 1 failed, 1 diverged", failures)
    check(bool(failed) and failed[0].info.status == "FAILED" and "boom" in error,
          "the failed run is FAILED in MLflow, with its error text", failures)

    again = sh(sweep, work)
    new = [r for r in runs_in(uri, "stress-failures") if r.info.run_id not in {old.info.run_id for old in runs}]
    skipped = [line for line in again.stdout.splitlines() if line.startswith("skip ")]
    print(f"  run again: exit code {again.returncode}; {len(skipped)} jobs skipped; {len(new)} new run(s): "
          f"{', '.join(r.info.run_name for r in new)}")
    rerun = [r.info.run_name for r in new]
    check(len(skipped) == 5 and rerun == [r.info.run_name for r in failed],
          "re-running the sweep executes exactly the failed job", failures)


def sigkill(uri: str, work: Path, epochs: int, train_size: int, failures: list[str]) -> None:
    print(f"\n3. sigkill: a job of {epochs} epochs killed with SIGKILL half-way, then run again")
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
        check(False, f"the job was killed half-way (it ended with {job.returncode})", failures)
        return
    kept_loss = history_steps(uri, dead.info.run_id, "train/loss")
    kept_epochs = len(history_steps(uri, dead.info.run_id, "test/acc"))
    print(f"  killed: run {dead.info.run_id} left {dead.info.status} with {kept_epochs} of {epochs} epochs "
          f"flushed ({len(kept_loss)} train/loss points)")
    again = sh(args, work)
    runs = {r.info.run_id: r for r in runs_in(uri, "stress-sigkill")}
    old = runs[dead.info.run_id]
    new = [r for rid, r in runs.items() if rid != dead.info.run_id]
    new_loss = history_steps(uri, new[0].info.run_id, "train/loss") if new else []
    print(f"  run again: exit code {again.returncode}; stale run now {old.info.status} "
          f"(initbench.status {old.data.tags.get('initbench.status')}); new run "
          f"{new[0].info.status if new else 'missing'} with {len(new_loss)} train/loss points; the dead run "
          f"still has {len(history_steps(uri, dead.info.run_id, 'train/loss'))}")
    check(again.returncode == 0 and old.info.status == "KILLED" and old.data.tags.get("initbench.status") == "killed",
          "the re-run marks the stale run KILLED", failures)
    check(len(new) == 1 and new[0].info.status == "FINISHED"
          and new_loss == list(range(1, epochs * steps_per_epoch + 1)), "and completes a new one", failures)
    check(0 < kept_epochs < epochs and kept_loss == list(range(1, kept_epochs * steps_per_epoch + 1))
          and history_steps(uri, dead.info.run_id, "train/loss") == kept_loss,
          "the dead run's flushed metrics are still in the store, in whole epochs", failures)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=4, help="parallel joblib jobs (check 1)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per parallel job (check 1)")
    parser.add_argument("--train-size", type=int, default=1024, help="digits training examples per job")
    parser.add_argument("--kill-epochs", type=int, default=40, help="epochs of the job killed half-way (check 3)")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (server log, store, outputs)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="initbench-stress-"))
    work.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    start = time.monotonic()
    with mlflow_server(work / "server") as uri:
        print(f"mlflow server {uri}: SQLite store and artifacts under {work / 'server'}")
        for part in ("parallel", "failures", "sigkill"):
            (work / part).mkdir(exist_ok=True)
        parallel(uri, work / "parallel", args.jobs, args.epochs, args.train_size, failures)
        failures_sweep(uri, work / "failures", failures)
        sigkill(uri, work / "sigkill", args.kill_epochs, args.train_size, failures)
    print(f"\n{'all checks hold' if not failures else f'{len(failures)} check(s) failed'} "
          f"({time.monotonic() - start:.0f} s in all; work folder {work})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
