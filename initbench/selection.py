"""Selection on the validation split, one rule for a run's summary metrics and for the analysis: a run
is read at the first epoch of its best finite validation accuracy; the test set selects nothing."""

import math
from collections.abc import Sequence


def best_index(val_accs: Sequence[float]) -> int | None:
    """The index of the first largest finite value of `val_accs` (one per epoch, in order); None if none is."""
    finite = [(v, i) for i, v in enumerate(val_accs) if math.isfinite(v)]
    return max(finite, key=lambda vi: (vi[0], -vi[1]))[1] if finite else None
