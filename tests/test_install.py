"""What a user installs works on its own: a wheel built from the checkout, installed in a
fresh virtual environment, runs `lrpilot compare` and the README's quick start.

The fresh environment gets lrpilot from the wheel only; its dependencies (torch, SB3, ...)
come from this test's environment, added to its path without that environment's `.pth`
files, so the checkout's editable install is not seen there.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).parent.parent


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new virtual environment with lrpilot installed from a freshly built wheel."""
    work = tmp_path_factory.mktemp("install")
    # Built from a copy: an in-tree build keeps a build/ folder whose stale files would
    # end up in the wheel.
    source = work / "source"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "runs", "*.egg-info", "__pycache__")
    shutil.copytree(ROOT, source, ignore=skip)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    build = [*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(work)]
    run(build, cwd=work)
    (wheel,) = work.glob("lrpilot-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=work)
    python = venv / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], work)
    where = "import sysconfig; print(sysconfig.get_path('purelib'))"
    purelib = Path(run([str(python), "-c", where], work).stdout.strip())
    dependencies = sysconfig.get_path("purelib")  # added as a path: its .pth files unread
    (purelib / "dependencies.pth").write_text(dependencies + "\n")
    return venv


def test_the_installed_package_is_the_wheel_not_the_checkout(fresh_venv, tmp_path):
    python = fresh_venv / "bin" / "python"
    where = run([str(python), "-c", "import lrpilot; print(lrpilot.__file__)"], tmp_path)
    assert where.stdout.strip().startswith(str(fresh_venv))


def test_the_wheel_runs_lrpilot_compare(fresh_venv, tmp_path):
    out = tmp_path / "cmp"
    command = [str(fresh_venv / "bin" / "lrpilot"), "compare", "--policy", "tiny"]
    command += ["--schedules", "constant,wsd", "--lr-grid", "2", "--steps", "40"]
    command += ["--eval-every", "20", "--batch-size", "8", "--eval-seeds", "1", "--quiet"]
    run([*command, "--out", str(out)], cwd=tmp_path)
    results = pd.read_csv(out / "results.csv")
    assert set(results["method"]) == {"constant", "wsd", "policy"}
    assert results.groupby("run")["step"].max().eq(40).all()
    assert (out / "summary.md").is_file() and (out / "loss_curves.png").is_file()


def quick_start() -> str:
    """The first ```python block under the README's `## Quick start` heading."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Quick start\n", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None, "no python block under ## Quick start"
    return match.group(1)


def test_the_readme_quick_start_runs_as_written(fresh_venv, tmp_path):
    code = quick_start()
    assert len(code.splitlines()) < 25
    (tmp_path / "quick_start.py").write_text(code)
    result = run([str(fresh_venv / "bin" / "python"), "quick_start.py"], cwd=tmp_path)
    match = re.search(r"val loss ([0-9.]+), final lr ([0-9.e+-]+)", result.stdout)
    assert match is not None, result.stdout
    assert 0 < float(match.group(1)) < 1.3  # it learned: a 4-class problem starts near log 4
