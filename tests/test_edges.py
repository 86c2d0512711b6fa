"""Trust at the edges, round two: tables that never average two configs, sweeps that cover every job
of theirs (found done earlier, or crashed before their run opened), measures left out rather than
approximated, labels that say what was trained, the tracking group checked like the others, a busy
store called busy, no password written, no run left RUNNING, one-line refusals, clean analysis folders."""

import math
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch
from hydra.errors import ConfigCompositionException
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from torch import nn

from initbench import store
from initbench.analysis import OutUnusable, analyze, load_sweep
from initbench.analysis.cli import main
from initbench.analysis.groups import differing_keys
from initbench.analysis.stats import cast
from initbench.config import ConfigError, check_config
from initbench.data import DataSizeError, load_dataset
from initbench.footprint import TooLarge, check_fits, model_size
from initbench.init import InitError, build_policy
from initbench.models import DataShape, build_model
from initbench.run import SWEEP_ENV, run
from initbench.store import TrackingUnavailable, open_client
from initbench.testing import ROOT, cli, mlflow_server, parent_runs_in, runs_in

from .conftest import compose_config

Q = ["model=mlp", "dataset.train_size=64", "trainer.epochs=1"]
TEST_CONF = f"hydra.searchpath=[file://{ROOT / 'tests' / 'conf'}]"


def _params(**columns) -> pd.DataFrame:
    return pd.DataFrame({f"params.{k.replace('__', '.')}": v for k, v in columns.items()})


