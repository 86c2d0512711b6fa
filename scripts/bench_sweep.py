"""The CPU cost of a sweep: initbench's whole sweep against a plain PyTorch loop, timed as whole processes.

    python scripts/bench_sweep.py                 # 3 alternated rounds, about 8 minutes on 2 cores
    python scripts/bench_sweep.py --rounds 5 --threads 1

The workload (the He-2015 preset's shape): 3 jobs (seeds 0, 1, 2), a depth-30 width-256 ReLU MLP,
4,000 Fashion-MNIST training images (Debian's dataset-fashion-mnist), batch 64, SGD (lr 0.02, momentum 0.9),
He init (init=kaiming: N(0, 2/fan_in), zero biases), 10 epochs. Commands, each a fresh process, run in
turn (A, P, E, A, P, E, ...):

  (A) initbench: `python -m initbench -m ... seed=0,1,2` into a new SQLite store, with everything a job does
      (config checks, the store, the init report and probe, gradient norms, validation and test accuracy
      every epoch, the logged points);
  (P) the plain loop (this file, --plain): the same three models trained one after another with the data
      on the device as tensors, test accuracy once at the end;
  (E) the plain loop evaluating what initbench evaluates every epoch: the 6,000 validation and 10,000 test
      images.

Each is also run with 1 epoch, so that a command's time T(epochs) = fixed + epochs * per_epoch splits
into a fixed cost and a per-epoch cost (from T(10) and T(1)). Printed: median wall seconds per command,
the ratios A/P and A/E (median of the per-round ratios), per-epoch A/E, and A's fixed cost beyond P's per
job. Threads: torch's default unless --threads (OMP_NUM_THREADS for both).
"""

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FASHION = Path("/usr/share/datasets/fashion-mnist")
SEEDS, DEPTH, WIDTH, TRAIN, VAL, BATCH, LR = (0, 1, 2), 30, 256, 4000, 6000, 64, 0.02
ROOT = Path(__file__).resolve().parents[1]


def idx(name: str):
    """An idx file of Fashion-MNIST as a numpy array (images N x 28 x 28, labels N)."""
    import numpy as np

    raw = gzip.decompress((FASHION / name).read_bytes())
    return np.frombuffer(raw, np.uint8, offset=16 if "images" in name else 8)


def plain(epochs: int, evaluate_every_epoch: bool) -> None:
    """The plain loop: three MLPs trained one after another, data as tensors, no logging."""
    import torch
    from torch import nn

    images = torch.tensor(idx("train-images-idx3-ubyte.gz").reshape(-1, 784), dtype=torch.float32) / 255
    labels = torch.tensor(idx("train-labels-idx1-ubyte.gz"), dtype=torch.long)
    test_x = torch.tensor(idx("t10k-images-idx3-ubyte.gz").reshape(-1, 784), dtype=torch.float32) / 255
    test_y = torch.tensor(idx("t10k-labels-idx1-ubyte.gz"), dtype=torch.long)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    val_x, val_y = images[order[:VAL]], labels[order[:VAL]]
    train_x, train_y = images[order[VAL:VAL + TRAIN]], labels[order[VAL:VAL + TRAIN]]

    def accuracy(model, x, y) -> float:
        with torch.inference_mode():
            return sum((model(x[i:i + 1024]).argmax(1) == y[i:i + 1024]).sum().item()
                       for i in range(0, len(x), 1024)) / len(x)

    for seed in SEEDS:
        torch.manual_seed(seed)
        layers = [nn.Linear(784, WIDTH), nn.ReLU()]
        for _ in range(DEPTH - 1):  # initbench's mlp: depth hidden layers, then the head
            layers += [nn.Linear(WIDTH, WIDTH), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(WIDTH, 10))
        for layer in model[::2]:
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
        optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
        for _ in range(epochs):
            model.train()
            for batch in torch.randperm(TRAIN).split(BATCH):
                loss = nn.functional.cross_entropy(model(train_x[batch]), train_y[batch])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if evaluate_every_epoch:
                model.eval()
                accuracy(model, val_x, val_y), accuracy(model, test_x, test_y)
        model.eval()
        print(f"seed {seed}: test accuracy {accuracy(model, test_x, test_y):.4f}")


def initbench_sweep(epochs: int, store: Path) -> list[str]:
    return [sys.executable, "-m", "initbench", "-m", "model=mlp", f"model.depth={DEPTH}", f"model.width={WIDTH}",
            "model.activation=relu", "init=kaiming", "dataset=fashion_mnist", f"dataset.train_size={TRAIN}",
            f"trainer.batch_size={BATCH}", f"optimizer.lr={LR}", f"trainer.epochs={epochs}", "trainer.device=cpu",
            "trainer.progress=false", f"seed={','.join(map(str, SEEDS))}", f"tracking.uri=sqlite:///{store}",
            f"hydra.sweep.dir={store.parent / 'multirun'}"]


def timed(command: list[str], env: dict[str, str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of every command (default 3)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs of the timed workload (default 10)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every command (default: torch's)")
    parser.add_argument("--plain", choices=("once", "every-epoch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain:
        return plain(args.epochs, args.plain == "every-epoch")
    if not FASHION.is_dir():
        sys.exit(f"{FASHION} is missing: apt-get install dataset-fashion-mnist")
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    me = [sys.executable, str(Path(__file__).resolve())]
    commands = {}
    for epochs in (args.epochs, 1):
        commands[f"A{epochs}"] = lambda folder, e=epochs: initbench_sweep(e, folder / "mlflow.db")
        commands[f"P{epochs}"] = lambda folder, e=epochs: [*me, "--plain", "once", "--epochs", str(e)]
        commands[f"E{epochs}"] = lambda folder, e=epochs: [*me, "--plain", "every-epoch", "--epochs", str(e)]
    walls: dict[str, list[float]] = {name: [] for name in commands}
    for round_ in range(args.rounds):
        for name, command in commands.items():
            with tempfile.TemporaryDirectory(prefix="initbench-bench-") as folder:
                walls[name].append(timed(command(Path(folder)), env, Path(folder)))
        print(f"round {round_ + 1}: " + ", ".join(f"{n} {w[-1]:.1f} s" for n, w in walls.items()), flush=True)

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(walls[a], walls[b], strict=True))

    def split(prefix: str) -> tuple[float, float]:
        """(fixed, per-epoch) seconds from the medians of T(epochs) and T(1)."""
        many, one = statistics.median(walls[f"{prefix}{args.epochs}"]), statistics.median(walls[f"{prefix}1"])
        per_epoch = (many - one) / (args.epochs - 1)
        return one - per_epoch, per_epoch

    e = args.epochs
    print(f"\n| command | median wall s ({args.rounds} rounds) | min | max |\n|---|---|---|---|")
    for name, values in walls.items():
        print(f"| {name} | {statistics.median(values):.1f} | {min(values):.1f} | {max(values):.1f} |")
    (fa, ca), (fp, _), (_, ce) = split("A"), split("P"), split("E")
    print(f"\nwhole sweep, {e} epochs: A/P {ratio(f'A{e}', f'P{e}'):.2f}x, A/E {ratio(f'A{e}', f'E{e}'):.2f}x")
    print(f"per epoch (3 jobs): A {ca:.2f} s, E {ce:.2f} s: A/E {ca / ce:.2f}x")
    print(f"fixed cost: A {fa:.1f} s, P {fp:.1f} s: {(fa - fp) / len(SEEDS):.2f} s per job beyond the plain loop")
    print(f"(threads: {env.get('OMP_NUM_THREADS', 'torch default')}, {os.cpu_count()} CPU cores)")


if __name__ == "__main__":
    main()
