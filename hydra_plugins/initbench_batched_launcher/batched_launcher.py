"""BatchedLauncher: Hydra's basic launcher, except that initbench's jobs are trained first, together
where they can be (initbench.batched.sweep.run_jobs), and each job then goes through Hydra's own
run_job with its outcome: output folder, .hydra/ files, callbacks and a JobReturn per job as usual.

A job that failed returns a FAILED JobReturn holding its error, so the sweep goes on and exits
non-zero at its end, as with the basic launcher. Tasks other than initbench's, and sweeps with
hydra.job.chdir=true or hydra.job.env_set, are launched one job at a time exactly as the basic
launcher does (their jobs' paths and environment are only right inside run_job).
"""

import copy
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from . import config as _config  # noqa: F401  (registers hydra/launcher=batched)

log = logging.getLogger(__name__)


def _is_initbench_task(task_function: TaskFunction) -> bool:
    import initbench

    code = getattr(task_function, "__code__", None)
    main_file = Path(initbench.__file__).parent / "__main__.py"
    return code is not None and Path(code.co_filename).resolve() == main_file.resolve()


class BatchedLauncher(Launcher):
    def __init__(self, max_models: int = 64, mode: str = "auto", compile: str = "auto",
                 compile_mode: str | None = None) -> None:
        modes, compiles = ("auto", "batched", "sequential"), {"auto": "auto", "true": True, "false": False}
        if mode not in modes:
            raise ValueError(f"hydra.launcher.mode={mode!r}; valid: {', '.join(modes)}")
        if str(compile).lower() not in compiles:
            raise ValueError(f"hydra.launcher.compile={compile!r}; valid: auto, true, false")
        if max_models < 1:
            raise ValueError(f"hydra.launcher.max_models must be >= 1, got {max_models}")
        from initbench.config import COMPILE_MODES  # here: Hydra imports every plugin module at startup

        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"hydra.launcher.compile_mode={compile_mode!r}; valid: null, "
                             f"{', '.join(COMPILE_MODES[1:])}")
        self.max_models, self.mode, self.compile_mode = max_models, mode, compile_mode
        self.compile = compiles[str(compile).lower()]
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def _sweep_config(self, overrides: Sequence[str], idx: int) -> DictConfig:
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        return sweep_config

    def _task_config(self, sweep_config: DictConfig) -> DictConfig:
        """The job's config as run_job will hand it to the task, resolved in the job's own Hydra context."""
        sweep_config = copy.deepcopy(sweep_config)
        HydraConfig.instance().set_config(sweep_config)
        output_dir = os.path.join(str(OmegaConf.select(sweep_config, "hydra.sweep.dir")),
                                  str(OmegaConf.select(sweep_config, "hydra.sweep.subdir")))
        with read_write(sweep_config.hydra.runtime), open_dict(sweep_config.hydra.runtime):
            sweep_config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        HydraConfig.instance().set_config(sweep_config)
        task_cfg = copy.deepcopy(sweep_config)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        OmegaConf.resolve(task_cfg)
        return task_cfg

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs, batched where they can be")
        sweep_configs = []
        for idx, overrides in enumerate(job_overrides, initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            sweep_configs.append(self._sweep_config(overrides, idx))

        job = self.config.hydra.job
        tasks = [self.task_function] * len(sweep_configs)
        if _is_initbench_task(self.task_function) and not job.chdir and not job.env_set:
            from initbench.batched.sweep import run_jobs

            original = HydraConfig.instance().cfg
            try:
                task_cfgs = [self._task_config(c) for c in sweep_configs]
            finally:
                HydraConfig.instance().cfg = original
            outcomes = run_jobs(task_cfgs, max_models=self.max_models, mode=self.mode, compile=self.compile,
                                compile_mode=self.compile_mode, say=log.info)
            tasks = [lambda cfg, outcome=outcome: outcome.value() for outcome in outcomes]

        runs = []
        for sweep_config, task in zip(sweep_configs, tasks, strict=True):
            runs.append(run_job(hydra_context=self.hydra_context, task_function=task, config=sweep_config,
                                job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir"))
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs
