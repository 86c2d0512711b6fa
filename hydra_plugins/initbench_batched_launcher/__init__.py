"""initbench's `hydra/launcher=batched`: a multirun's jobs that differ only in init, seed and lr train
together (see initbench.batched.sweep). Found by Hydra in the `hydra_plugins` namespace package."""
