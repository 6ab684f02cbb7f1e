"""The Gymnasium environment: LM training as an RL task with an instant reward.

`lrpilot/LRControl-v0` is registered when `lrpilot` is imported.
"""

from lrpilot.env.actions import ACTION_MODES, DEFAULT_FACTORS, ActionRule
from lrpilot.env.features import FEATURE_NAMES, FEATURE_VERSION, FEATURES
from lrpilot.env.lr_env import EnvConfig, LRControlEnv
from lrpilot.env.rewards import REWARD_NAMES
from lrpilot.env.tasks import Task, TaskSpace
from lrpilot.registration import ENV_ID, register_envs

__all__ = [
    "ACTION_MODES",
    "DEFAULT_FACTORS",
    "ENV_ID",
    "FEATURES",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "REWARD_NAMES",
    "ActionRule",
    "EnvConfig",
    "LRControlEnv",
    "Task",
    "TaskSpace",
    "register_envs",
]
