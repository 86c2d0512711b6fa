"""`python -m initbench.probe model=mlp model.depth=30 init=xavier`: the init report and the
per-layer signal at init (activation std, backpropagated-gradient std, dead ReLU units) and the
input-output Jacobian's singular values, on one training batch, without training or logging anything.

With `+probe.widths=[64,128,256,512,1024]` it also runs the width check (the muP coordinate check):
each width of model.width trains for `+probe.steps=N` steps (default 10) on the same batches, and the
mean |activation| of each layer, at init and after the steps, is printed against the width and
plotted to `+probe.plot=PATH` (default: coord_check.png in Hydra's output directory). The options are
Hydra overrides (Hydra owns the command line); `+` adds them to a config that has no `probe` key.
"""

import copy
from pathlib import Path

import hydra
import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from .config import ConfigError, check_config
from .data import Dataset, load_dataset
from .errors import USER_ERRORS, exit_with_message
from .run import build_initialized_model, job_device, optimizer_scales, prepare
from .train import build_optimizer, float32_math
from .vitals.measures import (
    JACOBIAN_EXAMPLES,
    activation_vitals,
    coordinate_check,
    jacobian_singular_values,
    jacobian_summary,
    width_slopes,
)
from .vitals.signal import signal_probe

DEFAULT_STEPS = 10
OPTIONS = ("widths", "steps", "plot")


def probe_options(cfg: DictConfig) -> dict:
    """Take the `probe` node (+probe.widths, +probe.steps, +probe.plot) out of `cfg`, checked:
    {"widths": [int, ...] or None, "steps": int, "plot": str or None}. ConfigError lists what is wrong."""
    node = cfg.get("probe")
    if node is not None:
        with open_dict(cfg):
            del cfg["probe"]
    given = OmegaConf.to_container(node, resolve=True) if node is not None else {}
    if not isinstance(given, dict):
        raise ConfigError(f"probe={given!r}: must be a group of options, e.g. +probe.widths=[64,128,256]")
    problems = [f"probe.{key}: unknown key; valid: {', '.join(OPTIONS)}" for key in given if key not in OPTIONS]
    widths, steps, plot = given.get("widths"), given.get("steps", DEFAULT_STEPS), given.get("plot")
    if widths is not None and not (isinstance(widths, list) and widths
                                   and all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)):
        problems.append(f"probe.widths={widths!r}: must be a list of integers >= 1, e.g. +probe.widths=[64,128,256]")
    if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 0):
        problems.append(f"probe.steps={steps!r}: must be an integer >= 0")
    if widths is None and ("steps" in given or plot is not None):
        problems.append("probe.steps and probe.plot belong to the width check: give +probe.widths=[...] too")
    if widths is not None and "width" not in cfg.model:
        problems.append(f"probe.widths: the width check sets model.width, which model "
                        f"{cfg.model.get('name') or cfg.model.get('_target_')!r} does not have (use model=mlp)")
    if problems:
        raise ConfigError(f"invalid probe options ({len(problems)} problem{'s' * (len(problems) > 1)}):\n  "
                          + "\n  ".join(problems))
    return {"widths": widths, "steps": steps, "plot": plot}


