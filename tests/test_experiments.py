"""Replay (closed and open loop) and compare (protocol, cache, resume after a kill, jobs)."""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import KILL_AFTER_STORES, make_policy

from lrpilot.agents.controllers import PRIOR_RANGE_RULE
from lrpilot.cli import main
from lrpilot.env.actions import applied_lr, lr_factor
from lrpilot.errors import ConfigError
from lrpilot.experiments.compare import RUNS_DIR, CompareConfig, compare
from lrpilot.experiments.compare_config import Protocol
from lrpilot.experiments.replay import REPLAY_COLUMNS
from lrpilot.experiments.report import paired_difference, steps_to_target
from lrpilot.experiments.run_cache import RunSpec
from lrpilot.lm.trace import trace_scores
from lrpilot.settings import RunSettings

SHORT = ["--steps", "20", "--eval-every", "10", "--batch-size", "8", "--quiet"]


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory) -> Path:
    return make_policy(seed=3).save(tmp_path_factory.mktemp("policy"))


# -- replay --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def closed_loop(policy_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("replay")
    args = ["replay", "--policy", str(policy_file), "--seeds", "1,2", "--start-lrs", "3e-3"]
    assert main([*args, *SHORT, "--out", str(out)]) == 0
    return out


def test_closed_loop_replay_writes_traces_with_actions_and_rewards(closed_loop):
    summary = pd.read_csv(closed_loop / "summary.csv")
    assert summary["seed"].tolist() == [1, 2]
    policy = make_policy(seed=3)
    for seed in (1, 2):
        run = closed_loop / f"seed_{seed}"
        trace = pd.read_csv(run / "trace.csv")
        assert tuple(trace.columns) == REPLAY_COLUMNS
        assert trace["step"].tolist() == [0, 10, 20]
        assert (run / "plot.png").stat().st_size > 0 and (run / "summary.json").is_file()
        # each interval's LR is the previous one times the factor of the action taken
        for previous, row in zip(trace.itertuples(), trace.iloc[1:].itertuples(), strict=False):
            expected = previous.lr * lr_factor("discrete", policy.action.factors, int(row.action))
            assert row.lr == pytest.approx(min(max(expected, policy.lr_min), policy.lr_max))
        # rewards telescope to log(L_0 / L_T)
        returned = trace["reward"].sum()
        assert returned == pytest.approx(
            math.log(trace["val_loss"].iloc[0] / trace["val_loss"].iloc[-1])
        )


def test_open_loop_replay_of_a_closed_loop_trace_reproduces_it(closed_loop, tmp_path):
    """Same seed, same LRs: open loop must give the very same run, so a difference on
    other seeds is the effect of feedback alone."""
    recorded = closed_loop / "seed_1" / "trace.csv"
    assert (
        main(["replay", "--trace", str(recorded), "--seeds", "1", *SHORT, "--out", str(tmp_path)])
        == 0
    )
    closed = pd.read_csv(recorded)
    opened = pd.read_csv(tmp_path / "seed_1" / "trace.csv")
    assert tuple(opened.columns) == REPLAY_COLUMNS
    assert opened["action"].isna().all()
    for column in ("lr", "val_loss", "train_loss", "reward", "grad_norm"):
        np.testing.assert_allclose(opened[column], closed[column], rtol=1e-6, err_msg=column)


