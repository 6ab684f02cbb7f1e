"""lrpilot: learn learning-rate control for neural-network training, language models first.

The public API gathers the pieces a user reaches for most: a controller (the default
rule or a learned policy) in a training loop (`load_policy`, `PolicyScheduler`, and the
Hugging Face and Lightning callbacks), workloads, the environment. The subpackages
`lrpilot.lm`, `lrpilot.env`, `lrpilot.agents` and `lrpilot.experiments` hold the rest.
Names are imported when first used, so `import lrpilot` (and the CLI) stays fast and
needs no torch.
"""

from importlib import import_module

from lrpilot.errors import ConfigError
from lrpilot.registration import ENV_ID, register_envs

__version__ = "0.1.0"

# name -> the module that defines it
_EXPORTS = {
    "load_policy": "lrpilot.agents.policy_file",
    "Policy": "lrpilot.agents.policy_file",
    "PolicyScheduler": "lrpilot.agents.scheduler",
    "LRPilotHFCallback": "lrpilot.integrations.hf",
    "LRPilotLightningCallback": "lrpilot.integrations.lightning",
    "RunSettings": "lrpilot.settings",
    "ActionRule": "lrpilot.env.actions",
    "EnvConfig": "lrpilot.env.lr_env",
    "LRControlEnv": "lrpilot.env.lr_env",
    "Task": "lrpilot.env.tasks",
    "TaskSpace": "lrpilot.env.tasks",
    "Corpus": "lrpilot.lm.corpus",
    "load_corpus": "lrpilot.lm.corpus",
    "GPT": "lrpilot.lm.model",
    "MODEL_PRESETS": "lrpilot.lm.model",
    "ModelConfig": "lrpilot.lm.model",
    "model_preset": "lrpilot.lm.model",
    "IntervalStats": "lrpilot.lm.run",
    "RunParts": "lrpilot.lm.run_parts",
    "StepRun": "lrpilot.lm.run",
    "TestResult": "lrpilot.lm.run",
    "TrainingRun": "lrpilot.lm.run",
    "RunContext": "lrpilot.lm.run_context",
    "SCHEDULE_NAMES": "lrpilot.lm.schedules",
    "make_schedule": "lrpilot.lm.schedules",
    "load_workload": "lrpilot.lm.workloads",
}

register_envs()  # gymnasium.make("lrpilot/LRControl-v0", ...) works after `import lrpilot`


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lrpilot' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["ENV_ID", "ConfigError", "register_envs", *_EXPORTS]
