"""Stopping the long commands: SIGTERM or Ctrl-C stops `lrpilot compare` and `lrpilot
train` with one line saying how to resume, and no worker process outlives a command,
even one killed with SIGKILL (Linux). The runs of a user workload block in the workers
until the test opens a gate, so each signal reaches a command with work in flight."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from lrpilot.cli import main

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads processes from /proc (Linux)"
)

WORKLOAD = """
import multiprocessing
import time
from pathlib import Path

import torch

from lrpilot import RunParts

GATE = Path(__file__).with_name("gate")  # runs blocked in workers wait for this file


def make_run(seed, blocked=lambda seed: seed == 1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=generator)
    y = x.sum(1, keepdim=True)
    model = torch.nn.Linear(4, 1)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 4, generator=generator))
        model.bias.zero_()

    def batches():
        in_worker = multiprocessing.current_process().name != "MainProcess"
        while True:
            while in_worker and blocked(seed) and not GATE.exists():
                time.sleep(0.01)
            yield x, y

    def loss(batch):
        inputs, targets = batch
        return ((model(inputs) - targets) ** 2).mean()

    return RunParts(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
        batches=batches(),
        loss=loss,
        validation_loss=lambda: loss((x, y)).item(),
        test_loss=lambda: loss((x, y)).item(),
    )


def make_blocked_run(seed):
    return make_run(seed, blocked=lambda seed: True)
"""

PATIENCE = 180.0  # seconds to wait for a command to start its workers (a loaded machine)
GONE_WITHIN = 10.0  # seconds within which every process of a stopped command has exited


@pytest.fixture
def workload(tmp_path) -> Path:
    path = tmp_path / "gated.py"
    path.write_text(WORKLOAD)
    return path


def compare_args(workload: Path, out: Path, jobs: int = 2) -> list[str]:
    """Tuning seeds 0 and 1 on a grid of 2 LRs: the seed-0 runs finish, the seed-1
    runs block in the 2 workers until the gate opens."""
    return [
        "compare",
        "--workload",
        f"{workload}:make_run",
        "--schedules",
        "constant",
        "--lr-grid",
        "2",
        "--tune-seeds",
        "0,1",
        "--eval-seeds",
        "2",
        "--steps",
        "20",
        "--eval-every",
        "10",
        "--jobs",
        str(jobs),
        "--quiet",
        "--out",
        str(out),
    ]


STARTED: list[subprocess.Popen] = []  # the commands the running test started


@pytest.fixture(autouse=True)
def no_command_left_running():
    """A test that fails midway leaves nothing running: every command it started has
    its process group killed."""
    yield
    while STARTED:
        command = STARTED.pop()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command.pid, signal.SIGKILL)
        command.communicate()


def start(args: list[str]) -> subprocess.Popen:
    """`lrpilot ARGS` in a session (and process group) of its own."""
    command = subprocess.Popen(
        [sys.executable, "-m", "lrpilot.cli", *args],
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    STARTED.append(command)
    return command


def live_processes(group: int) -> dict[int, int]:
    """The processes of process group `group` that have not exited: pid -> parent pid
    (a process reparented after its parent died stays in the group)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # exited meanwhile
            continue
        state, parent, pgid = text[text.rindex(")") + 2 :].split()[:3]
        if int(pgid) == group and state not in ("Z", "X"):  # zombies have exited
            found[int(stat.parent.name)] = int(parent)
    return found


def workers(command: subprocess.Popen) -> list[int]:
    """The command's worker processes: its grandchildren (the forkserver's children)."""
    family = live_processes(command.pid)
    children = {pid for pid, parent in family.items() if parent == command.pid}
    return [pid for pid, parent in family.items() if parent in children]


def wait_until(condition: Callable[[], bool], what: str, seconds: float) -> None:
    """Poll `condition` until it holds; fail naming `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still waiting after {seconds:.0f} s for {what}")
        time.sleep(0.05)


def cached_runs(out: Path) -> dict[Path, int]:
    """The finished runs of a comparison folder, with their modification times."""
    return {path: path.stat().st_mtime_ns for path in (out / "runs").glob("*/run.json")}


def started_with_runs_in_flight(workload: Path, out: Path) -> subprocess.Popen:
    """A comparison whose seed-0 runs are cached and whose 2 workers are busy."""
    command = start(compare_args(workload, out))
    wait_until(
        lambda: (
            (len(cached_runs(out)) == 2 and len(workers(command)) == 2)
            or command.poll() is not None
        ),
        "2 cached runs and 2 busy workers",
        PATIENCE,
    )
    assert command.poll() is None, command.communicate()
    return command


def assert_nothing_left(command: subprocess.Popen) -> None:
    wait_until(
        lambda: not live_processes(command.pid),
        f"the processes of the stopped command to exit: {live_processes(command.pid)}",
        GONE_WITHIN,
    )


def stop_message(command: str, signum: int, hint: str) -> str:
    return f"lrpilot {command}: stopped by {signal.Signals(signum).name}; {hint}\n"


def test_a_compare_stopped_by_sigterm_says_how_to_resume_and_resumes(workload, tmp_path):
    out = tmp_path / "compare"
    command = started_with_runs_in_flight(workload, out)
    before = cached_runs(out)
    command.send_signal(signal.SIGTERM)
    _, err = command.communicate()
    assert command.returncode == 143, err
    assert err == stop_message(
        "compare", signal.SIGTERM, f"run the same command to resume from {out}"
    )
    assert_nothing_left(command)
    assert cached_runs(out) == before  # the runs in flight were not stored

    (workload.parent / "gate").touch()
    assert main(compare_args(workload, out, jobs=1)) == 0
    after = cached_runs(out)
    assert len(after) > len(before) and all(after[path] == before[path] for path in before)
    assert main(compare_args(workload, tmp_path / "uninterrupted", jobs=1)) == 0
    resumed, uninterrupted = (
        pd.read_csv(folder / "results.csv").drop(columns="seconds")
        for folder in (out, tmp_path / "uninterrupted")
    )
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_ctrl_c_stops_a_compare_and_its_workers(workload, tmp_path):
    out = tmp_path / "compare"
    command = started_with_runs_in_flight(workload, out)
    os.killpg(command.pid, signal.SIGINT)  # what Ctrl-C does: the whole process group
    _, err = command.communicate()
    assert command.returncode == 130, err
    assert err == stop_message(
        "compare", signal.SIGINT, f"run the same command to resume from {out}"
    )
    assert_nothing_left(command)


def test_no_worker_outlives_a_compare_killed_with_sigkill(workload, tmp_path):
    command = started_with_runs_in_flight(workload, tmp_path / "compare")
    command.kill()
    command.wait()
    assert_nothing_left(command)


def test_a_stopped_train_stops_its_environment_processes(workload, tmp_path):
    out = tmp_path / "train"
    command = start(
        [
            "train",
            "--preset",
            "tiny",
            "--workload",
            f"{workload}:make_blocked_run",
            "--n-envs",
            "2",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    wait_until(
        lambda: len(workers(command)) == 2 or command.poll() is not None,
        "2 environment processes",
        PATIENCE,
    )
    command.send_signal(signal.SIGTERM)
    _, err = command.communicate()
    assert command.returncode == 143, err
    hint = "no checkpoint was written yet: run the same command to start again"
    assert err == stop_message("train", signal.SIGTERM, hint)
    assert_nothing_left(command)
