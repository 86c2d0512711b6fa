"""Seconds per model-epoch: the docs' way vs initbench's single-run trainer vs initbench batched.

    python scripts/bench.py                       # GPU: CIFAR-10/MNIST-sized sets, K = 1, 8, 32, 128
    python scripts/bench.py --device cpu          # CPU: smaller sets and K, under 3 minutes on 2 cores

One process, synthetic data of the real shapes (uint8 images, random labels), batch 128, SGD with
momentum, default init. Per model family (LeNet on 3x32x32, MLP depth 30 width 256 on 1x28x28, LSTM
128 reading 28 rows of 28):
  (a) the docs' way: a Dataset that makes a PIL image and applies torchvision's ToTensor + Normalize
      per sample, a shuffling DataLoader (--workers processes), .to(device) per batch; training only;
  (a2) eager PyTorch with the data on the device: the same loop, a batch is an index; training only;
  (b) initbench.train.fit: data on the device, metrics, gradient norms, init probe and test-set
      evaluation (test set = train size / 5) included, nothing logged; its step under torch.compile
      as --compile and --compile-mode say (auto: on CUDA), as trainer.compile does;
  (c) initbench.batched.fit_batched with K models: the same work for K models at once; on the CPU,
      also what hydra/launcher=batched in mode auto picks for that K (it measures a few steps): vmap,
      or fit() one model after another (then the figure is (b)'s).
The targets on a GPU: (b) at least 4x (a2); (c) at K = 128 for LeNet at most 0.025 s per model-epoch
in float32 and 0.015 s with --precision bf16.
Each figure is a warm epoch, wall clock with the device synchronized: the second of two for (a) and
(a2), the third of three for (b) and (c) (torch.compile compiles the step with gradient norms in the
first epoch and without them in the second). Peak memory is the CUDA allocator's peak (n/a on CPU).
"""

import argparse
import time

import numpy as np
import torch
import torchvision.transforms as T
from omegaconf import OmegaConf
from PIL import Image
from torch.nn import functional as F

from initbench.batched import fit_batched
from initbench.batched.sweep import batching_pays
from initbench.data import Dataset
from initbench.devices import resolve_device
from initbench.models import DataShape, build_model
from initbench.train import COMPILE_MODES, PRECISIONS, fit, float32_math

FAMILIES = {  # name -> (model config, (C, H, W), train size on GPU, train size on CPU)
    "lenet": ({"name": "lenet"}, (3, 32, 32), 50_000, 2048),
    "mlp": ({"name": "mlp", "depth": 30, "width": 256}, (1, 28, 28), 60_000, 2048),
    "lstm": ({"name": "lstm", "hidden_size": 128}, (1, 28, 28), 60_000, 2048),
}
RATIO_TO = ("(a)", "(a2)", "(b)")
OPTIMIZER = OmegaConf.create({"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01, "momentum": 0.9,
                              "weight_decay": 0.0})


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def synthetic(shape, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, shape[1], shape[2], shape[0]), dtype=np.uint8), rng.integers(0, 10, n)


class DocsDataset(torch.utils.data.Dataset):
    """torchvision's dataset classes: a PIL image per sample, then the transform."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        channels = images.shape[-1]
        self.transform = T.Compose([T.ToTensor(), T.Normalize((0.5,) * channels, (0.25,) * channels)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = self.images[i]
        image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
        return self.transform(image), int(self.labels[i])


def tutorial_loop(model, batches, device) -> float:
    """Seconds for the second of two epochs of the tutorials' training loop over batches() (x, y)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(2):
        sync(device)
        start = time.perf_counter()
        for x, y in batches():
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times[-1]


def docs_way(model, images, labels, device, workers: int) -> float:
    """(a): per-sample transforms in a shuffling DataLoader, each batch copied to the device."""
    loader = torch.utils.data.DataLoader(DocsDataset(images, labels), batch_size=128, shuffle=True,
                                         num_workers=workers, pin_memory=device.type == "cuda")
    return tutorial_loop(model, lambda: ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                                         for x, y in loader), device)


def eager_on_device(model, data: Dataset, device) -> float:
    """(a2): the data already on the device; a batch is an index into it."""
    n = len(data.train_y)
    return tutorial_loop(model, lambda: ((data.train_x[idx], data.train_y[idx])
                                         for idx in torch.randperm(n, device=device).split(128)), device)