def test_replay_bad_input_is_one_line_exit_2(closed_loop, policy_file, tmp_path, capsys):
    no_lr = tmp_path / "no_lr.csv"
    pd.read_csv(closed_loop / "seed_1" / "trace.csv").drop(columns="lr").to_csv(no_lr, index=False)
    not_a_policy = tmp_path / "notes.safetensors"
    not_a_policy.write_text("hello")
    cases = [
        (["--trace", str(no_lr)], "lacks column(s) lr"),
        (["--policy", str(not_a_policy)], "not an lrpilot policy file"),
        (["--policy", str(tmp_path / "missing")], "policy file not found"),
        (["--trace", str(closed_loop / "seed_1" / "trace.csv")], "covers 20 steps"),
        (["--policy", str(policy_file), "--seeds", ""], "seeds must not be empty, got nothing"),
        (["--policy", str(policy_file), "--seeds", "1,a"], "expected an integer, got 'a'"),
        (["--policy", str(policy_file), "--seeds=-1"], "seeds has -1, which must be in [0, 2**32)"),
        (["--seeds", "1"], "give one of --policy (closed loop) or --trace (open loop)"),
    ]
    for flags, message in cases:  # all refused before any training
        code = main(["replay", *flags, "--quiet", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2, flags
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / "summary.csv").exists()


# -- compare -------------------------------------------------------------------------------


def small_compare(policy: Path | None, jobs: int = 1) -> CompareConfig:
    """2 schedules on a 2-point grid that the best peak will leave (so it is widened),
    the policy and the baseline controllers, 2 evaluation seeds."""
    protocol = Protocol(
        schedules=("constant", "wsd"),
        controllers=("random", "plateau", "rangestop", "priorstop", "priorhold", "sweepvalley"),
        lr_grid=2,
        lr_range=(1e-4, 1e-3),
        warmups=(),
        tune_seeds=(0,),
        eval_seeds=(1, 2),
        start_lrs=(3e-3,),
    )
    run = RunSettings(steps=20, eval_every=10, batch_size=8, device="cpu")
    return CompareConfig(
        run=run, protocol=protocol, policy=str(policy) if policy else None, jobs=jobs
    )


COMPARE_FLAGS = [
    "--schedules",
    "constant,wsd",
    "--controllers",
    "random,plateau,rangestop,priorstop,priorhold,sweepvalley",
    "--lr-grid",
    "2",
    "--lr-range",
    "1e-4,1e-3",
    "--warmups",
    "",
    "--tune-seeds",
    "0",
    "--eval-seeds",
    "1,2",
    "--start-lrs",
    "3e-3",
    *SHORT,
]  # fmt: skip  (the same comparison as small_compare, as CLI flags)


@pytest.fixture(scope="module")
def compared(policy_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare")
    compare(small_compare(policy_file), out, progress=False)
    return out


def _without_timing(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["seconds"], errors="ignore")


def test_a_rule_from_the_prior_runs_once_for_every_start_lr(tmp_path):
    """priorhold does not read the start LR: compare runs it once per seed, keyed as the
    run from 1e-3 (the suites' untuned start), and reports it under each start LR."""
    config = small_compare(None)
    protocol = dataclasses.replace(
        config.protocol,
        schedules=("constant",),
        controllers=("priorhold", "rangestop"),
        eval_seeds=(1,),
        start_lrs=(1e-4, 3e-3),
    )
    compare(dataclasses.replace(config, protocol=protocol), tmp_path, progress=False)
    specs = [json.loads(p.read_text())["spec"] for p in tmp_path.glob("runs/*/run.json")]
    methods = [spec["method"] for spec in specs]
    assert methods.count("priorhold") == 1 and methods.count("rangestop") == 2
    results = pd.read_csv(tmp_path / "results.csv")
    priorhold = results[results["method"] == "priorhold"]
    by_start = [group["lr"].tolist() for _, group in priorhold.groupby("peak_or_start_lr")]
    assert len(by_start) == 2 and by_start[0] == by_start[1]
    spec = next(spec for spec in specs if spec["method"] == "priorhold")
    key = RunSpec(**(spec | {"lr": 1e-3, "start_lr_used": True})).key
    assert (tmp_path / "runs" / key).is_dir()  # the same key as the run from 1e-3


def test_compare_follows_the_protocol(compared):
    results = pd.read_csv(compared / "results.csv")
    for column in ("label", "method", "phase", "seed", "peak_or_start_lr", *REPLAY_COLUMNS):
        assert column in results.columns
    runs = results.groupby("run").last()
    tune = runs[runs["phase"] == "tune"]
    evaluation = runs[runs["phase"] == "eval"]
    assert set(tune["seed"]) == {0} and set(evaluation["seed"]) == {1, 2}
    assert not (runs["kind"] != "schedule")[runs["phase"] == "tune"].any()  # no policy tuning
    for schedule in ("constant", "wsd"):
        mine = results[(results["method"] == schedule) & (results["phase"] == "tune")]
        finals = {lr: trace_scores(run)[1] for lr, run in mine.groupby("peak_or_start_lr")}
        # 1e-3 beats 1e-4 in 20 steps: on the edge, so the grid gained one step (1e-2)
        assert sorted(finals) == pytest.approx([1e-4, 1e-3, 1e-2])
        best = min(finals, key=finals.get)
        chosen = evaluation[evaluation["method"] == schedule]["peak_or_start_lr"]
        assert chosen.tolist() == pytest.approx([best, best])
    assert set(evaluation[evaluation["kind"] != "schedule"]["peak_or_start_lr"]) == {3e-3}
    rangestop = results[results["method"] == "rangestop"].groupby("seed")["lr"]
    assert rangestop.nth(1).tolist() == pytest.approx([3e-4, 3e-4])  # row 0: before training
    # priorstop starts at 0.4 x the prior of the run's sizes, whatever the start LR
    run = small_compare(None).run
    prior = PRIOR_RANGE_RULE.start_lr(3e-3, run.task(1, 3e-3).make_run().context(), run.steps)
    priorstop = results[results["method"] == "priorstop"].groupby("seed")["lr"]
    assert priorstop.nth(1).tolist() == pytest.approx([0.4 * prior] * 2) and prior != 3e-3
    priorhold = results[results["method"] == "priorhold"].groupby("seed")["lr"]
    # one rise, to the prior (the last step's LR: cooled down)
    last = applied_lr(prior, run.steps - 1, total_steps=run.steps, rule=PRIOR_RANGE_RULE)
    assert priorhold.nth(2).tolist() == pytest.approx([last] * 2)

    summary = pd.read_csv(compared / "summary.csv")
    assert set(summary["label"]) == {
        "constant",
        "wsd",
        "policy (start 0.003)",
        "random (start 0.003)",
        "plateau (start 0.003)",
        "rangestop (start 0.003)",
        "priorstop (start 0.003)",
        "priorhold (start 0.003)",
        "sweepvalley (start 0.003)",
    }
    reference = summary[summary["note"].fillna("").str.startswith("reference")]
    assert len(reference) == 1 and reference["diff_to_best"].iloc[0] == 0
    assert reference["mean"].iloc[0] == summary[summary["kind"] == "schedule"]["mean"].min()
    by_label = summary.set_index("label")
    assert by_label.loc["constant", "tuning_steps"] == 3 * 20  # 3 peaks x 1 tuning seed
    assert by_label.loc["policy (start 0.003)", "tuning_steps"] == 0
    # the rolled-back sweep's 2 steps are in the 20-step budget of each of 2 seeds
    assert by_label.loc["sweepvalley (start 0.003)", "eval_steps"] == 2 * 20
    assert (by_label["wins"] + by_label["losses"] <= 2).all()
    markdown = (compared / "summary.md").read_text()
    assert "| constant |" in markdown and "widened" in markdown
    for name in ("loss_curves.png", "lr_curves.png", "final_loss.png"):
        assert (compared / name).stat().st_size > 0


def test_compare_again_recomputes_nothing(compared, policy_file):
    run_files = sorted((compared / RUNS_DIR).glob("*/run.json"))
    stamps = [f.stat().st_mtime_ns for f in run_files]
    before = pd.read_csv(compared / "results.csv")
    compare(small_compare(policy_file), compared, progress=False)
    assert sorted((compared / RUNS_DIR).glob("*/run.json")) == run_files
    assert [f.stat().st_mtime_ns for f in run_files] == stamps
    pd.testing.assert_frame_equal(pd.read_csv(compared / "results.csv"), before)


def test_results_do_not_depend_on_jobs(compared, policy_file, tmp_path):
    compare(small_compare(policy_file, jobs=2), tmp_path, progress=False)
    for name in ("results.csv", "summary.csv"):
        pd.testing.assert_frame_equal(
            _without_timing(pd.read_csv(tmp_path / name)),
            _without_timing(pd.read_csv(compared / name)),
        )


def test_compare_killed_and_restarted_equals_an_uninterrupted_one(compared, policy_file, tmp_path):
    flags = ["compare", "--policy", str(policy_file), *COMPARE_FLAGS, "--out", str(tmp_path)]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_STORES, "3", *flags],
        start_new_session=True,  # its own process group, which it kills
        stderr=subprocess.DEVNULL,
    )
    assert killed.returncode == -signal.SIGKILL
    survivors = {f: f.stat().st_mtime_ns for f in (tmp_path / RUNS_DIR).glob("*/run.json")}
    assert len(survivors) == 3 and not (tmp_path / "results.csv").exists()

    assert main(flags) == 0
    assert all(f.stat().st_mtime_ns == stamp for f, stamp in survivors.items())  # not rerun
    for name in ("results.csv", "summary.csv"):
        pd.testing.assert_frame_equal(
            _without_timing(pd.read_csv(tmp_path / name)),
            _without_timing(pd.read_csv(compared / name)),
        )
    assert (tmp_path / "summary.md").read_text() == (compared / "summary.md").read_text()


