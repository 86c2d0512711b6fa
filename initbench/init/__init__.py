"""Weight-init policies: declarative rules over a registry of schemes, with a report (the measuring
code, the signal probe included, is initbench.vitals).

    from initbench.init import build_policy
    policy = build_policy(cfg.init)                       # a conf/init/*.yaml file
    report = policy.apply(model, generator, batch=None)   # batch: real inputs if policy.needs_data
    report.to_csv(run_dir)                                # init_report.csv
    print(report)

Modules: registry (SCHEMES, assembled from the modules that declare schemes), schemes (the Scheme
type, declare, torch.nn.init's schemes), functional (init functions torch lacks), matching (where-clauses),
policy (rules -> fills), report (InitReport), lsuv (data-dependent rescaling), residual_inits (the
Fixup, GPT-2 and mimetic schemes, which read model structure facts: structure), mup (μP's width-scaled
schemes and the per-parameter optimizer factors they ask for: InitPolicy.optimizer_scales), criticality
(the edge of chaos: critical, and kumar), isometric (delta_orthogonal, zero_init).
"""

from .policy import InitError, InitPolicy, Rule, build_policy
from .registry import SCHEMES, register
from .report import REPORT_COLUMNS, InitReport
from .schemes import Scheme

__all__ = [
    "REPORT_COLUMNS",
    "SCHEMES",
    "InitError",
    "InitPolicy",
    "InitReport",
    "Rule",
    "Scheme",
    "build_policy",
    "register",
]
