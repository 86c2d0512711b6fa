"""Datasets: the offline digits set, and torchvision's real loaders on files written in their formats."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
import torchvision

from initbench import packaged_data
from initbench.data import DatasetUnavailable, load_dataset
from initbench.packaged_data import DatasetCorrupt
from initbench.testing import cli, runs_in

FASHION = packaged_data.FOLDERS["fashion_mnist"]
needs_fashion = pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} is absent: apt-get install "
                                   "dataset-fashion-mnist (.ci/run does it when run as root)")


def test_digits_is_a_fixed_stratified_normalized_split():
    a = load_dataset({"name": "digits", "test_fraction": 0.2, "split_seed": 0}, "/nonexistent")
    b = load_dataset({"name": "digits", "test_fraction": 0.2, "split_seed": 0}, "/nonexistent")
    assert a.train_x.shape == (1437, 1, 8, 8) and a.test_x.shape == (360, 1, 8, 8)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert a.train_x.dtype == torch.float32 and a.train_y.dtype == torch.long
    assert abs(a.train_x.mean().item()) < 1e-5 and abs(a.train_x.std().item() - 1) < 1e-4
    train_share = torch.bincount(a.train_y) / len(a.train_y)
    test_share = torch.bincount(a.test_y) / len(a.test_y)
    assert (train_share - test_share).abs().max() < 0.01  # stratified
    assert a.shape.num_classes == 10


def test_digits_resized_and_subset():
    d = load_dataset({"name": "digits", "train_size": 100, "split_seed": 3}, "/x", image_size=32)
    assert d.train_x.shape == (100, 1, 32, 32) and d.test_x.shape[1:] == (1, 32, 32)


def test_validation_set_is_held_out_stratified_and_fixed_by_split_seed():
    full = load_dataset({"name": "digits"}, "unused")
    data = load_dataset({"name": "digits", "val_size": 0.1}, "unused")
    assert len(data.val_y) == 144 and len(data.train_y) == len(full.train_y) - 144  # 10% of 1,437
    assert torch.equal(data.test_y, full.test_y)  # the same test images (normalized with the new train stats)
    counts = torch.bincount(data.val_y, minlength=10)
    assert counts.min() >= 13 and counts.max() <= 16  # stratified: ~14.4 of each class
    raw = load_dataset({"name": "digits", "val_size": 0.1, "split_seed": 0}, "unused")
    assert raw.digest("val") == data.digest("val")  # fixed by split_seed
    other = load_dataset({"name": "digits", "val_size": 0.1, "split_seed": 1}, "unused")
    assert other.digest("val") != data.digest("val")
    assert len(load_dataset({"name": "digits", "val_size": 50}, "unused").val_y) == 50  # a count
    quick = load_dataset({"name": "digits", "val_size": 0.1, "train_size": 100}, "unused")
    assert len(quick.train_y) == 100 and torch.equal(quick.val_y, data.val_y)  # the subset is of the rest
    assert data.has_val and not full.has_val


def test_digest_names_the_exact_tensors():
    """Equal digests mean the same data: what the MLflow dataset inputs of a comparison rely on."""
    a, b = (load_dataset({"name": "digits"}, "unused") for _ in range(2))
    assert a.digest("train") == b.digest("train") and a.digest("test") == b.digest("test")
    assert a.digest("train") != a.digest("test")
    assert load_dataset({"name": "digits", "train_size": 100}, "unused").digest("train") != a.digest("train")
    assert load_dataset({"name": "digits", "split_seed": 1}, "unused").digest("test") != a.digest("test")
    c = load_dataset({"name": "digits"}, "unused")
    c.train_y[0] = (c.train_y[0] + 1) % 10  # one label differs
    assert c.digest("train") != a.digest("train")


def test_unknown_dataset_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; valid: digits, mnist, fashion_mnist, cifar10"):
        load_dataset({"name": "imagenet"}, "/x")


def write_idx(path, array: np.ndarray) -> None:
    """The idx format MNIST ships in: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_format_files_are_read_by_torchvision(tmp_path, monkeypatch, name, folder):
    monkeypatch.setitem(packaged_data.FOLDERS, "fashion_mnist", tmp_path / "no-package")  # not installed
    rng = np.random.default_rng(0)
    raw = tmp_path / folder / "raw"
    raw.mkdir(parents=True)
    train_images = rng.integers(0, 256, (50, 28, 28))
    train_labels = np.arange(50) % 10
    write_idx(raw / "train-images-idx3-ubyte", train_images)
    write_idx(raw / "train-labels-idx1-ubyte", train_labels)
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (20, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.arange(20) % 10)
    data = load_dataset({"name": name}, tmp_path)
    assert data.train_x.shape == (50, 1, 28, 28) and data.test_x.shape == (20, 1, 28, 28)
    assert data.train_y.tolist() == train_labels.tolist()
    # normalized from the real pixel values, not re-ordered
    pixels = torch.tensor(train_images, dtype=torch.float32)
    expected = (pixels - pixels.mean()) / pixels.std()
    assert torch.allclose(data.train_x[:, 0], expected, atol=1e-5)