def test_compare_tunes_the_warmup_with_the_peak_and_reuses_the_own_warmups_runs(tmp_path):
    import dataclasses

    config = small_compare(None)
    peaks_only = dataclasses.replace(
        config, protocol=dataclasses.replace(config.protocol, controllers=())
    )
    compare(peaks_only, tmp_path, progress=False)
    cached = {f: f.stat().st_mtime_ns for f in (tmp_path / RUNS_DIR).glob("*/run.json")}
    summary_before = (tmp_path / "summary.csv").read_bytes()
    # 0.05: wsd's own warmup
    both = dataclasses.replace(
        peaks_only, protocol=dataclasses.replace(peaks_only.protocol, warmups=(0.05, 0.5))
    )
    with pytest.raises(ConfigError, match=r"it differs in protocol\.warmups\); give a new --out"):
        compare(both, tmp_path, progress=False)  # another comparison: refused, nothing replaced
    assert (tmp_path / "summary.csv").read_bytes() == summary_before
    compare(both, tmp_path, progress=False, force=True)
    assert all(f.stat().st_mtime_ns == stamp for f, stamp in cached.items())  # not rerun

    runs = pd.read_csv(tmp_path / "results.csv").groupby("run").last()
    tune = runs[runs["phase"] == "tune"]
    wsd = tune[tune["method"] == "wsd"]
    pairs = set(zip(wsd["peak_or_start_lr"].round(6), wsd["warmup"], strict=True))
    assert pairs == {(lr, w) for lr in (1e-4, 1e-3, 1e-2) for w in (0.05, 0.5)}  # widened too
    constant = tune[tune["method"] == "constant"]
    assert len(constant) == 3 and constant["warmup"].isna().all()  # no warmup to tune
    scores = {
        (lr, w): trace_scores(run)[1]
        for (lr, w), run in pd.read_csv(tmp_path / "results.csv")
        .query("phase == 'tune' and method == 'wsd'")
        .groupby(["peak_or_start_lr", "warmup"])
    }
    best_lr, best_warmup = min(scores, key=scores.get)
    chosen = runs[(runs["phase"] == "eval") & (runs["method"] == "wsd")]
    assert chosen["peak_or_start_lr"].tolist() == pytest.approx([best_lr] * 2)
    assert chosen["warmup"].tolist() == [best_warmup] * 2
    summary = pd.read_csv(tmp_path / "summary.csv").set_index("label")
    assert summary.loc["wsd", "warmup"] == best_warmup
    assert summary.loc["wsd", "tuning_steps"] == 6 * 20  # 3 peaks x 2 warmups
    assert "tuned over warmups 0.05, 0.5" in (tmp_path / "summary.md").read_text()


