"""The launcher's config: `hydra/launcher=batched`, with `hydra.launcher.<knob>=...` overrides."""

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

import initbench.config  # noqa: F401  (registers initbench's schemas: any compose of conf/ finds them)


@dataclass
class BatchedLauncherConf:
    _target_: str = "hydra_plugins.initbench_batched_launcher.batched_launcher.BatchedLauncher"
    # Most models trained at once; a chunk is also cut to what fits in 70% of free CUDA memory.
    max_models: int = 64
    # auto: batch where it pays (always on CUDA; on the CPU where vmap measures faster than fit());
    # batched: batch every group that can be; sequential: fit() one job after another.
    mode: str = "auto"
    # torch.compile the batched step: auto = on CUDA only; true; false. Falls back to eager on error.
    compile: str = "auto"
    # torch.compile's mode (null = its default; "reduce-overhead" adds CUDA graphs).
    compile_mode: str | None = None


ConfigStore.instance().store(group="hydra/launcher", name="batched", node=BatchedLauncherConf,
                             provider="initbench")
