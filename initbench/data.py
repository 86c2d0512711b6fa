"""Datasets as normalized tensors on the training device: a batch is an index into them.

`digits` is scikit-learn's bundled 8x8 set (offline); `mnist1d` is generated offline by the `mnist1d`
package and cached in `data_dir`; `fashion_mnist` is read from Debian's package dataset-fashion-mnist
where it is installed (initbench.packaged_data: offline, its content checked); otherwise it, `mnist` and
`cifar10` are read with torchvision's own dataset classes from `data_dir`, downloaded there on first use.
"""

import functools
import hashlib
import json
import logging
import math
import os
import random
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.nn import functional as F

from .models import DataShape
from .packaged_data import packaged

logger = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")


@dataclass
class Dataset:
    """Train, validation and test images (N, C, H, W) float32, normalized with the training set's
    per-channel mean and std, and integer labels, all on one device. The validation set is held out
    of the training set (it may be empty: no validation); models are selected on it, never on test."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_x: torch.Tensor | None = None  # None: no validation set (empty tensors)
    val_y: torch.Tensor | None = None
    _digests: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.val_x is None:
            self.val_x = self.train_x[:0]
            self.val_y = self.train_y[:0]

    @property
    def has_val(self) -> bool:
        return len(self.val_y) > 0

    def digest(self, split: str) -> str:
        """sha256 (16 hex digits) of the `split` ("train", "val" or "test") tensors exactly as trained or tested
        on (normalized images, then labels): equal digests, equal data. Computed once per split."""
        if split not in self._digests:
            hasher = hashlib.sha256()
            for tensor in (getattr(self, f"{split}_x"), getattr(self, f"{split}_y")):
                hasher.update(tensor.detach().cpu().contiguous().numpy().tobytes())
            self._digests[split] = hasher.hexdigest()[:16]
        return self._digests[split]

    @property
    def shape(self) -> DataShape:
        _, c, h, w = self.train_x.shape
        return DataShape(c, h, w, int(max(self.train_y.max(), self.test_y.max())) + 1)


class DatasetUnavailable(FileNotFoundError):
    """A torchvision dataset is not in data_dir and could not be downloaded."""


def _digits(cfg) -> tuple[np.ndarray, ...]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = digits.images[:, None].astype(np.float32)  # (1797, 1, 8, 8), values 0..16
    return train_test_split(
        images,
        digits.target,
        test_size=cfg.get("test_fraction", 0.2),
        stratify=digits.target,
        random_state=cfg.get("split_seed", 0),
    )


MNIST1D_ARGS = {"num_samples": "num_samples", "generator_seed": "seed"}  # config key -> make_dataset's arg


@contextmanager
def _global_rng_kept():
    """Within, Python's and NumPy's global RNGs may be reseeded and drawn from; on exit both are as before."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _mnist1d_args(cfg) -> dict:
    """make_dataset's args: the package's defaults, with the config's size, test fraction and seed."""
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    del args["url"]  # where the package downloads its own copy from: not a generation arg
    args.update({arg: cfg[key] for key, arg in MNIST1D_ARGS.items() if cfg.get(key) is not None})
    if cfg.get("test_fraction") is not None:
        args["train_split"] = 1 - cfg["test_fraction"]
    return args


def _generate_mnist1d(args: dict) -> dict[str, np.ndarray]:
    """mnist1d's make_dataset(args): x (N, length) float64 and y int64 of the train and test splits. It
    seeds the global RNGs with args["seed"]; they are restored after."""
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    with _global_rng_kept():
        made = make_dataset(ObjectView(dict(args)))
    return {key: made[key] for key in ("x", "x_test", "y", "y_test")}


