"""`python -m initbench [overrides]`: compose the Hydra config and run one job (or a sweep with -m)."""

import hydra
from omegaconf import DictConfig

from .run import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    result = run(cfg)
    return result.final.get("test/acc") if result else None


if __name__ == "__main__":
    main()
