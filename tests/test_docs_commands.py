"""Every command of the README and of the docs' getting-started page, as written, so that none rots.

The commands are read from the pages (the lines of their indented code blocks that start with a
program a newcomer runs); each is run here, or by CI itself where it is the set-up or the test
command (.ci/run runs those, and a test checks that it runs them as the pages write them). A page
that gains a command this module does not know fails test_every_command_on_the_pages_is_tested.
The quickstart runs as written in a new folder, the console scripts from the venv's bin/; the
`mlflow ui` command only on a free port instead of 5000, which may be taken.
"""

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from initbench.testing import QUIET, ROOT, free_port, runs_in, stop_group, wait_healthy

PAGES = [ROOT / "README.md", ROOT / "docs" / "getting-started.md"]
PROGRAMS = {"initbench", "initbench-analyze", "initbench-probe", "mlflow", "python", "python3", "source"}
BIN = Path(sys.executable).parent  # the venv's console scripts, where `pip install` put them

SETUP = 'python3 -m venv .venv && .venv/bin/pip install -e ".[dev,launchers,postgres]"'
ACTIVATE = "source .venv/bin/activate"
TESTS = ".venv/bin/python -m pytest"
RUN = "initbench init=kaiming model=lenet"
SWEEP = "initbench -m model=mlp init=default,xavier,kaiming seed=0,1,2"
ANALYZE = "initbench-analyze"
UI = "mlflow ui --backend-store-uri sqlite:///$PWD/mlflow.db --port 5000"
BY_CI = {SETUP, TESTS}  # .ci/run runs these on a clean clone
TESTED = {SETUP, ACTIVATE, TESTS, RUN, SWEEP, ANALYZE, UI}


def commands(page: Path) -> list[str]:
    """The commands in `page`'s indented code blocks: lines after a blank line or another code line,
    indented by 4 spaces, whose first word names one of PROGRAMS (a path's last part counts)."""
    found, in_code, previous = [], False, ""
    for line in page.read_text().splitlines():
        in_code = line.startswith("    ") and (in_code or not previous.strip())
        previous = line
        words = line.split()
        if in_code and words and not words[0].endswith("/") and Path(words[0]).name in PROGRAMS:
            found.append(line.strip())
    return found


def shell(command: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`command` in bash, in `cwd`, with the venv's bin/ first on PATH (as after `source .venv/bin/activate`)."""
    env = {**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("INITBENCH_SWEEP", None)
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_every_command_on_the_pages_is_tested():
    found = {page.name: commands(page) for page in PAGES}
    assert RUN in found["README.md"] and RUN in found["getting-started.md"]  # the reader sees them
    unknown = {name: [c for c in cmds if c not in TESTED] for name, cmds in found.items()}
    assert not any(unknown.values()), f"commands no test runs: {unknown}"


def test_ci_runs_the_set_up_and_the_test_command_as_written():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    setup = SETUP.split(" && ")  # one line each in the script
    assert all(part in ci for part in setup) and TESTS in ci, "'.ci/run' no longer runs the pages' commands"
    assert (BIN / "activate").exists()  # what `source .venv/bin/activate` reads


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path):
    """A run, rerun (skipped), a sweep of 9 jobs under a parent run, its analysis into analysis/ (not
    results/), and the UI serving the runs: each command as the README writes it."""
    done = shell(RUN, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert f"mlflow ui --backend-store-uri {uri} --port 5000" in done.stdout  # the command it prints
    [run] = runs_in(uri, "initbench")
    assert run.info.status == "FINISHED" and run.data.params["model.name"] == "lenet"
    assert run.data.params["init.name"] == "kaiming"
    again = shell(RUN, tmp_path)
    assert again.returncode == 0 and "skip" in again.stdout and len(runs_in(uri, "initbench")) == 1

    done = shell(SWEEP, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = [r for r in runs_in(uri, "initbench") if r.info.run_id != run.info.run_id]
    assert len(jobs) == 9 and {r.info.status for r in jobs} == {"FINISHED"}
    assert {(r.data.params["init.name"], r.data.params["seed"]) for r in jobs} == {
        (i, s) for i in ("default", "xavier", "kaiming") for s in "012"}
    [sweep] = {r.data.tags["initbench.sweep"] for r in jobs}

    done = shell(ANALYZE, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "analysis" / "initbench" / sweep / "summary.md").read_text()
    assert all(f"| {init} |" in table for init in ("default", "xavier", "kaiming"))
    assert not (tmp_path / "results").exists()

    port = free_port()
    log = tmp_path / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(["bash", "-c", "exec " + UI.replace("--port 5000", f"--port {port}")], cwd=tmp_path,
                              env={**os.environ, **QUIET, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"},
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        address = f"http://127.0.0.1:{port}"
        wait_healthy(ui, address, log)
        query = json.dumps({"experiment_ids": [run.info.experiment_id], "max_results": 100}).encode()
        request = urllib.request.Request(f"{address}/api/2.0/mlflow/runs/search", data=query,
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            served = json.load(response)["runs"]
        assert len(served) == 11  # the run, the sweep's 9 jobs and its parent run
        assert re.search(r"Listening at: http://127\.0\.0\.1:\d+|Uvicorn running on http://127\.0\.0\.1",
                         log.read_text()), "mlflow ui listens beyond 127.0.0.1"
    finally:
        stop_group(ui)
