"""Ablations of the controller: what the observation, reward, action space and PPO
budget each contribute.

Every variant is the `controller` preset with one thing changed, trained for the
same (short) number of timesteps with the same seed, then measured on the preset's
fixed evaluation tasks (its evaluation LM seeds, never the comparison seeds; start
LRs 1e-4, 1e-3, 1e-2; tiny model on pydoc, 400 steps):

- mean final validation loss over the runs (lower is better; a diverged run scores
  3 x its initial loss);
- worst / best of the per-start-LR means: how much the start LR still matters.

`--policy NAME=PATH` adds already-trained policies (e.g. the shipped `tiny`, which
had the full PPO budget) to the same table, measured the same way. Variants whose
run folder already holds a finished training are measured without retraining, so
an interrupted study continues where it stopped; a folder trained with another
config is refused, not reused.

Written to `experiments/studies/controller_ablations/ablations.{csv,md}` and printed:

    python experiments/studies/controller_ablations/ablations.py --policy "full budget=tiny"
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from lrpilot.agents.evaluation import evaluate_controller
from lrpilot.agents.policy_file import Policy, load_policy
from lrpilot.agents.train_config import (
    EvalSettings,
    TrainConfig,
    load_train_config,
    start_lr_column,
)
from lrpilot.agents.training import CONFIG_FILE, resume, train
from lrpilot.config import read_toml
from lrpilot.env.features import FEATURE_GROUPS
from lrpilot.env.lr_env import LRControlEnv
from lrpilot.errors import ConfigError
from lrpilot.experiments.replay import policy_env_config
from lrpilot.experiments.report import markdown_table
from lrpilot.files import atomic_write_csv, atomic_write_text
from lrpilot.flags import named_policy

PRESET = "controller"
# name -> (what changes, changes to the preset's [env] table). `also_masked` adds
# features to the preset's own mask; `masked_features` replaces the mask; `action` and
# `ppo` hold changes to the [env.action] and [ppo] tables.
VARIANTS: dict[str, tuple[str, dict]] = {
    "full": ("the controller preset as it is", {}),
    "no-log-lr": ("features: `log_lr` (the LR itself) masked", {"also_masked": ["log_lr"]}),
    "no-loss-features": (
        "features: every loss feature masked (an open-loop schedule of progress and LR)",
        {"also_masked": list(FEATURE_GROUPS["loss"])},
    ),
    "reward-final": ("reward: `final` (-L_T at the end only)", {"reward": "final"}),
    "reward-neg-val-loss": (
        "reward: `neg_val_loss` (-L_t every interval)",
        {"reward": "neg_val_loss"},
    ),
    "no-cooldown": (
        "actions: no cooldown (the LR of every step is the policy's)",
        {"action": {"cooldown_fraction": 0.0}},
    ),
    "warmup": (
        "actions: a fixed linear warmup over the first 5% of the budget",
        {"action": {"warmup_fraction": 0.05}},
    ),
    "first-action": (
        "actions: a wide first action, x100**a at reset in full",
        {"action": {"first_action_max_factor": 100.0}},
    ),
    "sees-lr-rel-start": (
        "features: `log_lr_rel_start` (LR over the start LR) not masked",
        {"masked_features": []},
    ),
    "continuous": (
        "actions: continuous, x2**a with a in [-1, 1] (initial std 1)",
        {"action": {"continuous_max_factor": 2.0}, "ppo": {"log_std_init": 0.0}},
    ),
    "discrete": (
        "actions: discrete x0.25, x0.5, x0.8, x1, x1.25, x2, x4",
        {
            "action": {
                "mode": "discrete",
                "factors": [0.25, 0.5, 0.8, 1.0, 1.25, 2.0, 4.0],
                "first_action_max_factor": 0.0,  # discrete actions have no wide first action
            }
        },
    ),
    "per-interval": (
        "actions: discrete x0.5 ... x2 once per interval (no `factor_span`)",
        {
            "action": {
                "mode": "discrete",
                "factors": [0.5, 0.8, 1.0, 1.25, 2.0],
                "factor_span": 0.0,
                "first_action_max_factor": 0.0,
            }
        },
    ),
}

DEFAULT_VARIANTS = [name for name in VARIANTS if name != "no-loss-features"]


def variant_config(changes: dict, timesteps: int) -> TrainConfig:
    data = copy.deepcopy(read_toml(PRESET, "preset", "presets")[0])
    data["timesteps"] = timesteps
    data["eval_every_timesteps"] = timesteps  # evaluate the untrained and the final policy only
    changes = dict(changes)
    data["ppo"].update(changes.pop("ppo", {}))
    data["env"]["action"].update(changes.pop("action", {}))
    also_masked = changes.pop("also_masked", [])
    data["env"].update(changes)
    data["env"]["masked_features"] = [*data["env"].get("masked_features", []), *also_masked]
    return TrainConfig.from_dict(data)


def check_same_config(out: Path, config: TrainConfig) -> None:
    """Refuse a run folder whose training config differs from the variant's (apart from
    the budget, which resuming extends, unless PPO's learning rate is annealed: a resume
    to another budget would restart it midway, which a fresh run never does)."""
    if not (out / CONFIG_FILE).is_file():
        return
    ignored = (
        {"eval_every_timesteps"} if config.ppo.anneal_lr else {"timesteps", "eval_every_timesteps"}
    )
    saved = load_train_config(str(out / CONFIG_FILE), files_in_preset_folder=False)
    saved = pd.json_normalize(saved.to_dict()).iloc[0].to_dict()
    wanted = pd.json_normalize(config.to_dict()).iloc[0].to_dict()
    differ = sorted(
        key
        for key in saved.keys() | wanted.keys()
        if key not in ignored and saved.get(key) != wanted.get(key)
    )
    if differ:
        raise ConfigError(
            f"{str(out)!r} was trained with another config (differs in {', '.join(differ)}); "
            f"move it away or pass another --out"
        )


def trained_policy(name: str, changes: dict, args: argparse.Namespace) -> tuple[Policy, float]:
    """The variant's final policy, trained now unless its run folder already holds it."""
    out = Path(args.out) / name
    config = variant_config(changes, args.timesteps)
    check_same_config(out, config)
    record = out / "training.json"
    if record.is_file() and json.loads(record.read_text())["timesteps"] >= args.timesteps:
        print(f"{name}: already trained in {out}")
    elif (out / "checkpoints" / "latest.json").is_file():
        resume(out, timesteps=args.timesteps, progress=not args.quiet)
    else:
        train(config, out, progress=not args.quiet)
    seconds = json.loads(record.read_text())["seconds_this_session"]  # the last session only
    return load_policy(out / "policy"), seconds


