"""Controllers: safe policy files, baseline controllers, and PPO training.

Importing this package does not import Stable-Baselines3: loading and running a
policy needs only torch. PPO training (which needs it) lives in `lrpilot.agents.training`
(the run folder), `train_config` (the config), `ppo` (environments, model, export) and
`evaluation` (evaluation tasks, checkpoint selection).
"""

from lrpilot.agents.controllers import (
    Controller,
    PlateauController,
    RandomController,
    ScheduleController,
)
from lrpilot.agents.policy_file import Policy, load_policy
from lrpilot.agents.rollout import EpisodeResult, run_episode
from lrpilot.agents.scheduler import PolicyScheduler

__all__ = [
    "Controller",
    "EpisodeResult",
    "PlateauController",
    "Policy",
    "PolicyScheduler",
    "RandomController",
    "ScheduleController",
    "load_policy",
    "run_episode",
]
