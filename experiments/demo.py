"""`lrpilot demo`: train a small controller, then compare it with tuned schedules.

1. Train a PPO controller with the `demo` preset (tiny model, 200-step runs on the
   built-in `pydoc` corpus) into `DIR/controller/`; a demo run again reuses or
   resumes it.
2. Compare its best policy (chosen on the preset's own evaluation seeds) with
   constant, warmup+cosine and WSD, each tuned on a peak-LR grid on seed 0, on the
   held-out seeds 1, 2, 3, into `DIR/compare/` (cached: a rerun recomputes nothing).
3. Print the summary table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from lrpilot.experiments.compare import compare
from lrpilot.experiments.compare_config import CompareConfig, Protocol
from lrpilot.settings import RunSettings

DEMO_PRESET = "demo"


def demo_compare_config(policy: str | None, jobs: int) -> CompareConfig:
    """The demo's comparison: the preset's runs, schedules tuned over 4 peaks each."""
    protocol = Protocol(
        schedules=("constant", "warmup_cosine", "wsd"),
        lr_grid=4,
        lr_range=(2e-3, 1.6e-2),
        tune_seeds=(0,),
        eval_seeds=(1, 2, 3),
        start_lrs=(1e-3,),
    )
    run = RunSettings("tiny", steps=200, eval_every=20, device="cpu")
    return CompareConfig(run=run, protocol=protocol, policy=policy, jobs=jobs)


def train_demo_controller(out: Path, progress: bool) -> Path:
    """Train (or resume, or reuse) the demo controller; the path of its best policy."""
    from lrpilot.agents.train_config import load_train_config
    from lrpilot.agents.training import resume, train

    config = load_train_config(DEMO_PRESET)
    finished = out / "training.json"
    if finished.is_file() and json.loads(finished.read_text())["timesteps"] >= config.timesteps:
        print(f"reusing the trained controller in {out}")
    elif (out / "checkpoints" / "latest.json").is_file():
        resume(out, progress=progress)
    else:
        print(f"training the demo controller ({config.timesteps} timesteps) into {out}")
        train(config, out, progress=progress)
    return out / "best" / "policy.safetensors"


def run_demo(out_dir: str | os.PathLike, jobs: int = 2, progress: bool = True) -> pd.DataFrame:
    """The whole demo; returns the comparison summary (also in DIR/compare/summary.md)."""
    out = Path(out_dir)
    demo_compare_config(None, jobs)  # bad settings fail now, not after training
    policy = train_demo_controller(out / "controller", progress)
    print(f"comparing {policy} with tuned schedules in {out / 'compare'}")
    return compare(demo_compare_config(str(policy), jobs), out / "compare", progress=progress)