def as_dataset(images, labels, device) -> Dataset:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.25).to(device)
    y = torch.from_numpy(labels).long().to(device)
    n_test = max(1, len(y) // 5)
    return Dataset("synthetic", x, y, x[:n_test], y[:n_test])


class EpochClock:
    """A log callback (of one model, or shared by K) that notes when each epoch's metrics have arrived:
    the next epoch starts then."""

    def __init__(self):
        self.epoch_ends: dict[int, float] = {}

    def __call__(self, points):
        for key, _, epoch in points:
            if key == "test/acc":
                self.epoch_ends[epoch] = time.perf_counter()


def last_epoch(train, device) -> float:
    """Seconds of the last epoch of train(log): from the previous epoch's metrics to the end."""
    clock = EpochClock()
    train(clock)
    sync(device)
    return time.perf_counter() - clock.epoch_ends[max(clock.epoch_ends) - 1]


def bench_family(family: str, args, device: torch.device, ks: list[int], compile) -> None:
    model_cfg, shape, n_gpu, n_cpu = FAMILIES[family]
    gpu = device.type == "cuda"
    n = args.n or (n_gpu if gpu else n_cpu)
    images, labels = synthetic(shape, n)
    data = as_dataset(images, labels, device)
    # three epochs: the first compiles the step with gradient norms, the second without, the third is timed
    trainer = OmegaConf.create({"epochs": 3, "batch_size": 128, "schedule": "constant", "eval_batch_size": 1024,
                                "progress": False, "precision": args.precision, "compile": compile,
                                "compile_mode": args.compile_mode})

    def build(seed):
        torch.manual_seed(seed)
        return build_model(model_cfg, DataShape(*shape, 10)).to(device)

    bases = {}  # way -> seconds per model-epoch, for the ratio columns

    def row(way, k, seconds):
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**20:9.0f}" if gpu else f"{'n/a':>9}"
        per = seconds / k
        ratios = " ".join(f"{bases[b] / per:7.2f}x" if b in bases else f"{'-':>8}" for b in RATIO_TO)
        print(f"{family:6} {way:14} {k:4d} {n:6d} {seconds:9.3f} {per:14.4f} {ratios} {peak}", flush=True)

    def reset():
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)

    with float32_math(trainer):  # the baselines in the trainers' float32 math (IEEE, or TF32 with tf32)
        if not args.skip_docs:
            reset()
            bases["(a)"] = docs_way(build(0), images, labels, device, args.workers)
            row("(a) docs", 1, bases["(a)"])
        reset()
        bases["(a2)"] = eager_on_device(build(0), data, device)
        row("(a2) eager dev", 1, bases["(a2)"])
    reset()
    seconds = last_epoch(lambda log: fit(build(0), data, trainer, OPTIMIZER, 0, log=log), device)
    row("(b) fit", 1, seconds)
    bases["(b)"] = seconds
    for k in ks:
        reset()
        models = [build(seed) for seed in range(k)]
        seconds = last_epoch(lambda log, models=models: fit_batched(
            models, data, trainer, OPTIMIZER, list(range(len(models))), logs=[log] * len(models),
            compile=compile, compile_mode=args.compile_mode), device)
        row("(c) batched", k, seconds)
        if not gpu and k > 1 and args.precision == "float32":
            # what hydra/launcher=batched (mode auto) does with this chunk on the CPU: it measures
            pays, _, _ = batching_pays(models[:8], data, trainer, OPTIMIZER)
            row("(c) auto:" + ("vmap" if pays else "fit"), k, seconds if pays else bases["(b)"] * k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--models", default="lenet,mlp,lstm")
    parser.add_argument("--ks", default=None, help="comma-separated K (GPU: 1,8,32,128; CPU: 1,8)")
    parser.add_argument("--n", type=int, default=None, help="training examples (default: per family)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for (a), as the docs")
    parser.add_argument("--precision", default="float32", choices=list(PRECISIONS),
                        help="trainer.precision for (b) and (c); (a) and (a2) run in its float32 math")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"],
                        help="torch.compile the training steps of (b) and (c): auto = on CUDA")
    parser.add_argument("--compile-mode", default=None, choices=[m for m in COMPILE_MODES if m],
                        help="torch.compile's mode (default: its own); reduce-overhead adds CUDA graphs")
    parser.add_argument("--skip-docs", action="store_true")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    ks = [int(k) for k in (args.ks or ("1,8,32,128" if device.type == "cuda" else "1,8")).split(",")]
    compile = {"auto": "auto", "on": True, "off": False}[args.compile]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__} on {name}; precision {args.precision}, compile {args.compile}"
          f"{f' ({args.compile_mode})' if args.compile_mode else ''}", flush=True)
    print(f"{'model':6} {'way':14} {'K':>4} {'n':>6} {'s/epoch':>9} {'s/model-epoch':>14} "
          + " ".join(f"{'vs ' + b:>8}" for b in RATIO_TO) + f" {'peak MiB':>9}", flush=True)
    for family in args.models.split(","):
        bench_family(family, args, device, ks, compile)


if __name__ == "__main__":
    main()