def _save_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez to a temporary file next to `path`, then rename: readers see a whole file or none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        os.chmod(tmp, 0o644)  # mkstemp's 0o600 would hide a shared data_dir's cache from other users
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _mnist1d(cfg, root: Path) -> tuple[np.ndarray, ...]:
    """MNIST-1D (Greydanus & Kobak 2024) as the mnist1d package generates it, read from a cache file in
    root/mnist1d named by the generation args (and the package version) when one is there.

    A sequence of L steps of 1 feature is an image (1, L, 1): C=1 channel, H=L rows of W=1 pixel, so `mlp`
    flattens it to L features, `lstm` and `gru` read L rows of C*W=1 feature and `cnn1d` convolves C*W=1 channel
    along H=L steps."""
    args = _mnist1d_args(cfg)
    key = json.dumps({"args": args, "mnist1d": version("mnist1d")}, sort_keys=True)
    path = root / "mnist1d" / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as cached:
            arrays = {name: cached[name] for name in cached.files}
    else:
        arrays = _generate_mnist1d(args)
        try:
            _save_atomic(path, arrays)
        except OSError as err:  # a read-only data_dir: generate each time
            logger.warning("could not cache MNIST-1D in %s (%s); it is generated again next time", path, err)
    as_images = [x[:, None, :, None] for x in (arrays["x"], arrays["x_test"])]  # (N, L) -> (N, 1, L, 1)
    return (*as_images, arrays["y"], arrays["y_test"])


