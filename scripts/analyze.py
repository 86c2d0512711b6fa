"""Analyze a sweep: `python scripts/analyze.py [--tracking-uri URI] [--experiment NAME] [--sweep ID]
[--group-by model,dataset,init] [--baseline default] [--out results/NAME] [--loss-threshold X] [--no-log]
[--tune KEY] [--heatmap KEY1,KEY2 [--measure M]]`.

Prints a markdown table ranked by mean best validation accuracy over seeds (final test accuracy for
runs without a validation split), writes CSVs and PNG plots, and logs them to the sweep's parent run in
MLflow; exits 2 when there are no runs to analyze, or --tune has no validation split to select on.
See initbench.analysis.
"""

import sys

from initbench.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
