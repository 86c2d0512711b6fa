"""Per-layer act_std ratios (hidden layer k+1 over layer k) from the probe tables in probe.txt, mean ± std over
seeds: python results/glorot2010_tanh/probe_ratios.py results/glorot2010_tanh/probe.txt"""
import re
import sys
from collections import defaultdict

import numpy as np

stds = defaultdict(list)  # (init, seed) -> act_std per hidden layer
key = None
for line in open(sys.argv[1], encoding="utf-8"):
    if line.startswith("### "):
        init = re.search(r"init=(\S+)", line).group(1)
        init = "standard (zero bias)" if "++init" in line else init
        key = (init, int(re.search(r"seed=(\d+)", line).group(1)))
    elif re.match(r"\s*layers\.\d+\.0 ", line):
        stds[key].append(float(line.split()[1]))
by_init = defaultdict(list)
for (init, _), values in stds.items():
    by_init[init].append(np.array(values[1:]) / np.array(values[:-1]))
print("| init | seeds | " + " | ".join(f"layer {k + 1}/{k}" for k in range(4)) + " |")
print("|---|--:|" + "---|" * 4)
for init, ratios in by_init.items():
    r = np.array(ratios)
    spread = r.std(0, ddof=1) if len(r) > 1 else [None] * r.shape[1]
    cells = [f"{m:.3f} ± {s:.3f}" if s is not None else f"{m:.3f}" for m, s in zip(r.mean(0), spread, strict=True)]
    print(f"| {init} | {len(r)} | " + " | ".join(cells) + " |")
