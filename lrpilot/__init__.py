"""lrpilot: learn learning-rate control for neural-network training, language models first.

The public API gathers the pieces a user reaches for most; the subpackages
`lrpilot.lm`, `lrpilot.env`, `lrpilot.agents` and `lrpilot.experiments` hold the rest.
"""

from lrpilot.env import (
    ENV_ID,
    ActionRule,
    EnvConfig,
    LRControlEnv,
    Task,
    TaskSpace,
    register_envs,
)
from lrpilot.errors import ConfigError
from lrpilot.lm.corpus import Corpus, load_corpus
from lrpilot.lm.model import GPT, MODEL_PRESETS, ModelConfig, model_preset
from lrpilot.lm.run import IntervalStats, RunParts, StepRun, TestResult, TrainingRun
from lrpilot.lm.schedules import SCHEDULE_NAMES, make_schedule
from lrpilot.lm.workloads import load_workload

__version__ = "0.1.0"

register_envs()  # gymnasium.make("lrpilot/LRControl-v0", ...) works after `import lrpilot`

__all__ = [
    "ENV_ID",
    "GPT",
    "MODEL_PRESETS",
    "SCHEDULE_NAMES",
    "ActionRule",
    "ConfigError",
    "Corpus",
    "EnvConfig",
    "IntervalStats",
    "LRControlEnv",
    "ModelConfig",
    "RunParts",
    "StepRun",
    "Task",
    "TaskSpace",
    "TestResult",
    "TrainingRun",
    "load_corpus",
    "load_workload",
    "make_schedule",
    "model_preset",
    "register_envs",
]
