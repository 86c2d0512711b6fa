"""MNIST-1D (dataset=mnist1d): the mnist1d package's sequences as (N, 1, L, 1) images, normalized, cached,
generated without touching the caller's RNGs; cnn1d, the paper's ConvBase, and gru, its GRUBase."""

import logging
import random

import numpy as np
import pytest
import torch
from mnist1d.data import get_dataset_args, make_dataset
from omegaconf import open_dict
from torch import nn

from initbench.config import ConfigError, check_config
from initbench.data import load_dataset
from initbench.models import DataShape, build_model
from initbench.models.cnn1d import CNN1d
from initbench.run import prepare
from initbench.train import fit

from .conftest import compose_config

SMALL = {"name": "mnist1d", "num_samples": 500, "val_size": 0}  # 0.1 s to generate, not 1.2 s


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data_dir holding the default MNIST-1D, generated once for this module."""
    root = tmp_path_factory.mktemp("data")
    load_dataset({"name": "mnist1d"}, root)
    return root


def test_the_default_is_the_papers_dataset_as_sequences_normalized_with_training_statistics(data_dir):
    made = make_dataset(get_dataset_args())  # the package's own: 4,000 + 1,000 sequences of 40 steps
    data = load_dataset({"name": "mnist1d", "val_size": 0}, data_dir)
    assert data.train_x.shape == (4000, 1, 40, 1) and data.test_x.shape == (1000, 1, 40, 1)
    assert data.shape == DataShape(1, 40, 1, 10)
    raw_train, raw_test = (torch.as_tensor(made[k], dtype=torch.float32) for k in ("x", "x_test"))
    mean, std = raw_train.mean(), raw_train.std()
    assert torch.allclose(data.train_x[:, 0, :, 0], (raw_train - mean) / std, atol=1e-5)
    assert torch.allclose(data.test_x[:, 0, :, 0], (raw_test - mean) / std, atol=1e-5)
    assert torch.equal(data.train_y, torch.as_tensor(made["y"]))
    assert torch.equal(data.test_y, torch.as_tensor(made["y_test"]))
    assert abs(data.train_x.mean().item()) < 1e-5 and abs(data.train_x.std().item() - 1) < 1e-5


def test_generation_leaves_the_callers_rngs_as_they_were(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    before = random.getstate(), np.random.get_state(), torch.get_rng_state()
    load_dataset(SMALL, tmp_path)  # a cache miss: make_dataset seeds and draws from the global RNGs
    assert random.getstate() == before[0]
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), before[1], strict=True))
    assert torch.equal(torch.get_rng_state(), before[2])


def test_the_cache_file_is_named_by_the_generation_args_and_read_back_without_generating(tmp_path, monkeypatch):
    first = load_dataset(SMALL, tmp_path)
    [cached] = (tmp_path / "mnist1d").iterdir()  # one whole file, no temporary left
    assert cached.suffix == ".npz"
    monkeypatch.setattr("initbench.data._generate_mnist1d", lambda args: pytest.fail("generated again"))
    again = load_dataset(SMALL, tmp_path)
    assert all(first.digest(split) == again.digest(split) for split in ("train", "test"))
    monkeypatch.undo()
    other = load_dataset({**SMALL, "generator_seed": 7}, tmp_path)
    assert len(list((tmp_path / "mnist1d").iterdir())) == 2 and other.digest("train") != first.digest("train")


def test_size_split_and_seed_come_from_the_config(tmp_path):
    data = load_dataset({**SMALL, "num_samples": 1000, "test_fraction": 0.3, "val_size": 70}, tmp_path)
    assert (len(data.train_y), len(data.val_y), len(data.test_y)) == (630, 70, 300)
    counts = torch.bincount(data.val_y)
    assert counts.min() >= 6 and counts.max() <= 8  # stratified: about 7 of each class
    same = load_dataset({**SMALL, "num_samples": 1000, "test_fraction": 0.3, "val_size": 70}, tmp_path / "b")
    assert same.digest("train") == data.digest("train")  # generated again, elsewhere: the same data


def test_an_unwritable_data_dir_still_gives_the_dataset(tmp_path, caplog):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with caplog.at_level(logging.WARNING, logger="initbench.data"):
        data = load_dataset(SMALL, not_a_folder)
    assert data.train_x.shape == (400, 1, 40, 1) and "could not cache MNIST-1D" in caplog.text


class ConvBase(nn.Module):
    """The paper's CNN, as github.com/greydanus/mnist1d notebooks/models.py writes it (print left out)."""

    def __init__(self, output_size, channels=25, linear_in=125):
        super().__init__()
        self.conv1 = nn.Conv1d(1, channels, 5, stride=2, padding=1)
        self.conv2 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.conv3 = nn.Conv1d(channels, channels, 3, stride=2, padding=1)
        self.linear = nn.Linear(linear_in, output_size)

    def forward(self, x):
        x = x.view(-1, 1, x.shape[-1])
        h3 = self.conv3(self.conv2(self.conv1(x).relu()).relu()).relu()
        return self.linear(h3.view(h3.shape[0], -1))


def test_cnn1d_is_the_papers_convbase():
    model = build_model({"name": "cnn1d"}, DataShape(1, 40, 1, 10))
    paper = ConvBase(10)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in paper.parameters()) == 5210
    model.load_state_dict(dict(zip(model.state_dict(), paper.state_dict().values(), strict=True)))
    x = torch.randn(8, 1, 40, 1)
    assert torch.allclose(model(x), paper(x[:, 0, :, 0]), atol=1e-6)


