"""What a sudden change of LR costs a run: the generalist's probe and wide first action.

The `generalist` preset trains the first interval at the start LR (a probe), then
lets one action move the LR by up to x100 at once. This measures, on that preset's
validation workload (`small` on pystdlib:tkinter, batch 24, 300 steps, an interval
of 15; LM seeds 200001-200003, never a comparison seed), open-loop LR paths that
all train at the same target LR after the probe, with the preset's 5% linear warmup
and 30% `1 - sqrt` cooldown:

- `target`: the probe at the target LR itself (a plain warmup, stable, cooldown);
- `high probe, jump down`: the probe at 1e-2, then the target at once;
- `low probe, jump up`: the probe at 1e-4, then the target at once (x17);
- `low probe, 3-interval ramp`: the probe at 1e-4, then x2.6 per interval for three
  intervals (what an action rule of at most x4 per interval allows);
- `low probe, 1-interval linear ramp`: the probe at 1e-4, then a linear ramp to the
  target over the next interval.

The target, 1.7e-3, is where the generalist's policy holds this run from a start of
1e-3. Reported: the mean test loss over the seeds and its ratio to `target`'s.
Written to experiments/studies/lr_jumps/lr_jumps.{csv,md} (or `--results`) and printed:

    python experiments/studies/lr_jumps/lr_jumps.py          # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from lrpilot.agents.train_config import load_train_config
from lrpilot.env.actions import applied_lr
from lrpilot.env.tasks import Task
from lrpilot.experiments.report import markdown_table
from lrpilot.files import atomic_write_csv, atomic_write_text

PRESET = load_train_config("generalist")  # its validation tasks and its action rule
RULE = PRESET.env.action
# One task per validation seed (the start LR does not matter: `lr_at` sets every step's).
TASKS: tuple[Task, ...] = tuple({task.seed: task for task in PRESET.eval.tasks()}.values())
TOTAL_STEPS, INTERVAL = PRESET.eval.run.steps, PRESET.eval.run.eval_every
TARGET, HIGH, LOW = 1.7e-3, 1e-2, 1e-4


def path(probe_lr: float, ramp: str = "jump") -> Callable[[int], float]:
    """The LR of each step: the controller's LR, `probe_lr` over the first interval,
    then the target, reached at once (`jump`), in three geometric steps (`geometric`),
    or linearly over one interval (`linear`); warmed up and cooled down by the
    preset's action rule, as in the environment."""

    def controller_lr(step: int) -> float:
        interval, within = divmod(step, INTERVAL)
        if interval == 0:
            return probe_lr
        if ramp == "geometric" and interval <= 3:
            return probe_lr * (TARGET / probe_lr) ** (interval / 3)
        if ramp == "linear" and interval == 1:
            return probe_lr + (TARGET - probe_lr) * (within + 1) / INTERVAL
        return TARGET

    return lambda step: applied_lr(controller_lr(step), step, total_steps=TOTAL_STEPS, rule=RULE)


PATHS: dict[str, Callable[[int], float]] = {
    "target": path(TARGET),
    "high probe, jump down": path(HIGH),
    "low probe, jump up": path(LOW),
    "low probe, 3-interval ramp": path(LOW, "geometric"),
    "low probe, 1-interval linear ramp": path(LOW, "linear"),
}


def test_loss(lr_at: Callable[[int], float], task: Task) -> float:
    """The final test loss of the task's run along `lr_at`."""
    run = task.make_run("cpu")
    for steps in task.intervals:
        run.train(steps, lr_at)
    return run.test().loss


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default="experiments/studies/lr_jumps", help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [
        {"path": name, "seed": task.seed, "test_loss": test_loss(lr_at, task)}
        for name, lr_at in PATHS.items()
        for task in TASKS
    ]
    runs = pd.DataFrame(rows)
    table = runs.groupby("path", sort=False)["test_loss"].agg(["mean", "min", "max"])
    table["ratio to target"] = table["mean"] / table.loc["target", "mean"]
    table = table.reset_index()
    text = (
        "# What a sudden LR change costs (`small` on pystdlib:tkinter, 300 steps)\n\n"
        "`python experiments/studies/lr_jumps/lr_jumps.py`: mean / min / max test loss over "
        f"seeds {', '.join(str(task.seed) for task in TASKS)}; target LR {TARGET:g}, "
        f"probes at {HIGH:g} and {LOW:g}\n\n" + markdown_table(table.round(4)) + "\n"
    )
    out = Path(args.results)
    atomic_write_csv(out / "lr_jumps.csv", runs)
    atomic_write_text(out / "lr_jumps.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