def width_check(cfg: DictConfig, widths: list[int], steps: int, data: Dataset | None = None) -> pd.DataFrame:
    """coordinate_check for the job `cfg` with model.width set to each of `widths`: each model built and
    initialized as the job's (seed, init policy), trained for `steps` steps by the job's optimizer at
    its lr (no schedule; scaled per parameter as the policy asks: mup) on fit()'s first batches
    (trainer.batch_size, the order from `seed`), and measured on the probe batch (the first batch_size
    training examples), under trainer.precision's float32 math. Columns: width, layer, step, size (mean
    |activation|), change (from init)."""
    if data is None:
        data = load_dataset(cfg.dataset, cfg.paths.data_dir, job_device(cfg), image_size=cfg.model.get("image_size"))
    device, batch, n = data.train_x.device, cfg.trainer.batch_size, len(data.train_y)

    built = {}  # coordinate_check builds a width's model, then makes its optimizer: the scales go between

    def build(width: int) -> torch.nn.Module:
        job = copy.deepcopy(cfg)
        job.model.width = width
        model = build_initialized_model(job, data)[0].to(device)
        built.update(model=model, scales=optimizer_scales(job, model))
        return model

    def make_optimizer(params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        names = {id(p): name for name, p in built["model"].named_parameters()}
        return build_optimizer(cfg.optimizer, [(names[id(p)], p) for p in params], built["scales"])

    def batches():
        order = torch.Generator().manual_seed(cfg.seed)
        while True:  # fit()'s order, epoch after epoch
            perm = torch.randperm(n, generator=order).to(device)
            for start in range(0, n, batch):
                idx = perm[start:start + batch]
                yield data.train_x[idx], data.train_y[idx]

    with float32_math(cfg.trainer):
        return coordinate_check(build, widths, data.train_x[:batch], batches, make_optimizer, steps)


def width_tables(table: pd.DataFrame, steps: int) -> dict[str, pd.DataFrame]:
    """The width check as three tables, layers x widths plus a `slope` column (log-log, over widths):
    the size at init, the size after `steps` steps, the change after `steps` steps."""
    out = {}
    for title, column, step in (("mean |activation| at init", "size", 0),
                                (f"mean |activation| after {steps} steps", "size", steps),
                                (f"mean |change from init| after {steps} steps", "change", steps)):
        part = table[table.step == step]
        wide = part.pivot(index="layer", columns="width", values=column).reindex(part.layer.unique())
        wide["slope"] = width_slopes(table, column, step)
        out[title] = wide
    return out


def plot_width_check(table: pd.DataFrame, steps: int, path: Path, title: str = "") -> Path:
    """The three width_tables as panels, value against width (log-log), one line per layer; a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tables = width_tables(table, steps)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4.2), squeeze=False)
    for ax, (name, wide) in zip(axes[0], tables.items(), strict=True):
        widths = [c for c in wide.columns if c != "slope"]
        for layer, row in wide.iterrows():
            ax.plot(widths, [row[w] for w in widths], marker="o", label=f"{layer} (slope {row['slope']:.2f})")
        ax.set_xscale("log", base=2)
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("log")
        ax.set_xlabel("width")
        ax.set_title(name)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _fmt(v: float) -> str:
    return f"{v:.3e}"


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        options = probe_options(cfg)
        check_config(cfg)
        job = prepare(cfg)
    except USER_ERRORS as err:
        exit_with_message(err)
    batch = slice(0, cfg.trainer.batch_size)
    x, y = job.data.train_x[batch].cpu(), job.data.train_y[batch].cpu()
    table = signal_probe(job.model, x, y)
    table["dead_frac"] = activation_vitals(job.model, x).set_index("layer")["dead_frac"].reindex(table.layer).values
    print(job.report)
    print(f"\nsignal at init, {cfg.model.name} with init={cfg.init.name}, one batch of {cfg.dataset.name} "
          "(dead_frac: units a ReLU leaves 0 on the whole batch; empty where no ReLU reads the layer):")
    print(table.to_string(index=False, float_format=_fmt, na_rep=""))
    try:
        summary = jacobian_summary(jacobian_singular_values(job.model, x))
        print(f"\ninput-output Jacobian at init, singular values over {min(JACOBIAN_EXAMPLES, len(x))} examples "
              "(dynamical isometry: all near 1, sv_log_std near 0): "
              + ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items()))
    except ValueError as err:
        print(f"\nno input-output Jacobian: {err}")
    if options["widths"] is None:
        return
    widths, steps = options["widths"], options["steps"]
    opt = cfg.optimizer
    print(f"\nwidth check (coordinate check): {cfg.model.name} with init={cfg.init.name}, "
          f"{opt._target_.rsplit('.', 1)[-1]} lr={opt.lr}, {steps} steps of batch {cfg.trainer.batch_size} on "
          f"{cfg.dataset.name}; each layer's output on the probe batch; slope: of log value against log width "
          "(0: flat, stable in width; 1: grows like the width)")
    checked = width_check(cfg, widths, steps, data=job.data)
    for name, wide in width_tables(checked, steps).items():
        print(f"\n{name}:")
        print(wide.to_string(float_format=_fmt))
    folder = Path(HydraConfig.get().runtime.output_dir) if HydraConfig.initialized() else Path()
    path = Path(options["plot"]) if options["plot"] else folder / "coord_check.png"
    plot_width_check(checked, steps, path, title=f"{cfg.model.name}, init={cfg.init.name}, lr={opt.lr}")
    print(f"\nplot: {path}")


if __name__ == "__main__":
    main()
