"""A fixed LR rule in the place of a learned policy: `load_policy("priorhold")` runs
the rule in a user's loop through `PolicyScheduler` and the Hugging Face and Lightning
callbacks, exactly as `compare` and the suites run it in the env.

`load_policy("default")` is `priorhold`, the controller lrpilot ships as its default.

The rules are the range-test controllers of `lrpilot.agents.controllers.RANGE_RULES`:
- `priorhold`: the first interval at 0.4x the LR prior of the run's sizes
  (`ActionRule.prior_lr`), one rise of x2.5 to the prior, held to the end, with WSD's
  1 - sqrt cooldown over the last 20%; if the first interval's validation loss rose, it
  holds 0.4x the prior instead;
- `priorstop`: the same start, rising on while each interval's gain is at least 0.7 of
  the best one's;
- `rangestop`: the range test from a tenth of the start LR (it reads the start LR).
A rule from the prior ignores the start LR and needs the tokens (or examples) per step:
`tokens_per_step=`, or the first batch in the callbacks.

A rule has a state (whether it still rises, its best interval so far), so one
`RulePolicy` drives one run at a time; the controller's state dict keeps that state.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lrpilot.agents.controllers import RANGE_RULES, RangeStopController, rule_digest
from lrpilot.agents.policy_lr import ActionRuleLRs
from lrpilot.errors import ConfigError

RULE_NAMES = tuple(RANGE_RULES)  # what load_policy takes for a rule
DEFAULT_POLICY = "default"  # lrpilot's default controller, the rule DEFAULT_RULE
# No learned policy met issue 37's targets to replace it (docs/model-card.md).
DEFAULT_RULE = "priorhold"


def rule_named(policy: object) -> str | None:
    """The fixed rule that `policy` (what a user passed as a policy) names: one of
    `RULE_NAMES`, or `default` for `DEFAULT_RULE`; None for anything else, and for a
    name that is also a file or folder (a path wins)."""
    if not isinstance(policy, str) or Path(policy).exists():
        return None
    if policy == DEFAULT_POLICY:
        return DEFAULT_RULE
    return policy if policy in RULE_NAMES else None


class RulePolicy(ActionRuleLRs):
    """The fixed rule `name` with the interface of a `Policy`."""

    feature_version = "v2"  # the rules read the progress and the validation loss only
    masked_features: tuple[str, ...] = ()
    history = 1

    def __init__(self, name: str) -> None:
        if name not in RANGE_RULES:
            raise ConfigError(f"no LR rule named {name!r}; the rules are {', '.join(RULE_NAMES)}")
        self.name = name
        self.action, settings = RANGE_RULES[name]
        self.rule = RangeStopController(rule=self.action, **settings)

    def act(self, observation: np.ndarray):
        """The rule's action for one raw observation (it keeps its own state)."""
        return self.rule.act(observation)

    def state_dict(self) -> dict[str, Any]:
        """The rule's name and where its range test stands (plain data)."""
        return {"rule": self.name, **self.rule.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`'s data, of a rule of the same name."""
        if not isinstance(state, Mapping) or state.get("rule") != self.name:
            raise ConfigError(f"not a state of the rule {self.name!r}: {state!r}")
        self.rule.load_state_dict({k: v for k, v in state.items() if k != "rule"})

    def digest(self) -> str:
        """sha256 of the rule's settings, as `compare`'s cache keys that controller's runs."""
        return rule_digest(self.name)

    def __repr__(self) -> str:
        return f"RulePolicy({self.name!r})"
