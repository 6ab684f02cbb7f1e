import dataclasses
import math

import pytest
import torch

from lrpilot.errors import ConfigError
from lrpilot.lm.byte_gpt import ByteGPTRun


def _comparable(stats):
    fields = dataclasses.asdict(stats)
    fields.pop("seconds")
    return fields


def test_interval_stats_are_complete_and_finite(small_corpus, micro_workload):
    trainer = ByteGPTRun(small_corpus, micro_workload)
    stats = trainer.train(5, 1e-3)
    assert stats.step == 5 and stats.steps == 5 and trainer.step == 5
    assert stats.tokens == 5 * micro_workload.batch_size * micro_workload.block_size
    assert not stats.nonfinite and stats.nonfinite_steps == 0
    for name in ("train_loss_mean", "train_loss_std", "val_loss", "grad_norm", "update_ratio"):
        value = getattr(stats, name)
        assert math.isfinite(value) and value >= 0, name
    assert stats.update_ratio > 0 and stats.seconds > 0


def test_same_seed_gives_identical_stats(small_corpus, micro_workload):
    runs = []
    for _ in range(2):
        trainer = ByteGPTRun(small_corpus, micro_workload)
        runs.append([_comparable(trainer.train(4, lr)) for lr in (3e-3, 1e-3)])
    assert runs[0] == runs[1]
    other = ByteGPTRun(small_corpus, micro_workload, seed=1)
    assert _comparable(other.train(4, 3e-3)) != runs[0][0]


def test_validation_set_is_fixed_for_the_run(small_corpus, micro_workload):
    trainer = ByteGPTRun(small_corpus, micro_workload)
    assert trainer.evaluate() == trainer.evaluate()
    # With LR 0 nothing changes: the validation loss after the interval equals the one before.
    before = trainer.evaluate()
    assert trainer.train(3, 0.0).val_loss == pytest.approx(before, abs=1e-6)


def test_training_lowers_the_validation_loss(small_corpus, micro_workload):
    trainer = ByteGPTRun(small_corpus, micro_workload)
    initial = trainer.evaluate()
    for _ in range(3):
        stats = trainer.train(10, 1e-2)
    assert stats.val_loss < initial - 0.5


def test_per_step_lr_function_is_followed(small_corpus, micro_workload):
    trainer = ByteGPTRun(small_corpus, micro_workload)
    seen = []

    def lr_at(step):
        seen.append(step)
        return 1e-3 * (step + 1)

    stats = trainer.train(4, lr_at)
    assert seen == [0, 1, 2, 3]
    assert stats.lr == pytest.approx(4e-3)
    assert stats.lr_mean == pytest.approx(2.5e-3)


def test_non_finite_loss_is_skipped_and_flagged(small_corpus, micro_workload):
    trainer = ByteGPTRun(small_corpus, micro_workload)
    with torch.no_grad():
        trainer.model.ln_f.weight.fill_(float("nan"))
    stats = trainer.train(3, 1e-3)
    assert stats.nonfinite and stats.nonfinite_steps == 3
    assert math.isnan(stats.val_loss) and stats.update_ratio == 0.0
    assert trainer.step == 3


def test_bad_interval_arguments(small_corpus, micro_workload):
    trainer = ByteGPTRun(small_corpus, micro_workload)
    with pytest.raises(ConfigError, match="steps must be a positive integer, got 0"):
        trainer.train(0, 1e-3)
    with pytest.raises(ConfigError, match="learning rate"):
        trainer.train(1, float("nan"))


def test_prodigy_as_its_authors_advise_warms_up_and_safeguards_the_warmup():
    pytest.importorskip("prodigyopt")
    from lrpilot.lm.optimizers import use_tuning_free
    from lrpilot.settings import RunSettings

    task = RunSettings("tiny", steps=40, eval_every=10, batch_size=4).task(0, 1e-3)
    plain, warmed = task.make_run("cpu"), task.make_run("cpu")
    plain_lr, warmed_lr = (
        use_tuning_free(plain, "prodigy", 40),
        use_tuning_free(warmed, "prodigy_warmup", 40),
    )
    assert plain_lr(0) == 1.0 and warmed_lr(0) == pytest.approx(0.5)  # 2 warmup steps of 40
    assert warmed_lr(2) == pytest.approx(1.0) and warmed_lr(39) < 0.01
    assert [
        g["safeguard_warmup"]
        for g in (plain.optimizer.param_groups[0], warmed.optimizer.param_groups[0])
    ] == [False, True]