def measure(policy: Policy, settings: EvalSettings) -> dict:
    """Mean final loss on the evaluation tasks, and its spread over start LRs."""
    env = LRControlEnv(policy_env_config(policy))
    result = evaluate_controller(policy, settings.tasks(), env)
    by_start = {lr: result[start_lr_column(lr)] for lr in settings.start_lrs}
    return {
        "mean final val loss": round(result["mean_final_val_loss"], 4),
        **{f"from {lr:g}": round(v, 4) for lr, v in by_start.items()},
        "worst / best over start LRs": round(max(by_start.values()) / min(by_start.values()), 4),
        "diverged": result["diverged"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=DEFAULT_VARIANTS,
        choices=list(VARIANTS),
        help=f"variants to train and measure (default: {' '.join(DEFAULT_VARIANTS)})",
    )
    parser.add_argument("--timesteps", type=int, default=1600, help="PPO budget of each variant")
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        type=named_policy,
        metavar="NAME=PATH",
        help="also measure a trained policy (path, or a shipped one: `tiny`); repeatable",
    )
    parser.add_argument("--out", default="runs/ablations", help="run folders of the variants")
    parser.add_argument(
        "--results", default="experiments/studies/controller_ablations", help="tables folder"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)  # evaluations run here, beside the env worker processes

    settings = variant_config({}, args.timesteps).eval  # the same tasks for every row
    rows = []
    for name in args.variants:
        what, changes = VARIANTS[name]
        start = time.perf_counter()
        policy, seconds = trained_policy(name, changes, args)
        row = {"variant": name, "what changes": what, "timesteps": args.timesteps}
        row |= measure(policy, settings) | {"training minutes": round(seconds / 60, 1)}
        rows.append(row)
        print(row, f"({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    for name, path in args.policy:
        policy = load_policy(path)
        timesteps = policy.metadata["training"].get("timesteps_done")
        row = {"variant": name, "what changes": f"trained policy `{path}`", "timesteps": timesteps}
        rows.append(row | measure(policy, settings) | {"training minutes": None})
        print(rows[-1], flush=True)

    table = pd.DataFrame(rows)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(results / "ablations.csv", table)
    options = [f"--timesteps {args.timesteps}"] + [f'--policy "{n}={p}"' for n, p in args.policy]
    if args.variants != DEFAULT_VARIANTS:
        options.append("--variants " + " ".join(args.variants))
    command = "python experiments/studies/controller_ablations/ablations.py " + " ".join(options)
    text = f"# Controller ablations\n\n`{command}`\n\n{markdown_table(table)}\n"
    atomic_write_text(results / "ablations.md", text)
    print(text)


if __name__ == "__main__":
    try:
        main()
    except ConfigError as error:  # bad input: one line, no traceback
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
