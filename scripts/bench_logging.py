"""What MLflow logging costs a sweep: synchronous log_batch calls vs MLflow's asynchronous queue.

    OMP_NUM_THREADS=1 MLFLOW_DISABLE_TELEMETRY=true python scripts/bench_logging.py   # both tables
    python scripts/bench_logging.py --repeats 3 --server     # (a) also against a local `mlflow server`
    python scripts/bench_logging.py --part a --repeats 1     # just (a), once

(a) The sweep `model=mlp model.depth=30 seed=0,1,2` on digits (1,437 training images, batch
    128: 12 steps per epoch), trainer.epochs=10, each job run as `python -m initbench` runs it
    (initbench.run.open_job, then train_and_log) in this process, into a new SQLite store in a
    temporary folder (with --server, also into a new experiment of a local `mlflow server`, SQLite
    behind it, started and stopped here). Timed: fit() (training, with its log callback), the time
    inside Tracker.log_points (wrapped), fit() less that (training proper: it shows what the writer
    threads cost it), and Tracker.end (which waits for the run's last writes), with
    Tracker.asynchronous False (each log_batch returns once the store has it) and True (MLflow's
    asynchronous queue, initbench's default). Per store and mode, the repeat with the shortest sweep.
(b) Whole processes, start to exit, each a fresh Python: wall clock, and CPU time (user + system of
    the process and what it waited for; less sensitive to other jobs on a shared machine). The same
    3-job sweep of the depth-30 MLP, 10 epochs, on synthetic MNIST-shaped data built here (4,000
    training and 1,000 test images 1x28x28 of uniform noise, normalized, 10 random labels; MNIST is
    not available offline), as initbench runs it (configs composed with dataset=mnist
    dataset.train_size=4000, the synthetic data handed to open_job), against a plain PyTorch loop that
    trains the same models the same way (the same architecture, PyTorch's default init under
    torch.manual_seed(seed), SGD lr 0.02 momentum 0.9, batch 128, the seed's data order, a test-set
    evaluation per epoch) and logs nothing. Also initbench's fit() without MLflow (its gradient norms
    and init probe computed, nothing sent), and the asynchronous sweep into a store that does not exist
    yet (it is created first); the other rows log into an existing store. The initbench rows end as
    `python -m initbench` does (gc.freeze(): no last garbage collection at exit); the plain loop ends
    as a plain script. Best of --repeats per row.
"""

import argparse
import gc
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SEEDS = (0, 1, 2)
N_TRAIN, N_TEST = 4000, 1000


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from initbench.config import check_config  # its module holds the schemas conf/ extends

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=overrides)
    check_config(cfg)  # as `python -m initbench` checks it: a bad override fails before the bench runs
    return cfg


def job_overrides(seed: int, epochs: int, depth: int, store: Path | str, dataset: list[str],
                  experiment: str = "bench_logging") -> list[str]:
    """The job's overrides; `store` a folder (its mlflow.db) or a tracking URI."""
    uri = store if isinstance(store, str) else f"sqlite:///{store / 'mlflow.db'}"
    return ["model=mlp", f"model.depth={depth}", f"seed={seed}", f"trainer.epochs={epochs}", "trainer.device=cpu",
            "trainer.progress=false", f"tracking.uri={uri}", f"tracking.experiment={experiment}", *dataset]