def _hand_store(folder, points: list[Metric] = ()) -> str:
    """A store with two finished seeds of one config (sweep `s`), each with val/acc, test/acc and
    train/loss at epoch 1 and `points`; no artifacts."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("initbench", artifact_location=(folder / "mlruns").as_uri())
    for seed in range(2):
        run_id = client.create_run(experiment, run_name=f"mlp-default-digits-s{seed}").info.run_id
        params = {"init.name": "default", "model.name": "mlp", "dataset.name": "digits", "seed": str(seed),
                  "optimizer.lr": "0.1"}
        client.log_batch(run_id, metrics=[Metric("val/acc", 0.5, 0, 1), Metric("test/acc", 0.5, 0, 1),
                                          Metric("train/loss", 1.0, 0, 1), *points],
                         params=[Param(k, v) for k, v in params.items()],
                         tags=[RunTag("initbench.sweep", "s"), RunTag("initbench.status", "finished")])
        client.set_terminated(run_id)
    return uri


# --- 1. a table row is one config ------------------------------------------------------------------------


def test_runs_that_differ_in_a_key_are_grouped_by_it_and_the_seed_is_not_a_difference():
    runs = _params(init__name=["critical"] * 4 + ["kaiming"] * 3, seed=["0", "1", "0", "1", "0", "1", "2"],
                   init__sigma_w=["0.5", "0.5", "3.0", "3.0", None, None, None],
                   init__rules=["[]"] * 4 + ['[{"scheme": "kaiming_normal"}]', "[]", '[{"scheme": "kaiming_normal"}]'],
                   dataset__split_seed=["0", "1", "0", "1", "0", "1", "2"],  # ${seed}: the seed itself
                   tracking__uri=["sqlite:///a.db", "sqlite:///b.db"] * 3 + ["x"],  # where, not what
                   trainer__progress=["true", "false"] * 3 + ["auto"])
    assert differing_keys(runs, ["init"]) == ["init.rules", "init.sigma_w"]
    assert differing_keys(runs.iloc[:2], ["init"]) == []  # two seeds of one config


@pytest.mark.slow
def test_a_swept_init_parameter_gets_a_row_per_value(tmp_path):
    done = cli("-m", *Q, "init=critical", "init.sigma_w=0.5,3.0", "seed=0", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = analyze(f"sqlite:///{tmp_path / 'mlflow.db'}", out=tmp_path / "out", log_to_mlflow=False)
    assert sorted(result.summary["init.sigma_w"]) == [0.5, 3.0] and (result.summary.n_runs == 1).all()
    assert "grouped also by init.sigma_w" in result.markdown


# --- 2. extending a sweep ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_extended_sweep_covers_the_jobs_it_found_done(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert cli("-m", *Q, "seed=0,1", cwd=tmp_path).returncode == 0
    first = load_sweep(uri, "initbench").sweep
    extended = cli("-m", *Q, "seed=0,1,2", cwd=tmp_path)
    assert extended.returncode == 0 and extended.stdout.count("skip mlp-") == 2, extended.stderr[-3000:]
    result = analyze(uri, out=tmp_path / "out", log_to_mlflow=False)  # the latest sweep: all three seeds
    assert result.sweep.sweep != first and sorted(result.runs.seed) == [0, 1, 2]
    assert len(load_sweep(uri, "initbench", first).runs) == 2  # the first sweep is still itself
    assert len(load_sweep(uri, "initbench", "all").runs) == 3


# --- 3. every job of a sweep leaves a run -------------------------------------------------------------------


@pytest.mark.parametrize("overrides,error", [
    ([TEST_CONF, "model=exploding", "model._target_=tests.failing.BrokenNet"], "BrokenNet cannot be built"),
    (["model=mlp", "dataset.val_size=5000"], "DataSizeError: dataset.val_size=5000"),
    (["model=mlp", "trainer.device=meta"], "trainer.device='meta'"),
])
def test_a_job_that_stops_before_its_run_opens_is_recorded_failed(tmp_path, monkeypatch, overrides, error):
    monkeypatch.setenv(SWEEP_ENV, "crashes")
    if overrides[0] == TEST_CONF:  # compose() has no searchpath override: the test model file's content
        overrides = ["model=mlp", "~model", "+model._target_=tests.failing.BrokenNet", "+model.name=broken"]
    cfg = compose_config(overrides, tmp_path)
    with pytest.raises(Exception, match=error.split(": ", 1)[-1]):
        run(cfg)
    [failed] = runs_in(cfg.tracking.uri, "initbench")
    assert failed.info.status == "FAILED" and failed.data.tags["initbench.sweep"] == "crashes"
    assert error in failed.data.tags["initbench.error"]
    table = analyze(cfg.tracking.uri, out=tmp_path / "out", log_to_mlflow=False).summary
    assert table.n_failed.sum() == 1


# --- 4. a measure that needs a missing artifact is left out, and says so ----------------------------------------


def test_without_init_reports_grad_norm_first_and_last_are_missing_and_flagged(tmp_path):
    grads = [Metric(f"vitals/grad_norm/{p}", v, 0, 1) for p, v in [("a.weight", 1.0), ("z.weight", 4.0)]]
    uri = _hand_store(tmp_path, grads)  # runs without an init_report.csv artifact
    result = analyze(uri, out=tmp_path / "out", log_to_mlflow=False)
    [row] = result.summary.itertuples()
    assert math.isnan(row.grad_norm_first) and math.isnan(row.grad_norm_last)  # not a / z by name
    assert "2 run(s) have no init_report.csv artifact, so the layer order is unknown" in row.notes


# --- 5. labels that say what was trained --------------------------------------------------------------------------


def _policy(target: str):
    rule = {"where": {"module": "Linear", "param": "weight"}, "_target_": target}
    return build_policy({"name": "mine", "rules": [rule]})


def test_an_init_function_that_returns_a_new_tensor_has_it_used():
    model = nn.Linear(4, 3)
    report = _policy("tests.failing.fill_returning_a_new_tensor").apply(model, torch.Generator().manual_seed(0))
    assert torch.equal(model.weight, torch.full((3, 4), 0.5))
    row = report.frame.set_index("param").loc["weight"]  # the report measures what the model holds
    assert row.scheme == "tests.failing.fill_returning_a_new_tensor" and row["std"] == 0 and row["mean"] == 0.5


def test_an_init_function_that_fills_nan_is_refused_and_the_model_restored():
    model = nn.Linear(4, 3)
    before = model.weight.detach().clone()
    with pytest.raises(InitError, match="filled non-finite values"):
        _policy("tests.failing.fill_nan").apply(model, torch.Generator().manual_seed(0))
    assert torch.equal(model.weight, before)


@pytest.mark.parametrize("size,valid", [({"train_size": 100000}, "valid: 1 to 1293"),
                                        ({"val_size": 5000}, "valid: a count from 10 to 1427")])
def test_a_dataset_size_beyond_the_data_is_refused_not_capped(size, valid):
    with pytest.raises(DataSizeError, match=valid):
        load_dataset({"name": "digits", "val_size": 0.1, **size}, "unused")


# --- 8. the tracking group has a schema and checks --------------------------------------------------------------


@pytest.mark.parametrize("override,problem", [
    ("+tracking.reruns=true", "tracking.reruns=true: unknown key; valid: uri, experiment, rerun"),
    ("tracking.stale_after_min=-5", "tracking.stale_after_min=-5.0: must be a finite number > 0"),
])
def test_the_tracking_group_is_checked(override, problem):
    with pytest.raises(ConfigError, match=problem.replace("+", r"\+")):
        check_config(compose_config([override]))


def test_tracking_rerun_takes_booleans_only():
    with pytest.raises(ConfigCompositionException, match="abc"):
        compose_config(["tracking.rerun=abc"])
    assert compose_config(["tracking.rerun=false"]).tracking.rerun is False  # the text 'false' is false


# --- 6. locked is not corrupt; a full disk is named ----------------------------------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold_lock(path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path), str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_store_another_process_holds_locked_is_busy_not_corrupt(tmp_path, monkeypatch, capfd):
    path = tmp_path / "mlflow.db"
    open_client(f"sqlite:///{path}")  # a whole store
    monkeypatch.setattr(store, "BUSY_WAIT_S", 1)
    monkeypatch.setattr(store, "BUSY_POLL_S", 0.5)
    holder = _hold_lock(path, 60)
    try:
        with pytest.raises(TrackingUnavailable, match="is busy: another process has held it locked") as err:
            open_client(f"sqlite:///{path}")
        assert f"(PID {holder.pid})" in str(err.value) and "delete" not in str(err.value)
        assert "is locked by another process (python" in capfd.readouterr().err  # progress while it waits
    finally:
        holder.kill()
        holder.wait()
    with sqlite3.connect(path) as db:  # untouched
        assert db.execute("pragma integrity_check").fetchone() == ("ok",)


def test_a_lock_released_while_waiting_lets_the_run_go_on(tmp_path, monkeypatch):
    path = tmp_path / "mlflow.db"
    open_client(f"sqlite:///{path}")
    monkeypatch.setattr(store, "BUSY_POLL_S", 0.5)
    holder = _hold_lock(path, 2)
    try:
        open_client(f"sqlite:///{path}").search_experiments()
    finally:
        holder.wait()


@pytest.fixture
def full_disk(tmp_path):
    """A 200 KiB tmpfs: too small for MLflow's tables (needs root and mount; skipped without)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", "--lazy", str(folder)], check=True)  # MLflow's engine may hold the removed file


