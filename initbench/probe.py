"""`python -m initbench.probe model=mlp model.depth=30 init=xavier`: the init report and the
per-layer signal at init (activation std, backpropagated-gradient std) on one training batch,
without training or logging anything."""

import hydra
from omegaconf import DictConfig

from .config import check_config
from .errors import USER_ERRORS, exit_with_message
from .init import signal_probe
from .run import prepare


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> None:
    try:
        check_config(cfg)
        job = prepare(cfg)
    except USER_ERRORS as err:
        exit_with_message(err)
    batch = slice(0, cfg.trainer.batch_size)
    table = signal_probe(job.model, job.data.train_x[batch].cpu(), job.data.train_y[batch].cpu())
    print(job.report)
    print(f"\nsignal at init, {cfg.model.name} with init={cfg.init.name}, one batch of {cfg.dataset.name}:")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3e}"))


if __name__ == "__main__":
    main()