@needs_fashion
def test_fashion_mnist_comes_from_debians_package_offline():
    """The package's 60,000 + 10,000 images, whatever data_dir says (nothing is read or written there)."""
    data = load_dataset({"name": "fashion_mnist", "val_size": 0.1, "split_seed": 0}, "/nonexistent")
    assert data.train_x.shape == (54_000, 1, 28, 28) and data.val_x.shape == (6_000, 1, 28, 28)
    assert data.test_x.shape == (10_000, 1, 28, 28) and data.shape.num_classes == 10
    assert data.test_y.bincount().tolist() == [1_000] * 10  # the published test set: 1,000 per class
    assert data.val_y.bincount().tolist() == [600] * 10  # stratified
    assert abs(data.train_x.mean().item()) < 1e-4 and abs(data.train_x.std().item() - 1) < 1e-3
    raw = packaged_data.packaged("fashion_mnist")
    assert raw[2][:3].tolist() == [9, 0, 0]  # the first training images: ankle boot, T-shirt, T-shirt


def test_a_package_file_that_differs_is_refused_by_name(tmp_path, monkeypatch):
    """Files in the package's layout whose content is not the package's: refused, naming the file and
    how to reinstall, before anything is trained; a file that is no gzip at all too."""
    for file, _ in packaged_data.FILES["fashion_mnist"]:
        (tmp_path / file).write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab"))
    monkeypatch.setitem(packaged_data.FOLDERS, "fashion_mnist", tmp_path)
    with pytest.raises(DatasetCorrupt) as info:
        load_dataset({"name": "fashion_mnist"}, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in message and "sha256" in message
    assert "apt-get install --reinstall dataset-fashion-mnist" in message
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")
    with pytest.raises(DatasetCorrupt, match="train-images-idx3-ubyte.gz cannot be read"):
        load_dataset({"name": "fashion_mnist"}, tmp_path)


def test_cifar10_format_files_are_read_by_torchvision(tmp_path, monkeypatch):
    # CIFAR-10 checks each batch file's md5 against the real archive's; only the test patches that.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": list(range(4))}
        batches[name] = batch
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    data = load_dataset({"name": "cifar10"}, tmp_path, image_size=32)
    assert data.train_x.shape == (20, 3, 32, 32) and data.test_x.shape == (4, 3, 32, 32)
    first = torch.tensor(batches["data_batch_1"]["data"][0].reshape(3, 32, 32), dtype=torch.float32)
    # channel 0 of image 0, un-normalized with the training set's channel statistics
    raw = torch.stack([torch.tensor(batches[f"data_batch_{i}"]["data"].reshape(4, 3, 32, 32)) for i in range(1, 6)])
    raw = raw.flatten(0, 1).float()
    mean, std = raw[:, 0].mean(), raw[:, 0].std()
    assert torch.allclose(data.train_x[0, 0], (first[0] - mean) / std, atol=1e-5)


def test_missing_dataset_names_folder_files_and_offline_alternative(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", no_network)
    with pytest.raises(DatasetUnavailable) as info:
        load_dataset({"name": "mnist"}, tmp_path)
    message = str(info.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "dataset=digits" in message
    assert "network is unreachable" in message


@needs_fashion
def test_a_run_trains_on_fashion_mnist_offline(tmp_path):
    """`initbench dataset=fashion_mnist` on a machine without network: the package's data, trained on."""
    done = cli("dataset=fashion_mnist", "model=mlp", "dataset.train_size=2000", "trainer.epochs=2",
               "trainer.progress=false", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [run] = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}", "initbench")
    assert run.data.params["dataset.name"] == "fashion_mnist" and run.info.status == "FINISHED"
    assert run.data.metrics["test/acc"] > 0.5  # chance: 0.1
    assert not (tmp_path / "data" / "FashionMNIST").exists()  # nothing downloaded into data_dir