class GRUBase(nn.Module):
    """The paper's GRU, as github.com/greydanus/mnist1d notebooks/models.py writes it (print and h0 left out:
    its h0 is zeros, nn.GRU's default)."""

    def __init__(self, output_size, hidden_size=6, time_steps=40):
        super().__init__()
        self.gru = nn.GRU(input_size=1, hidden_size=hidden_size, batch_first=True, bidirectional=True)
        self.linear = nn.Linear(2 * hidden_size * time_steps, output_size)

    def forward(self, x):
        output, _ = self.gru(x.view(*x.shape[:2], 1))
        return self.linear(output.reshape(output.shape[0], -1))


def test_gru_is_the_papers_grubase():
    model = build_model({"name": "gru", "hidden_size": 6, "num_layers": 1, "bidirectional": True, "readout": "all"},
                        DataShape(1, 40, 1, 10))
    paper = GRUBase(10)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in paper.parameters()) == 5134
    model.load_state_dict(dict(zip(model.state_dict(), paper.state_dict().values(), strict=True)))
    x = torch.randn(8, 1, 40, 1)
    assert torch.allclose(model(x), paper(x[:, 0, :, 0]), atol=1e-6)


def test_the_lstm_reads_the_last_step_and_the_gru_config_is_the_papers():
    lstm = build_model({"name": "lstm", "hidden_size": 5}, DataShape(1, 40, 1, 10))
    x = torch.randn(3, 1, 40, 1)
    out, _ = lstm.rnn(x[:, 0])
    assert isinstance(lstm.rnn, nn.LSTM) and torch.equal(lstm(x), lstm.head(out[:, -1]))
    cfg = compose_config(["dataset=mnist1d", "model=gru"])
    check_config(cfg)
    assert dict(cfg.model) == {"name": "gru", "hidden_size": 6, "num_layers": 1, "bidirectional": True,
                               "readout": "all"}


def test_cnn1d_reads_an_image_as_rows_of_channel_times_width_features():
    model = CNN1d(3 * 4, 6, num_classes=2, channels=5, kernel_sizes=(3,), stride=1, padding=0)
    x = torch.randn(2, 3, 6, 4)
    sequence = x.permute(0, 2, 1, 3).flatten(2)  # (N, H, C*W): the rows RowLSTM reads, feature c*W + w
    expected = model.head(torch.relu(model.convs[0](sequence.transpose(1, 2))).flatten(1))
    assert torch.allclose(model(x), expected, atol=1e-6)


def test_a_sequence_too_short_for_the_convs_is_refused_naming_the_sizes():
    with pytest.raises(ValueError, match=r"a sequence of 2 steps is too short for model.kernel_sizes=\[5, 3, 3\]"):
        build_model({"name": "cnn1d"}, DataShape(1, 2, 1, 10))


@pytest.mark.parametrize("model", ["mlp", "lstm", "gru", "cnn1d"])
def test_dataset_mnist1d_composes_and_each_sequence_model_takes_it(model, data_dir):
    cfg = compose_config(["dataset=mnist1d", f"model={model}", f"paths.data_dir={data_dir}"])
    check_config(cfg)
    assert (cfg.dataset.num_samples, cfg.dataset.generator_seed) == (5000, 42)
    job = prepare(cfg)
    assert job.model(job.data.train_x[:4]).shape == (4, 10)


@pytest.mark.parametrize("override,bad,valid", [
    ("model.kernel_sizes=[]", "model.kernel_sizes=[]", "a non-empty list of integers >= 1"),
    ("model.stride=0", "model.stride=0", "an integer >= 1"),
    ("model.padding=-1", "model.padding=-1", "an integer >= 0"),
    ("dataset.num_samples=5", "dataset.num_samples=5", "an integer >= 10"),
    ("model.readout=first", "model.readout='first'", "one of last, all"),
    ("model.hidden_size=0", "model.hidden_size=0", "an integer >= 1"),
    ("dataset.generator_seed=-1", "dataset.generator_seed=-1", "an integer in [0, 4294967295]"),
])
def test_a_bad_value_is_refused_naming_it_and_what_is_valid(override, bad, valid):
    model = "gru" if override.startswith(("model.readout", "model.hidden_size")) else "cnn1d"
    with pytest.raises(ConfigError) as err:
        check_config(compose_config(["dataset=mnist1d", f"model={model}", override]))
    assert bad in str(err.value) and valid in str(err.value)


def test_cnn1d_learns_mnist1d(data_dir):
    """Three epochs of the paper's settings (Adam, lr 1e-2, batch 100) lift test accuracy far above chance."""
    cfg = compose_config(["dataset=mnist1d", "model=cnn1d", "optimizer=adam", "optimizer.lr=0.01",
                          "trainer.batch_size=100", "trainer.epochs=3", f"paths.data_dir={data_dir}"])
    with open_dict(cfg):
        cfg.dataset.val_size = 0
    job = prepare(cfg)
    result = fit(job.model, job.data, cfg.trainer, cfg.optimizer, cfg.seed)
    assert result.final["test/acc"] > 0.5


def test_the_normalized_data_and_its_digest_do_not_depend_on_the_thread_count(data_dir):
    """The per-channel statistics are summed in float64: in float32 the 3,600 x 40 values' sum rounded
    differently on 1 and 2 threads, so every normalized value, the digest and the linear-baseline cache
    key changed with OMP_NUM_THREADS."""
    threads = torch.get_num_threads()
    try:
        loaded = []
        for n in (1, 2):
            torch.set_num_threads(n)
            loaded.append(load_dataset({"name": "mnist1d"}, data_dir))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(loaded[0].train_x, loaded[1].train_x) and loaded[0].digest("train") == loaded[1].digest("train")