def synthetic_mnist(seed: int = 0):
    """(train_x, train_y, test_x, test_y): N_TRAIN + N_TEST noise images 1x28x28, normalized with the
    training set's mean and std, and random labels 0..9."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.rand(N_TRAIN + N_TEST, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (N_TRAIN + N_TEST,), generator=g)
    x = (x - x[:N_TRAIN].mean()) / x[:N_TRAIN].std()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


# --- (a): the time inside Tracker.log_points, in this process --------------------------------------------


class Timer:
    """Wraps a function; counts its calls, their seconds, and the points of a log_points call."""

    def __init__(self, fn):
        self.fn, self.seconds, self.calls, self.requests = fn, 0.0, 0, 0

    def wrap(self):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
                self.calls += 1
                if self.fn.__name__ == "log_points":  # log_batch requests: 999 points + the heartbeat, then 1000s
                    self.requests += 1 + math.ceil(max(0, len(args[1]) - 999) / 1000)
        return timed


def sweep_in_process(asynchronous: bool, epochs: int, depth: int, store: Path | str, experiment: str) -> dict:
    import initbench.run as run_module
    from initbench.tracking import Tracker

    fit, log_points, end = Timer(run_module.fit), Timer(Tracker.log_points), Timer(Tracker.end)
    saved = run_module.fit, Tracker.log_points, Tracker.end, Tracker.asynchronous
    run_module.fit, Tracker.log_points, Tracker.end = fit.wrap(), log_points.wrap(), end.wrap()
    Tracker.asynchronous = asynchronous
    try:
        start = time.perf_counter()
        for seed in SEEDS:
            cfg = compose(job_overrides(seed, epochs, depth, store, [], experiment))
            tracker, job = run_module.open_job(cfg)
            run_module.train_and_log(cfg, tracker, job)
        total = time.perf_counter() - start
    finally:
        run_module.fit, Tracker.log_points, Tracker.end, Tracker.asynchronous = saved
    return {"sweep": total, "fit": fit.seconds, "log": log_points.seconds, "calls": log_points.calls,
            "requests": log_points.requests, "end": end.seconds}


def part_a(repeats: int, epochs: int, depth: int, server: bool) -> list[str]:
    """The table of (a): per store (a SQLite file; with `server`, also a local `mlflow server`) and mode."""
    import contextlib
    import io

    from initbench.tracking import Tracker

    stores = ["SQLite file"] + ["mlflow server"] * server
    results = {(where, a): [] for where in stores for a in (False, True)}
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
        uris = {"SQLite file": None}
        if server:
            sys.path.insert(0, str(ROOT))
            from initbench.testing import mlflow_server  # starts it on 127.0.0.1, stops it by its PID

            uris["mlflow server"] = stack.enter_context(mlflow_server(Path(tmp) / "server"))
        Tracker(f"sqlite:///{tmp}/warm.db", "warm").ensure_experiment()  # imports, first store: not timed
        for where in stores:
            sweep_in_process(True, 1, depth, uris[where] or Path(tmp), "warm")
        for r in range(repeats):
            for where in stores:
                for asynchronous in (False, True):  # interleaved: a shared machine's load hits both
                    store = uris[where] or Path(tmp) / f"a{r}{int(asynchronous)}"
                    if isinstance(store, Path):
                        store.mkdir()
                    results[where, asynchronous].append(
                        sweep_in_process(asynchronous, epochs, depth, store, f"bench{r}{int(asynchronous)}"))
    lines = [f"(a) sweep model=mlp model.depth={depth} seed=0,1,2, digits, trainer.epochs={epochs}, batch 128, "
             f"a new experiment per sweep; best of {repeats} (the sweep's shortest)",
             "", "| store | logging | fit(), 3 runs (s) | in log_points (s) | share of fit() | fit() less "
             "log_points (s) | log_points calls | log_batch requests | end(), 3 runs (s) | sweep (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for (where, asynchronous), runs in results.items():
        best = min(runs, key=lambda x: x["sweep"])
        shares = [f"{100 * x['log'] / x['fit']:.1f}%" for x in runs]
        lines.append(f"| {where} | {'asynchronous' if asynchronous else 'synchronous'} | {best['fit']:.2f} | "
                     f"{best['log']:.2f} | {100 * best['log'] / best['fit']:.1f}% (all: {', '.join(shares)}) | "
                     f"{best['fit'] - best['log']:.2f} | {best['calls']} | {best['requests']} | "
                     f"{best['end']:.2f} | {best['sweep']:.2f} |")
    return lines


# --- (b): whole processes ---------------------------------------------------------------------------------


def child_plain(epochs: int, depth: int) -> None:
    """A plain PyTorch loop: the same MLP, default init, SGD, batches, data order; no logging."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    train_x, train_y, test_x, test_y = synthetic_mnist()
    for seed in SEEDS:
        torch.manual_seed(seed)
        hidden = [nn.Sequential(nn.Linear(784 if i == 0 else 256, 256), nn.Identity(), nn.ReLU()) for i in range(depth)]
        model = nn.Sequential(nn.Flatten(), nn.Sequential(*hidden), nn.Linear(256, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=0.0)
        order = torch.Generator().manual_seed(seed)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(N_TRAIN, generator=order)
            for start in range(0, N_TRAIN, 128):
                idx = perm[start:start + 128]
                loss = F.cross_entropy(model(train_x[idx]), train_y[idx])
                opt.zero_grad(set_to_none=False)
                loss.backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(test_x[s:s + 1024]) for s in range(0, N_TEST, 1024)])
                test_loss = F.cross_entropy(logits, test_y).item()
        print(f"seed {seed}: test loss {test_loss:.4f}")


