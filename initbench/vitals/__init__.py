"""What initbench measures of a network, apart from its loss: the signal probe at init (signal), the
per-layer activation std, dead units, the input-output Jacobian and the width check (measures), and
the metric points the trainers log under `vitals/` (points). It knows nothing of init policies.

This package imports nothing itself, so that `initbench.vitals.<module>` loads only what it needs.
"""