def test_a_full_disk_at_store_creation_is_named(full_disk):
    with pytest.raises(TrackingUnavailable, match=f"the disk that holds {full_disk} is full") as err:
        open_client(f"sqlite:///{full_disk / 'mlflow.db'}")
    assert "older MLflow" not in str(err.value) and not (full_disk / "mlflow.db").exists()


# --- 7. no credential is written, whatever the scheme ---------------------------------------------------------


@pytest.mark.parametrize("sweep", [[], ["-m", "seed=0,1"]])
def test_a_database_password_never_reaches_a_config_file_or_a_message(tmp_path, sweep):
    done = cli(*sweep, *Q, "tracking.uri=postgresql://bob:S3CRET@127.0.0.1:9/mlflow", cwd=tmp_path)
    assert done.returncode == 2 and "TrackingUnavailable" in done.stderr  # no driver, or no database there
    written = [p.read_text() for p in tmp_path.rglob("*.yaml")]  # what Hydra saved of the run
    assert (written or sweep) and not any("S3CRET" in text for text in written)
    assert "S3CRET" not in done.stdout + done.stderr and "postgresql://bob@127.0.0.1:9/mlflow" in done.stderr


def test_a_database_uri_keeps_its_password_for_the_driver_alone(monkeypatch):
    monkeypatch.delenv(store.DB_PASSWORD_ENV, raising=False)
    clean = store.clean_uri("postgresql+psycopg2://bob:p%40ss@db.internal:5432/mlflow")
    assert clean == "postgresql+psycopg2://bob@db.internal:5432/mlflow"
    assert store.with_password(clean) == "postgresql+psycopg2://bob:p%40ss@db.internal:5432/mlflow"
    with pytest.raises(TrackingUnavailable, match="credentials that differ"):
        store.clean_uri("postgresql://bob:other@db.internal/mlflow")


# --- 9. a run never stays RUNNING after a failure, nor its sweep's parent -------------------------------------------