def child_fit(epochs: int, depth: int) -> None:
    """initbench's fit() with its metrics, gradient norms and init probe, handed to no logger: no MLflow."""
    import torch

    from initbench.data import Dataset
    from initbench.init import build_policy
    from initbench.models import build_model
    from initbench.train import fit

    data = Dataset("mnist", *synthetic_mnist())
    for seed in SEEDS:
        cfg = compose(job_overrides(seed, epochs, depth, Path("/nonexistent"), ["dataset=mnist"]))
        with torch.random.fork_rng(devices=[]):  # as initbench.run.build_initialized_model
            torch.manual_seed(seed)
            model = build_model(cfg.model, data.shape)
        build_policy(cfg.init).apply(model, torch.Generator().manual_seed(seed))
        print(seed, fit(model, data, cfg.trainer, cfg.optimizer, seed).final)


def child_initbench(epochs: int, depth: int, store: Path, asynchronous: bool) -> None:
    """The sweep as initbench runs it, each job logged as its MLflow run."""
    from initbench.data import Dataset
    from initbench.run import open_job, train_and_log
    from initbench.tracking import Tracker

    Tracker.asynchronous = asynchronous
    data = Dataset("mnist", *synthetic_mnist())
    for seed in SEEDS:
        cfg = compose(job_overrides(seed, epochs, depth, store, ["dataset=mnist", f"dataset.train_size={N_TRAIN}"]))
        tracker, job = open_job(cfg, data)
        train_and_log(cfg, tracker, job)


def whole_process(args: list[str]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds: user + system, of the process and what it waited for) of one run
    of this script with `args`."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"{' '.join(args)} failed:\n{done.stderr}")
    return seconds, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def part_b(repeats: int, epochs: int, depth: int) -> list[str]:
    from initbench.tracking import Tracker

    rows = [("plain PyTorch loop, no logging", "plain", False), ("initbench fit(), no MLflow", "fit", False),
            ("initbench, synchronous logging", "sync", False), ("initbench, asynchronous logging", "async", False),
            ("initbench, asynchronous, new store", "async", True)]
    times = {name: [] for name, _, _ in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, mode, new in rows:
                store = Path(tmp) / f"b{r}{mode}{int(new)}"
                store.mkdir()
                if mode in ("sync", "async") and not new:  # an existing store, as after a first sweep
                    Tracker(f"sqlite:///{store / 'mlflow.db'}", "bench_logging").ensure_experiment()
                times[name].append(whole_process(["--child", mode, "--epochs", str(epochs), "--depth", str(depth),
                                                  "--store", str(store)]))
    wall, cpu = ({name: min(t[i] for t in times[name]) for name in times} for i in (0, 1))
    base = rows[0][0]
    lines = [f"(b) whole process: 3 runs x {epochs} epochs, MLP depth {depth}, synthetic MNIST-shaped data "
             f"({N_TRAIN:,} train + {N_TEST:,} test, 1x28x28, 10 classes); best of {repeats}",
             "", "| way | wall clock (s) | vs plain loop | CPU time (s) | vs plain loop | wall clock, every repeat (s) "
             "|", "|---|---|---|---|---|---|"]
    for name, _, _ in rows:
        lines.append(f"| {name} | {wall[name]:.1f} | {wall[name] / wall[base]:.2f}x | {cpu[name]:.1f} | "
                     f"{cpu[name] / cpu[base]:.2f}x | {', '.join(f'{t[0]:.1f}' for t in times[name])} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--depth", type=int, default=30)
    parser.add_argument("--server", action="store_true",
                        help="(a) also against a local `mlflow server` (SQLite behind it), started and stopped here")
    parser.add_argument("--child", choices=["plain", "fit", "sync", "async"], help=argparse.SUPPRESS)
    parser.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if args.child == "plain":
        return child_plain(args.epochs, args.depth)
    if args.child:
        try:
            if args.child == "fit":
                return child_fit(args.epochs, args.depth)
            return child_initbench(args.epochs, args.depth, args.store, args.child == "async")
        finally:
            gc.freeze()  # initbench's processes end as `python -m initbench` ends (initbench/__main__.py)

    import mlflow
    import torch

    print(f"mlflow {mlflow.__version__}, torch {torch.__version__}, {os.cpu_count()} CPUs, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch threads {torch.get_num_threads()}")
    if args.part in ("a", "both"):
        print("\n".join(part_a(args.repeats, args.epochs, args.depth, args.server)) + "\n", flush=True)
    if args.part in ("b", "both"):
        print("\n".join(part_b(args.repeats, args.epochs, args.depth)), flush=True)


if __name__ == "__main__":
    main()
