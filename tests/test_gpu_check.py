"""scripts/gpu_check.py in its CPU dry mode: every part runs under its limit and the summary says so, so the
checklist a lent GPU runs first cannot rot between sessions without one."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # four subprocesses: about a minute on 2 cores
def test_the_dry_gpu_check_runs_every_part_and_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path), "--dry"], cwd=ROOT,
                          capture_output=True, text=True, timeout=400)
    summary = (tmp_path / "summary.md").read_text()
    assert done.returncode == 0, summary + done.stderr[-2000:]
    rows = [line.split(" | ") for line in summary.splitlines()[2:]]
    assert [row[0].strip("| ") for row in rows] == ["env", "bench-float32", "pytest-gpu", "sweep"]
    assert all(row[1] == "ok" for row in rows), summary
    assert "(b) fit" in summary and "4 runs finished" in summary
    assert "### sweep" in (tmp_path / "log.txt").read_text()