def test_an_artifact_store_that_refuses_files_ends_the_run_failed_and_the_sweep(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the artifacts would go\n")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("initbench", artifact_location=(blocker / "mlruns").as_uri())
    done = cli("-m", *Q, "seed=0", cwd=tmp_path)
    assert done.returncode != 0
    [job] = runs_in(uri, "initbench")
    assert job.info.status == "FAILED" and "NotADirectoryError" in job.data.tags["initbench.error"]
    [parent] = parent_runs_in(uri, "initbench")
    assert parent.info.status == "FAILED"


# --- 11, 12. one-line refusals; an analysis folder holds one analysis ----------------------------------------------


@pytest.mark.parametrize("override,message", [
    (f"tracking.experiment={'e' * 600}", "has 600 characters; MLflow's stores hold names of at most 256"),
    ("tracking.uri=file:///tmp/initbench-fs", "MLFLOW_ALLOW_FILE_STORE=true"),
    ("optimizer.lr=1e308", "optimizer.lr=1e+308: must be a finite number > 0 that float32 holds"),
])
def test_a_users_mistake_is_one_line_and_status_2_and_writes_no_store(tmp_path, override, message):
    done = cli(*Q, override, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "mlflow.db").exists()


# Bad overrides as a user types them: (argv, the key and the value the message must name, who refuses it).
# Hydra 1.3.8 ends its own composition errors (a wrong type, an unknown key without +) with status 1 before
# initbench runs; initbench's refusals end with 2. The first four mix both: --stress-size=small runs them.
BAD_INPUTS = [
    (["trainer.epochs=0"], "trainer.epochs", "0", "initbench"),
    (["trainer.batch_size=abc"], "trainer.batch_size", "abc", "Hydra"),
    (["+trainer.epoch=3"], "trainer.epoch", "3", "initbench"),
    (["trainer.epoch=3"], "trainer.epoch", "3", "Hydra"),
    (["trainer.epochs=-1"], "trainer.epochs", "-1", "initbench"),
    (["trainer.epochs=abc"], "trainer.epochs", "abc", "Hydra"),
    (["optimizer.lr=abc"], "optimizer.lr", "abc", "Hydra"),
    (["trainer.batch_size=0"], "trainer.batch_size", "0", "initbench"),
    (["optimizer.lr=nan"], "optimizer.lr", "nan", "initbench"),
    (["optimizer.lr=inf"], "optimizer.lr", "inf", "initbench"),
    (["model=mlp", "model.width=0"], "model.width", "0", "initbench"),
    (["tracking.uri=garbage://x"], "tracking.uri", "garbage://x", "initbench"),
    (["tracking.experiment=''"], "tracking.experiment", "''", "initbench"),
    (["seed=4294967296"], "seed", "4294967296", "initbench"),
    (["seed=-1"], "seed", "-1", "initbench"),
]
REFUSED_STATUS = {"initbench": 2, "Hydra": 1}


def refused(folder, argv: list[str]) -> tuple[subprocess.CompletedProcess, list[str]]:
    """`python -m initbench` with a tiny config and `argv` last, in a new `folder`; what it left there besides
    Hydra's outputs/."""
    folder.mkdir()
    given = {a.lstrip("+~").split("=", 1)[0] for a in argv}
    done = cli(*[a for a in Q if a.split("=", 1)[0] not in given], "trainer.progress=false", *argv, cwd=folder)
    return done, sorted(p.name for p in folder.iterdir() if p.name != "outputs")


@pytest.mark.stress(only_when_selected=True)
def test_bad_overrides_exit_naming_key_and_value_without_a_traceback_and_write_nothing(tmp_path, stress_size,
                                                                                       stress_report):
    chosen = BAD_INPUTS[:stress_size.bad_inputs]
    with ThreadPoolExecutor(2) as pool:
        done = list(pool.map(lambda item: refused(tmp_path / f"input{item[0]:02d}", item[1][0]), enumerate(chosen)))
    problems = []
    for (argv, key, value, by), (proc, written) in zip(chosen, done, strict=True):
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        naming = next((line for line in lines if key in line), lines[-1] if lines else "(nothing)")
        stress_report(f"`{' '.join(argv)}` (refused by {by})",
                      f"exit {proc.returncode}; `{naming}`; wrote {', '.join(written) or 'nothing'}")
        values = ("''", '""') if value == "''" else (value,)
        if not (proc.returncode == REFUSED_STATUS[by] and key in proc.stderr and any(v in proc.stderr for v in values)
                and "Traceback" not in proc.stderr and not written):
            problems.append(f"{argv}: exit {proc.returncode}, wrote {written}:\n{proc.stderr[-1500:]}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("device", ["meta", "xla"])
def test_a_device_initbench_does_not_train_on_is_refused(device):
    with pytest.raises(ConfigError, match=f"trainer.device='{device}': initbench trains on cpu, cuda, mps"):
        check_config(compose_config([f"trainer.device={device}"]))


def test_lrs_too_large_for_int64_are_tuned_as_floats():
    assert cast(pd.Series(["1e10", "1e308"])).tolist() == [1e10, 1e308]


def test_an_out_that_is_a_file_or_read_only_is_refused_before_anything_is_computed(tmp_path, capsys):
    uri = _hand_store(tmp_path)
    (tmp_path / "a-file").write_text("mine\n")
    assert main(["--tracking-uri", uri, "--no-log", "--out", str(tmp_path / "a-file")]) == 2
    assert "--out" in capsys.readouterr().err and (tmp_path / "a-file").read_text() == "mine\n"
    with pytest.raises(OutUnusable, match="a-file is a file"):
        analyze(uri, out=tmp_path / "a-file" / "below", log_to_mlflow=False)


def test_an_out_in_a_read_only_folder_is_refused_and_nothing_is_made(tmp_path, capsys):
    uri = _hand_store(tmp_path)
    folder = tmp_path / "ro"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a read-only tmpfs here (needs root); chmod does not stop root")
    try:
        assert main(["--tracking-uri", uri, "--no-log", "--out", str(folder / "out")]) == 2
        assert "cannot be written (Read-only file system" in capsys.readouterr().err
        assert not (folder / "out").exists()
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)


def test_an_out_reused_by_another_analysis_keeps_no_stale_file(tmp_path, capsys):
    uri = _hand_store(tmp_path)
    out = tmp_path / "out"
    assert main(["--tracking-uri", uri, "--no-log", "--out", str(out), "--tune", "optimizer.lr"]) == 0
    assert (out / "tune.png").exists() and (out / "tune.csv").exists()
    (out / "notes.txt").write_text("mine\n")
    assert main(["--tracking-uri", uri, "--no-log", "--out", str(out)]) == 0
    assert not (out / "tune.png").exists() and not (out / "tune.csv").exists() and (out / "summary.md").exists()
    assert (out / "notes.txt").exists() and "removed what an earlier analysis left there" in capsys.readouterr().out


def test_the_analysis_of_a_server_points_at_the_server_as_the_ui(tmp_path, capsys):
    with mlflow_server(tmp_path / "server") as uri:
        client = MlflowClient(uri)
        experiment = client.create_experiment("initbench")
        run_id = client.create_run(experiment, run_name="mlp-default-digits-s0").info.run_id
        client.log_batch(run_id, metrics=[Metric("test/acc", 0.5, 0, 1)],
                         params=[Param(k, v) for k, v in {"init.name": "default", "model.name": "mlp",
                                                          "dataset.name": "digits", "seed": "0"}.items()],
                         tags=[RunTag("initbench.sweep", "s"), RunTag("initbench.status", "finished")])
        assert main(["--tracking-uri", uri, "--no-log", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"open the runs in MLflow's UI: {uri}" in printed and "mlflow ui" not in printed


# --- 10. a model too large for its device is refused from its config, at once ----------------------------------


@pytest.mark.parametrize("model", [
    {"name": "mlp", "depth": 40, "width": 64, "activation": "relu", "batch_norm": False},
    {"name": "resnet", "depth": 26, "width": 8, "branch_gate": "none", "branch_bias": False, "norm": "batch"},
    {"name": "lstm", "hidden_size": 16, "num_layers": 20},
])
def test_the_size_of_a_deep_model_is_extrapolated_exactly(model):
    shape = DataShape(1, 8, 8, 10)
    size = model_size(model, shape, (1, 8, 8))
    built = build_model(model, shape)
    assert size.parameters == sum(p.numel() for p in built.parameters())


def test_a_model_too_large_for_the_device_is_refused_in_under_a_second(tmp_path):
    cfg = compose_config(["model=mlp", "model.depth=100000"], tmp_path)
    start = time.monotonic()
    with pytest.raises(TooLarge, match=r"model.depth=100000, model.width=256: the model has 6,579,153,418 param"):
        run(cfg)
    assert time.monotonic() - start < 5  # the dataset load included; the sizing itself takes milliseconds
    assert not (tmp_path / "mlflow.db").exists()
    with pytest.raises(TooLarge, match="model.width=100000000"):
        check_fits({"name": "mlp", "depth": 3, "width": 100_000_000, "activation": "relu", "batch_norm": False},
                   {"_target_": "torch.optim.SGD", "momentum": 0.9}, 128, DataShape(1, 8, 8, 10), (1, 8, 8),
                   torch.device("cpu"))


def test_the_analysis_goes_to_a_folder_of_its_own_by_default(tmp_path, monkeypatch):
    uri = _hand_store(tmp_path)
    monkeypatch.chdir(tmp_path)
    result = analyze(uri, log_to_mlflow=False)
    assert result.files[0].parent.resolve() == tmp_path / "analysis" / "initbench" / "s"
    assert not (tmp_path / "results").exists()
