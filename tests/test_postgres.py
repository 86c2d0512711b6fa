"""The tracking store on PostgreSQL: Debian's server started by the module on a unix socket (no TCP),
an `mlflow server --backend-store-uri postgresql://...` on 127.0.0.1 in front of it, both stopped by
their PIDs. Sweeps log through the server with no metric point lost, jobs open a new database directly
at once, and the resume, live-run and parent-run logic work as on SQLite (the same tests, imported)."""

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from mlflow.tracking import MlflowClient

from initbench.analysis.cli import main as analyze
from initbench.testing import Postgres, cli, mlflow_server, parent_runs_in, postgres_binaries, postgres_server, runs_in

from .support import needs_plugin
from .test_services import (
    lost_and_duplicated,
    test_joblib_sweep_on_the_server_then_resume_runs_only_the_failed_job,
    test_rerun_skips_a_finished_config_unless_forced,
    test_sigkilled_job_is_marked_killed_and_its_rerun_completes,
)

# The resume, live-run and parent-run tests on SQLite, collected here again: their `server` is this module's.
AS_ON_SQLITE = (test_rerun_skips_a_finished_config_unless_forced,
                test_joblib_sweep_on_the_server_then_resume_runs_only_the_failed_job,
                test_sigkilled_job_is_marked_killed_and_its_rerun_completes)

pytestmark = [
    pytest.mark.skipif(postgres_binaries() is None, reason="PostgreSQL's server is not installed: "
                                                           "apt-get install postgresql"),
    pytest.mark.skipif(importlib.util.find_spec("psycopg2") is None, reason="the PostgreSQL driver is not "
                                                                            "installed: pip install -e '.[postgres]'"),
]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    with postgres_server() as found:
        yield found


@pytest.fixture(scope="module")
def server(postgres, tmp_path_factory) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 whose backend store is a database of the module's PostgreSQL."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow-pg"), backend_store=postgres.create_database("server")) as uri:
        yield uri


@pytest.mark.slow
@needs_plugin("joblib")
def test_a_joblib_sweep_of_16_jobs_with_4_workers_through_the_server_loses_no_point(server, tmp_path):
    epochs, train_size, steps_per_epoch = 1, 256, 2
    done = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "model=mlp", "init=default,kaiming",
               "seed=0,1,2,3,4,5,6,7", f"dataset.train_size={train_size}", f"trainer.epochs={epochs}",
               "trainer.progress=false", f"tracking.uri={server}", "tracking.experiment=pg-joblib", cwd=tmp_path,
               timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(server, "pg-joblib")
    assert len({r.info.run_name for r in runs}) == len(runs) == 16
    assert {(r.info.status, r.data.tags["initbench.status"]) for r in runs} == {("FINISHED", "finished")}
    for init in ("default", "kaiming"):
        of_init = [r for r in runs if r.data.params["init.name"] == init]
        expected, found, lost, duplicated = lost_and_duplicated(server, of_init, epochs, steps_per_epoch)
        assert (lost, duplicated, found) == (0, 0, expected), init
    [parent] = parent_runs_in(server, "pg-joblib")
    assert parent.info.status == "FINISHED"
    assert {r.data.tags["mlflow.parentRunId"] for r in runs} == {parent.info.run_id}


@pytest.mark.slow
def test_a_batched_sweep_through_the_server_loses_no_point(server, tmp_path):
    epochs, train_size, steps_per_epoch = 2, 256, 2
    done = cli("-m", "hydra/launcher=batched", "model=mlp", "seed=0,1,2,3", f"dataset.train_size={train_size}",
               f"trainer.epochs={epochs}", "trainer.progress=false", f"tracking.uri={server}",
               "tracking.experiment=pg-batched", cwd=tmp_path, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    runs = runs_in(server, "pg-batched")
    assert sorted(r.info.run_name for r in runs) == [f"mlp-default-digits-s{seed}" for seed in range(4)]
    assert {(r.info.status, r.data.tags["initbench.status"]) for r in runs} == {("FINISHED", "finished")}
    expected, found, lost, duplicated = lost_and_duplicated(server, runs, epochs, steps_per_epoch)
    assert (lost, duplicated, found) == (0, 0, expected)
    [parent] = parent_runs_in(server, "pg-batched")
    assert parent.info.status == "FINISHED"


OPEN_STORE = "import sys; from initbench.store import open_client; open_client(sys.argv[1]).search_experiments()"


def test_processes_opening_a_new_database_at_once_create_its_schema_once(postgres):
    # Without the advisory lock, all but one fail: relation "experiments" already exists.
    uri = postgres.create_database("fresh")
    procs = [subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    errors = [proc.communicate(timeout=300)[1] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, "\n".join(e[-1500:] for e in errors)


def test_a_sweep_logs_to_a_database_uri_directly_and_the_analysis_reads_it(postgres, tmp_path, capsys):
    uri = postgres.create_database("direct")
    done = cli("-m", "model=mlp", "seed=0,1", "dataset.train_size=128", "trainer.epochs=1", "trainer.progress=false",
               f"tracking.uri='{uri}'", "tracking.experiment=direct", cwd=tmp_path)  # quoted: ?host= holds a '='
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(r.info.run_name for r in runs_in(uri, "direct")) == ["mlp-default-digits-s0", "mlp-default-digits-s1"]
    assert analyze(["--tracking-uri", uri, "--experiment", "direct", "--out", str(tmp_path / "analysis")]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\| 1 \| default \| 2 \| 0 \| 0 \|", printed), printed
    [parent] = parent_runs_in(uri, "direct")
    assert parent.info.status == "FINISHED" and MlflowClient(uri).list_artifacts(parent.info.run_id)