# name -> (torchvision.datasets class, folder it keeps under data_dir, files it reads there); torchvision is
# imported when one is opened: its import (torch._dynamo, through torchvision.ops) costs 1.5 s a process
TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw",
              ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw",
                      ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "cifar10": ("CIFAR10", "cifar-10-batches-py",
                [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
}
VALID = ["digits", *TORCHVISION, "mnist1d"]
SEQUENCES = ("mnist1d",)  # 1-D sequences, (1, length, 1) per example: nothing to resize as an image


def _open_torchvision(name: str, root: Path, train: bool):
    import torchvision

    class_name, folder, files = TORCHVISION[name]
    cls = getattr(torchvision.datasets, class_name)
    try:
        return cls(str(root), train=train, download=False)
    except RuntimeError:
        pass  # not there yet: try to download it
    try:
        return cls(str(root), train=train, download=True)
    except Exception as err:  # no network, a mirror down, a corrupt archive ...
        raise DatasetUnavailable(
            f"dataset {name!r} is not in {root / folder} (expected files: {', '.join(files)}) and could "
            f"not be downloaded: {type(err).__name__}: {err}. Download it on a machine with network "
            f"access (python -m initbench dataset={name} there, then copy {root}) or point "
            f"paths.data_dir (or INITBENCH_DATA_DIR) at a folder that has it; to run offline, use "
            f"dataset=digits."
        ) from err


def _as_nchw(images) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim == 3:  # (N, H, W) grayscale
        return images[:, None]
    return images.transpose(0, 3, 1, 2)  # CIFAR: (N, H, W, C)


def _torchvision(name: str, root: Path) -> tuple[np.ndarray, ...]:
    train, test = (_open_torchvision(name, root, flag) for flag in (True, False))
    return (_as_nchw(train.data), _as_nchw(test.data),
            np.asarray(train.targets), np.asarray(test.targets))


class DataSizeError(ValueError):
    """dataset.train_size or dataset.val_size asks for more examples than the dataset has."""


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (ddof 1, at least 1e-8) of images (N, C, H, W), shaped (1, C, 1, 1), summed in
    float64: a float32 sum's rounding depends on how many threads share it, and with it every normalized
    pixel and the data's digest; in float64 the float32 result is the same on any thread count."""
    dims, count = (0, 2, 3), x.numel() // x.shape[1]
    mean = (x.sum(dim=dims, keepdim=True, dtype=torch.float64) / count).float()
    var = (x - mean).square().sum(dim=dims, keepdim=True, dtype=torch.float64) / max(count - 1, 1)
    return mean, var.sqrt().float().clamp_min(1e-8)


def _subset(x: torch.Tensor, y: torch.Tensor, size: int | None, seed: int, name: str):
    """`size` examples drawn with `seed` (all for None); more than there are is refused, not capped,
    so that the recorded train_size is the one trained on."""
    if size is None or size == len(y):
        return x, y
    if not 1 <= size <= len(y):
        raise DataSizeError(f"dataset.train_size={size}: {name} has {len(y)} training examples (after the "
                            f"validation split, if any); valid: 1 to {len(y)}, or null for all of them")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
    return x[keep], y[keep]


def _val_indices(labels: np.ndarray, val_size: float | int | None, seed: int, name: str) -> np.ndarray:
    """Indices of a stratified validation set of `val_size` examples (a count >= 1, or a fraction in
    (0, 1) of the training set, rounded up as scikit-learn does), drawn with `seed`; none for 0 or None.
    Each side of the split needs one example per class at least."""
    if not val_size:
        return np.arange(0)
    from sklearn.model_selection import train_test_split

    n, classes = len(labels), len(np.unique(labels))
    count = math.ceil(val_size * n) if isinstance(val_size, float) else val_size
    if not classes <= count <= n - classes:
        raise DataSizeError(f"dataset.val_size={val_size}: holds out {count} of the {n} training examples of "
                            f"{name}, but a split stratified over its {classes} classes needs one of each on both "
                            f"sides; valid: a count from {classes} to {n - classes}, a fraction giving one, 0 or null")

    _, val = train_test_split(np.arange(len(labels)), test_size=val_size, stratify=labels, random_state=seed)
    return np.sort(val)


def load_dataset(cfg: DictConfig | dict, data_dir: str | Path, device: torch.device | str = "cpu",
                 image_size: int | None = None) -> Dataset:
    """Load the dataset `cfg.name`; hold out cfg.val_size of its training set as a stratified
    validation set (fixed by cfg.split_seed; none if absent), then keep cfg.train_size of the rest if
    given; resize to image_size x image_size if given, normalize per channel with the training
    set's statistics, and put it on `device`."""
    name = cfg.get("name")
    if name == "digits":
        train_x, test_x, train_y, test_y = _digits(cfg)
    elif name == "mnist1d":
        train_x, test_x, train_y, test_y = _mnist1d(cfg, Path(data_dir).expanduser())
    elif name in TORCHVISION:
        found = packaged(name)
        train_x, test_x, train_y, test_y = found if found else _torchvision(name, Path(data_dir).expanduser())
    else:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(VALID)}")
    seed = cfg.get("split_seed", 0)
    held_out = _val_indices(np.asarray(train_y), cfg.get("val_size"), seed, name)
    kept = np.setdiff1d(np.arange(len(train_y)), held_out)

    def to_tensors(x, y):
        x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
        if image_size is not None and x.shape[-1] != image_size:
            x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return x, torch.as_tensor(y, dtype=torch.long, device=device)

    val_x, val_y = to_tensors(train_x[held_out], np.asarray(train_y)[held_out])
    train_x, train_y = _subset(*to_tensors(train_x[kept], np.asarray(train_y)[kept]), cfg.get("train_size"), seed, name)
    test_x, test_y = to_tensors(test_x, test_y)
    mean, std = channel_stats(train_x)
    return Dataset(name, (train_x - mean) / std, train_y, (test_x - mean) / std, test_y,
                   (val_x - mean) / std, val_y)


def shared_dataset(cfg: DictConfig | dict, data_dir: str | Path, device: torch.device | str = "cpu",
                   image_size: int | None = None) -> Dataset:
    """load_dataset, kept for the next call with the same arguments: the jobs a launcher runs one after
    another in one process (Hydra's basic launcher) load their data once. One entry: another dataset
    replaces it. The tensors are shared by those jobs, so nothing may change them in place (nothing does:
    batches are indexed copies)."""
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    return _shared_dataset(json.dumps(container, sort_keys=True), str(data_dir), str(device), image_size)


@functools.lru_cache(maxsize=1)
def _shared_dataset(cfg_json: str, data_dir: str, device: str, image_size: int | None) -> Dataset:
    return load_dataset(json.loads(cfg_json), data_dir, device, image_size)
