"""Analyze a sweep: `python scripts/analyze.py [--tracking-uri URI] [--experiment NAME] [--sweep ID]
[--group-by model,dataset,init] [--baseline default] [--out results/NAME] [--loss-threshold X] [--no-log]`.

Prints a markdown table ranked by mean final test accuracy over seeds, writes CSVs and PNG plots, and
logs them to a summary MLflow run; exits 2 when there are no runs to analyze. See initbench.analysis.
"""

import sys

from initbench.analysis.cli import main

if __name__ == "__main__":
    sys.exit(main())
