"""Worker processes that never outlive the command that started them, and long commands
that stop cleanly on SIGTERM or SIGINT.

lrpilot's worker processes (the comparison's pool, PPO's environment processes) are
forked by multiprocessing's forkserver, set up by `forkserver_context`:

- on Linux the kernel kills each of them when its parent dies (`prctl(PR_SET_PDEATHSIG,
  SIGKILL)`): the forkserver when the command's process dies (it is the forkserver's
  parent), a worker when the forkserver dies (it is the worker's), so nothing is left
  running even after `kill -9` of the command;
- `run_until_stopped` runs a command with SIGTERM and SIGINT turned into a stop: the
  workers are killed at once (the runs they were computing are lost; finished ones are
  on disk), one line on stderr says how to resume, and the exit code is 128 + the
  signal (143 for SIGTERM, 130 for SIGINT).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import multiprocessing.forkserver
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from pathlib import Path

from tqdm import tqdm

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORKSERVER_PRELOAD = "lrpilot.forkserver_preload"  # ties the forkserver to its parent


def exit_with_parent(ancestor: int | None = None) -> None:
    """Have the kernel SIGKILL this process when its parent dies (Linux; elsewhere
    nothing). "Parent" is the thread that forked this process: fork from a thread that
    lives as long as the parent process (its main thread).

    With `ancestor`, a process that must already be alive, exit at once if it is gone:
    it died before the request was made, so no signal would come.
    """
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return
    if ancestor is not None and not is_alive(ancestor):
        os._exit(1)


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forkserver_context(*preload: str) -> BaseContext:
    """multiprocessing's forkserver context, its server preloading the modules `preload`
    and dying with this process; call it from the main thread before starting workers.

    The forkserver starts once per process: this call starts it if it is not running,
    so the preload and the tie take effect where it comes first (every lrpilot pool
    starts its workers through it).
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([*preload, FORKSERVER_PRELOAD])
    multiprocessing.forkserver.ensure_running()  # forked now, from the calling thread
    return context


def init_worker(ancestor: int) -> None:
    """A worker process's first call: die with the forkserver, its parent (which dies
    with `ancestor`, the command's process), and ignore SIGINT: Ctrl-C reaches the whole
    process group, and the command stops its workers itself.

    Workers draw no progress bars, so tqdm's lock is a thread lock: its default, a
    multiprocessing semaphore, would outlive a killed worker, and the resource tracker
    would report it as leaked.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tqdm.set_lock(threading.RLock())
    exit_with_parent(ancestor)


def kill_workers() -> None:
    """SIGKILL this process's worker processes (multiprocessing's children) at once."""
    for child in multiprocessing.active_children():
        child.kill()


class Stopped(BaseException):
    """Raised in the main thread by a stop signal; `run_until_stopped` catches it (a
    BaseException, so that no `except Exception` of the work swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def resume_hint(command: str, out: str | os.PathLike) -> str:
    """How to go on after `lrpilot COMMAND --out OUT` was stopped."""
    if command != "train":
        return f"run the same command to resume from {out}"
    if (Path(out) / "checkpoints" / "latest.json").is_file():
        return f"run `lrpilot train --resume --out {out}` to go on from its last checkpoint"
    return "no checkpoint was written yet: run the same command to start again"


def run_until_stopped(work: Callable[[], int], command: str, out: str | os.PathLike) -> int:
    """`work()`'s exit code, or, on SIGTERM or SIGINT, a clean stop of `lrpilot COMMAND
    --out OUT`.

    The first signal kills this process's workers and raises `Stopped` in the main
    thread; further signals are ignored while the work's `finally` blocks run (a pool
    whose workers are dead shuts down without waiting for their runs). Any exception
    after the signal is taken as its consequence (a pipe to a killed worker breaks).
    Then one line on stderr names the signal and how to resume; the exit code is 128
    plus the signal.
    """
    received: list[int] = []

    def stop(signum: int, _frame) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        received.append(signum)
        kill_workers()
        raise Stopped(signum)

    previous = {each: signal.getsignal(each) for each in STOP_SIGNALS}
    for each in STOP_SIGNALS:
        signal.signal(each, stop)
    try:
        return work()
    except BaseException:
        if not received:
            raise
    finally:
        for each, handler in previous.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)
    kill_workers()  # any started after the signal
    for child in multiprocessing.active_children():
        child.join()
    name = signal.Signals(received[0]).name
    print(f"lrpilot {command}: stopped by {name}; {resume_hint(command, out)}", file=sys.stderr)
    return 128 + received[0]
