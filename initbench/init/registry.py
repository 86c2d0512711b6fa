"""The registry of init schemes, assembled here, in one place, from the modules that declare them: each
scheme is declared once, beside its function, with its theory (expected mean and std), its shape check
and, for μP, its optimizer factors (schemes.declare). Policies name schemes by their key::

    SCHEMES["kaiming_normal"](tensor, generator, {"mode": "fan_out", "nonlinearity": "relu"})

Add your own with ``@register("name", std=...)`` on a function ``fn(tensor, ..., generator=None)``; a
name that is taken is refused unless ``overwrite=True``.
"""

from collections.abc import Callable

from torch import Tensor

from . import criticality, functional, isometric, mup, residual_inits, schemes, transformer_inits
from .schemes import Scheme, declare

# torch.nn.init's, then ours
DECLARING = (schemes, functional, criticality, isometric, mup, residual_inits, transformer_inits)
SCHEMES: dict[str, Scheme] = {}


def add(scheme: Scheme, overwrite: bool = False) -> None:
    if scheme.name in SCHEMES and not overwrite:
        old = SCHEMES[scheme.name].fn
        raise ValueError(f"init scheme {scheme.name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                         "pick another name, or pass overwrite=True to replace it")
    SCHEMES[scheme.name] = scheme


Fill = Callable[..., Tensor]


def register(name: str, *, overwrite: bool = False, **theory) -> Callable[[Fill], Fill]:
    """Decorator: register `fn` as scheme `name` (the keywords of schemes.declare); returns `fn`."""

    def decorator(fn: Fill) -> Fill:
        add(declare(name, **theory)(fn), overwrite)
        return fn

    return decorator


for _module in DECLARING:
    for _scheme in _module.DECLARED:
        add(_scheme)
