"""What only CUDA exercises: CUDA graphs (compile_mode=reduce-overhead), the memory-based chunk size
of the batched launcher, and cuDNN's LSTM against the batched LoopLSTM. Skipped without a GPU.

All in float32 (trainer.precision's default, IEEE on a GPU too): the compiled, graphed or cuDNN runs
match the eager ones to summation order, 1e-4 relative, as on the CPU.
"""

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from torch._dynamo.utils import counters

from initbench.batched import fit_batched
from initbench.batched import sweep as batched_sweep
from initbench.data import load_dataset
from initbench.run import build_initialized_model
from initbench.train import fit

from .conftest import compose_config
from .test_batched import TRAIN, logged_losses

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def cuda_configs(jobs: list[list[str]], common: list[str], store=None):
    return [compose_config(["trainer.device=cuda", *common, *TRAIN, *job], store) for job in jobs]


def train_each(cfgs, **trainer) -> list[tuple[str, list]]:
    """fit() of each config on the GPU, with trainer overrides: [(status, points)]."""
    data = load_dataset(cfgs[0].dataset, cfgs[0].paths.data_dir, "cuda")
    out = []
    for cfg in cfgs:
        points = []
        result = fit(build_initialized_model(cfg, data)[0], data, OmegaConf.merge(cfg.trainer, trainer), cfg.optimizer,
                     cfg.seed, log=points.extend)
        out.append((result.status, points))
    return out


def assert_same_points(a: list, b: list) -> None:
    assert [(key, step) for key, _, step in a] == [(key, step) for key, _, step in b]
    assert [v for _, v, _ in b] == pytest.approx([v for _, v, _ in a], rel=1e-4, abs=1e-6)


def test_cuda_graphs_single_run_matches_eager(recwarn):
    cfgs = cuda_configs([["seed=0"]], ["model=mlp"])
    [(eager_status, eager)] = train_each(cfgs, compile=False)
    torch._dynamo.reset()
    counters.clear()
    [(graphed_status, graphed)] = train_each(cfgs, compile=True, compile_mode="reduce-overhead")
    fell_back = [str(w.message) for w in recwarn if "torch.compile failed" in str(w.message)]
    assert not fell_back, fell_back  # it did compile
    slow = [str(w.message) for w in recwarn if "CUDAGraphs" in str(w.message)]
    assert not slow, slow  # every replay took the fast path: no output of a step outlived its backward
    assert counters["stats"]["unique_graphs"] == 2  # 240 = 7 x 32 + 16: two batch shapes
    assert eager_status == graphed_status == "finished"
    assert_same_points(eager, graphed)


def test_cuda_graphs_batched_step_matches_eager_with_a_divergence(recwarn):
    cfgs = cuda_configs([["seed=0"], ["init=ones", "seed=1"], ["init=kaiming", "seed=2"]],
                        ["model=mlp", "model.activation=leaky_relu"])
    data = load_dataset(cfgs[0].dataset, cfgs[0].paths.data_dir, "cuda")
    runs = {}
    for mode in (None, "reduce-overhead"):
        torch._dynamo.reset()
        counters.clear()
        points = [[] for _ in cfgs]
        results = fit_batched([build_initialized_model(cfg, data)[0] for cfg in cfgs], data, cfgs[0].trainer,
                              cfgs[0].optimizer, [0, 1, 2], logs=[p.extend for p in points], lrs=[0.05, 1e6, 0.01],
                              compile=mode is not None, compile_mode=mode)
        runs[mode] = [r.status for r in results], points
    fell_back = [str(w.message) for w in recwarn if "torch.compile of the batched step failed" in str(w.message)]
    assert not fell_back, fell_back
    assert counters["stats"]["unique_graphs"] == 4  # two batch shapes, with and without gradient norms
    (eager_status, eager), (graphed_status, graphed) = runs[None], runs["reduce-overhead"]
    assert eager_status == graphed_status == ["finished", "diverged", "finished"]
    for a, b in zip(eager, graphed, strict=True):
        assert_same_points(a, b)


def test_chunks_are_cut_to_free_memory_and_train_as_alone(store, monkeypatch):
    """With free memory for 3.5 models (70% of it for 2.45), 3 jobs train in chunks of 2 and 1: the
    chunk size is int(0.7 * free / peak per model); each job's run logs what fit() gives alone."""
    monkeypatch.chdir(store)
    probe, peaks = batched_sweep._probe_batch, []

    def recording_probe(*args, **kwargs):
        seconds, peak = probe(*args, **kwargs)
        peaks.append(peak)
        return seconds, peak

    monkeypatch.setattr(batched_sweep, "_probe_batch", recording_probe)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(3.5 * peaks[-1]), 2**40))
    cfgs = cuda_configs([[f"seed={s}"] for s in range(3)], ["model=mlp"], store)
    said = []
    outcomes = batched_sweep.run_jobs(cfgs, mode="batched", compile=False, say=said.append)
    assert peaks and peaks[-1] > 0
    assert "batched: 3 jobs in chunks of up to 2 models" in said
    assert all(o.error is None for o in outcomes)
    client = MlflowClient(cfgs[0].tracking.uri)
    experiment = client.get_experiment_by_name(cfgs[0].tracking.experiment).experiment_id
    runs = {run.data.params["seed"]: run.info.run_id for run in client.search_runs([experiment])
            if "seed" in run.data.params}
    for cfg, (_, points) in zip(cfgs, train_each(cfgs, compile=False), strict=True):
        assert logged_losses(cfg.tracking.uri, runs[str(cfg.seed)]) == \
            pytest.approx([v for k, v, _ in points if k == "train/loss"], rel=1e-4)


def test_cudnn_lstm_and_the_batched_loop_lstm_train_alike():
    assert torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    cfgs = cuda_configs([["seed=0"], ["init=orthogonal", "seed=1"]], ["model=lstm"])
    data = load_dataset(cfgs[0].dataset, cfgs[0].paths.data_dir, "cuda")
    points = [[] for _ in cfgs]
    results = fit_batched([build_initialized_model(cfg, data)[0] for cfg in cfgs], data, cfgs[0].trainer,
                          cfgs[0].optimizer, [0, 1], logs=[p.extend for p in points], compile=False)
    assert [r.status for r in results] == ["finished", "finished"]
    for (status, alone), together in zip(train_each(cfgs, compile=False), points, strict=True):
        assert status == "finished"
        assert_same_points(alone, together)