def test_compare_bad_input_is_one_line_exit_2(tmp_path, capsys):
    not_a_policy = tmp_path / "policy.safetensors"
    not_a_policy.write_bytes(b"\x00" * 64)
    cases = [
        (["--schedules", ""], "schedules must not be empty, got nothing"),
        (["--schedules", " , "], "schedules must not be empty, got nothing"),
        (["--schedules", "constant,cosinus"], "schedules has 'cosinus', which must be one of"),
        (["--lr-grid", "1"], "lr_grid must be at least 2, got 1"),
        (["--policy", str(not_a_policy)], "not an lrpilot policy file"),
        (["--controllers", "oracle"], "controllers has 'oracle', which must be one of"),
        (["--tune-seeds", "1", "--eval-seeds", "1,2"], "both tuning and evaluation seeds"),
        (["--lr-range", "1e-2,1e-3"], "lr_range must be LOW,HIGH"),
        (
            ["--warmups", "0.1,1"],
            "warmups has 1.0, which must be a fraction in (0, 1), got 0.1,1.0",
        ),
        (["--warmups", "0.1,0.1"], "warmups must differ in 3 digits, got 0.1,0.1"),
        (["--jobs", "0"], "jobs must be positive, got 0"),
        (["--eval-seeds=-1,2"], "eval_seeds has -1, which must be in [0, 2**32)"),
        (["--eval-seeds", "1,2,2"], "eval_seeds lists 2 twice, got 1,2,2"),
        (["--start-lrs", "1e-3,1.0001e-3"], "start_lrs must differ in 3 digits"),
        (["--address", "auto"], "--address needs --backend ray, got address 'auto'"),
        (
            ["--backend", "ray", "--cpus-per-worker", "0"],
            "cpus_per_worker must be positive, got 0.0",
        ),
    ]
    for flags, message in cases:
        code = main(["compare", *flags, *SHORT, "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert code == 2, flags
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out" / RUNS_DIR).exists()


def test_paired_difference_has_a_reproducible_bootstrap_interval():
    rng = np.random.default_rng(0)
    values, reference = rng.normal(1.0, 0.1, 8), rng.normal(0.9, 0.1, 8)
    mean, low, high = paired_difference(values, reference)
    assert mean == pytest.approx(float(np.mean(values - reference)))
    assert low < mean < high
    assert paired_difference(values, reference) == (mean, low, high)  # seeded resampling
    wider = paired_difference(values * 3, reference * 3)  # the spread scales the interval
    assert wider[2] - wider[1] == pytest.approx(3 * (high - low), rel=0.05)
    assert math.isnan(paired_difference(np.array([1.0]), np.array([0.5]))[1])
    assert paired_difference(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == (1.0, 1.0, 1.0)


def test_steps_to_target_is_the_first_step_at_or_below_it():
    assert steps_to_target([0, 10, 20, 30], [5.0, 3.0, 2.0, 1.5], 2.0) == 20
    assert math.isinf(steps_to_target([0, 10], [5.0, 3.0], 2.0))


def test_ray_backend_without_ray_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what a core install without the extra sees
    code = main(["compare", "--backend", "ray", *SHORT, "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "pip install 'lrpilot[ray]'" in err and len(err.splitlines()) == 1


def test_a_shipped_policy_name_without_its_file_is_one_line(tmp_path, monkeypatch, capsys):
    from lrpilot.agents import policy_file

    monkeypatch.setattr(policy_file, "shipped_policy_path", lambda name: tmp_path / "none")
    code = main(["replay", "--policy", "tiny", "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "lacks its shipped policy file" in err and len(err.splitlines()) == 1


def test_cache_keys_cover_the_corpus_bytes(tmp_path):
    from lrpilot.lm.byte_gpt import ByteGPTWorkload
    from lrpilot.lm.corpus import pydoc_bytes

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_bytes(pydoc_bytes()[:200_000])
    second.write_bytes(pydoc_bytes()[:199_999] + b"!")
    digest = {path: ByteGPTWorkload(corpus=str(path)).digest() for path in (first, second)}
    assert ByteGPTWorkload(corpus=str(first)).digest() == digest[first]
    assert digest[first] != digest[second]


def test_lrpilot_train_without_a_preset_trains_what_made_the_shipped_policy():
    from lrpilot.agents.policy_file import load_policy
    from lrpilot.agents.train_config import DEFAULT_PRESET, TrainConfig, load_train_config

    policy = load_policy("tiny")
    training = dict(policy.metadata["training"])
    done = training.pop("timesteps_done")
    preset = DEFAULT_PRESET  # what `lrpilot train` uses without --preset
    # The shipped file is what that preset trains, run on to 30000 timesteps with
    # `--resume --timesteps 30000` (docs/model-card.md) ...
    assert TrainConfig.from_dict(training) == load_train_config(preset, timesteps=30000)
    assert done == 26000  # ... and its best/ checkpoint, not the final policy
    assert policy.action == TrainConfig.from_dict(training).env.action


def test_result_table_is_written_as_csv_and_markdown(tmp_path):
    from lrpilot.experiments.report import write_result_table

    table = pd.DataFrame({"setting": ["held-out seeds"], "policy / WSD": [1.0124]})
    text = write_result_table(
        tmp_path / "results", "check", table, "A check", "python check.py", footer="3.1 min"
    )
    assert (tmp_path / "results" / "check.md").read_text() == text
    assert text.startswith("# A check\n\n`python check.py`\n\n| setting | policy / WSD |")
    assert text.endswith("\n\n3.1 min\n")
    assert pd.read_csv(tmp_path / "results" / "check.csv").equals(table)
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["check.csv", "check.md"]


def test_a_policy_reads_its_inputs_through_its_normalisation_statistics():
    from lrpilot.agents.policy_file import Policy

    plain = make_policy(seed=3, action_mode="continuous", history=2)
    size = plain.observation_size
    mean, var = np.linspace(-1, 1, size), np.linspace(0.5, 4, size)
    norm = {"mean": mean.tolist(), "var": var.tolist(), "epsilon": 1e-8, "clip_obs": 10.0}
    policy = Policy(plain.weights, plain.metadata | {"normalization": norm})
    observation = np.random.default_rng(0).normal(size=size)
    observation[0] = 1e6  # far outside the statistics: clipped to clip_obs
    normalized = np.clip((observation - mean) / np.sqrt(var + 1e-8), -10.0, 10.0)
    assert normalized[0] == 10.0
    assert torch.allclose(policy.forward(observation), plain.forward(normalized), atol=1e-5)
    # A huge variance makes every input read as its mean, whatever its value.
    flat = Policy(plain.weights, plain.metadata | {"normalization": norm | {"var": [1e12] * size}})
    moved = observation + 3.0
    assert torch.allclose(flat.forward(moved), flat.forward(observation), atol=1e-4)
    assert not torch.allclose(policy.forward(moved), policy.forward(observation), atol=1e-2)


def test_the_demo_checks_its_comparison_then_compares_its_trained_policy(tmp_path, monkeypatch):
    from lrpilot.agents.policy_file import shipped_policy_path
    from lrpilot.experiments import demo

    compared = []
    monkeypatch.setattr(
        demo, "train_demo_controller", lambda out, progress: shipped_policy_path("tiny")
    )
    monkeypatch.setattr(demo, "compare", lambda config, out, progress: compared.append(config))
    demo.run_demo(tmp_path, jobs=2, progress=False)
    assert [config.policy for config in compared] == [str(shipped_policy_path("tiny"))]
    assert compared[0].run.steps == 200 and compared[0].jobs == 2
