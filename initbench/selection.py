"""The rules that a run's summary metrics and the analysis share. Selection on the validation split: a
run is read at the first epoch of its best finite validation accuracy; the test set selects nothing.
Steps to a loss: the first step whose training (batch) loss is <= the threshold."""

import math
from collections.abc import Sequence

LOSS_THRESHOLD = 0.5  # the summary's whole_run/steps_to_loss_<it>; the analysis' default --loss-threshold


def best_index(val_accs: Sequence[float]) -> int | None:
    """The index of the first largest finite value of `val_accs` (one per epoch, in order); None if none is."""
    finite = [(v, i) for i, v in enumerate(val_accs) if math.isfinite(v)]
    return max(finite, key=lambda vi: (vi[0], -vi[1]))[1] if finite else None


def first_at_or_below(losses: Sequence[float], threshold: float) -> int | None:
    """The index of the first value of `losses` (in step order) that is <= threshold; None if none is."""
    return next((i for i, v in enumerate(losses) if v <= threshold), None)
