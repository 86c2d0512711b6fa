"""The GPU checklist as one command: the benchmark tables, the CUDA-only tests and an end-to-end batched
sweep, each part a subprocess under its own time limit, so that a slow part cannot eat the others.

    python scripts/gpu_check.py --out gpu_check/            # on a GPU machine: at most about 8 minutes
    python scripts/gpu_check.py --out /tmp/gc --dry         # tiny sizes on the CPU (what CI runs)

Parts, in order (seconds allowed each, GPU / dry):
  env        torch, CUDA and the device's name                                              30 / 30
  bench-*    scripts/bench.py in float32, tf32 and bf16 (K = 1, 8, 32, 128; dry: float32 only,
             the MLP, K = 1 and 2, 128 examples)                                           90 each / 60
  pytest-gpu python -m pytest -m gpu tests/test_gpu.py (skipped without CUDA)               60 / 60
  sweep      python -m initbench -m hydra/launcher=batched: 14 inits x 5 seeds x 20 epochs of LeNet
             on Fashion-MNIST (dry: 2 inits x 2 seeds x 1 epoch of 256 digits), wall clock   120 / 60
480 s in all on a GPU, before the machine's start.
It writes OUT/summary.md (one table: part, status, seconds, the figures each part printed) and OUT/log.txt
(everything each part printed). Exit status 0 when every part passed, 1 otherwise.
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LENET_INITS = ("default,kaiming,kaiming_uniform,xavier,xavier_normal,lecun,orthogonal,orthogonal_relu,normal,"
               "uniform,zeros,ones,docs_mixed,delta_orthogonal")  # 14 policies that fit LeNet


def parts(dry: bool, store: Path) -> list[tuple[str, list[str], int]]:
    """(name, command, seconds allowed) of each part."""
    py = sys.executable
    env = [py, "-c", "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); "
                     "print('device', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"]
    bench = ([py, "scripts/bench.py", "--device", "cpu", "--models", "mlp", "--ks", "1,2", "--n", "128",
              "--skip-docs"] if dry else [py, "scripts/bench.py", "--ks", "1,8,32,128", "--skip-docs"])
    precisions = ("float32",) if dry else ("float32", "tf32", "bf16")  # tf32 and bf16 are the GPU's
    sweep_size = (["model=lenet", "init=default,kaiming", "seed=0,1", "trainer.epochs=1", "dataset.train_size=256",
                   "trainer.device=cpu"] if dry else
                  ["model=lenet", f"init={LENET_INITS}", "seed=0,1,2,3,4", "trainer.epochs=20",
                   "dataset=fashion_mnist"])
    sweep = [py, "-m", "initbench", "-m", "hydra/launcher=batched", *sweep_size, "trainer.progress=false",
             f"tracking.uri=sqlite:///{store / 'mlflow.db'}", f"hydra.sweep.dir={store / 'multirun'}"]
    return [("env", env, 30),
            *[(f"bench-{p}", [*bench, "--precision", p], 60 if dry else 90) for p in precisions],
            ("pytest-gpu", [py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"], 60),
            ("sweep", sweep, 60 if dry else 120)]


def run_part(command: list[str], limit: int) -> tuple[str, float, str]:
    """(ok | failed (exit N) | timed out after N s, seconds, what it printed) of one part."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as err:
        status = f"timed out after {limit} s"
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (err.stdout, err.stderr))
    return status, time.perf_counter() - start, output


def figures(name: str, output: str) -> str:
    """The lines of a part's output that carry its figures (for the summary table)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    if name == "env":
        return "; ".join(lines[-2:])
    if name.startswith("bench"):
        return "<br>".join(line for line in lines if line.startswith(("lenet", "mlp", "lstm")))
    if name == "sweep":
        finished = sum(" finished after " in line for line in lines)
        batched = [line.split("] ", 1)[-1] for line in lines if "batched:" in line]
        return f"{finished} runs finished; " + "; ".join(batched)
    return lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for summary.md and log.txt")
    parser.add_argument("--dry", action="store_true", help="tiny sizes on the CPU (CI)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, log = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name, command, limit in parts(args.dry, Path(tmp)):
            print(f"{name}: {' '.join(command)} (at most {limit} s)", flush=True)
            status, seconds, output = run_part(command, limit)
            print(f"{name}: {status} in {seconds:.1f} s", flush=True)
            rows.append(f"| {name} | {status} | {seconds:.1f} | {figures(name, output)} |")
            log += [f"### {name}: {' '.join(command)}", f"{status} in {seconds:.1f} s", output]
    table = ["| part | status | seconds | figures |", "|---|---|--:|---|", *rows]
    (args.out / "summary.md").write_text("\n".join(table) + "\n")
    (args.out / "log.txt").write_text("\n".join(log))
    print("\n".join(table))
    return 0 if all("| ok |" in row for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
