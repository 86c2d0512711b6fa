"""Train many models of one architecture at once with torch.func (docs/batched.md).

    from initbench.batched import fit_batched
    results = fit_batched(models, data, cfg.trainer, cfg.optimizer, seeds=[0, 1, 2], logs=[...])

Modules: functional (stacking, the vmap-able LSTM), optim (SGD/Adam on stacked parameters),
trainer (fit_batched), sweep (a multirun's jobs grouped, chunked and logged; the Hydra launcher's core).
"""

from .optim import StackedOptimizer, optimizer_spec
from .stacking import LoopLSTM, Unbatchable, stack_models, vmappable
from .trainer import BatchedSteps, fit_batched

__all__ = ["BatchedSteps", "LoopLSTM", "StackedOptimizer", "Unbatchable", "fit_batched", "optimizer_spec",
           "stack_models", "vmappable"]
