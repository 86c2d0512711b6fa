"""initbench as `pip install .` leaves it: its wheel in a fresh venv, run from a folder outside the
checkout. The console scripts and the configs shipped in the package (initbench.conf) must work
without the repository's conf/ or scripts/."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from initbench.testing import QUIET, ROOT, runs_in


def run(command: list, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **QUIET}
    for name in ("PYTHONPATH", "INITBENCH_SWEEP"):
        env.pop(name, None)
    return subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding initbench's wheel; its dependencies are this venv's (its site-packages on
    the new one's path by a .pth line, whose own .pth files, the checkout's editable install among
    them, are not read), so nothing is downloaded."""
    root = tmp_path_factory.mktemp("install")
    built = run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", root / "wheels", ROOT], cwd=root)
    assert built.returncode == 0, built.stderr[-3000:]
    [wheel] = (root / "wheels").glob("initbench-*.whl")
    made = run([sys.executable, "-m", "venv", "--without-pip", root / "venv"], cwd=root)
    assert made.returncode == 0, made.stderr
    [site] = (root / "venv").glob("lib/python*/site-packages")
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "deps.pth").write_text("\n".join(paths) + "\n")
    installed = run([sys.executable, "-m", "pip", "--python", root / "venv" / "bin" / "python", "install",
                     "--no-deps", "-q", wheel], cwd=root)
    assert installed.returncode == 0, installed.stderr[-3000:]
    return root / "venv"


@pytest.mark.slow
def test_the_installed_commands_run_from_any_folder(venv, tmp_path):
    where = run([venv / "bin" / "python", "-c", "import initbench; print(initbench.__file__)"], cwd=tmp_path)
    assert where.stdout.startswith(str(venv)), where  # the wheel's initbench, not the checkout's
    bin_ = venv / "bin"
    done = run([bin_ / "initbench", "model=mlp", "dataset.train_size=128", "trainer.epochs=1",
                "trainer.device=cpu", "trainer.progress=false"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    [job] = runs_in(f"sqlite:///{tmp_path / 'mlflow.db'}", "initbench")
    assert job.info.status == "FINISHED" and job.data.params["model.name"] == "mlp"
    analyzed = run([bin_ / "initbench-analyze", "--no-log"], cwd=tmp_path)
    assert analyzed.returncode == 0, analyzed.stderr[-3000:]
    assert (tmp_path / "analysis" / "initbench" / job.data.tags["initbench.sweep"] / "summary.md").exists()
    probed = run([bin_ / "initbench-probe", "model=mlp", "trainer.device=cpu"], cwd=tmp_path)
    assert probed.returncode == 0, probed.stderr[-3000:]
    assert "signal at init, mlp with init=default" in probed.stdout, probed.stdout[-2000:]
