"""Policy files: a learned LR policy as weights plus JSON metadata, safe to share.

One `.safetensors` file holds the actor network's tensors; its header metadata holds
a JSON document (key `lrpilot`) with the feature-set version, the observation spec,
the action rule, the observation normalisation statistics and the training config.
Loading never unpickles anything, and needs no Stable-Baselines3: `Policy` rebuilds
the small MLP itself. docs/policy-file.md describes the format field by field.

Tensor names: `hidden.{i}.weight`, `hidden.{i}.bias` for each hidden layer (tanh),
`output.weight`, `output.bias` (action logits, or the mean of the continuous action)
and, for continuous policies, `log_std`.

The metadata's format (version 4, every field required) is `policy_format`'s; a file
of another version, or with a field missing, is refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lrpilot.agents.policy_format import check_metadata
from lrpilot.agents.policy_lr import ActionRuleLRs
from lrpilot.agents.rule_policy import DEFAULT_POLICY, RulePolicy, rule_named
from lrpilot.env.features import observation_size
from lrpilot.errors import ConfigError
from lrpilot.files import atomic_write_bytes, json_text

POLICY_FILENAME = "policy.safetensors"
METADATA_KEY = "lrpilot"


class Policy(ActionRuleLRs):
    """A learned LR policy: `act(observation) -> action`, with no SB3 at inference.

    `action` is the `ActionRule` it was trained with: how its actions set the LR.
    """

    def __init__(self, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        self.action = check_metadata(metadata)
        self.metadata = metadata
        self.weights = {name: tensor.float() for name, tensor in weights.items()}
        for name, tensor in self.weights.items():
            if not torch.isfinite(tensor).all():
                raise ConfigError(f"policy tensor {name} holds NaN or infinite values")
        self.masked_features: tuple[str, ...] = tuple(metadata["observation"]["masked"])
        self.history: int = metadata["observation"]["history"]
        self.feature_version: str = metadata["feature_version"]  # the set it observes
        self.observation_size = observation_size(self.history, self.feature_version)
        if self.action.mode == "continuous" and "log_std" not in self.weights:
            raise ConfigError("continuous policy file lacks tensor log_std")
        self.layers = _build_layers(self.weights, metadata)
        unused = (
            set(self.weights)
            - {"log_std"}
            - {f"{layer}.{part}" for layer in self.layers for part in ("weight", "bias")}
        )
        if unused:
            raise ConfigError(f"policy file has tensors no layer uses: {sorted(unused)}")
        norm = metadata["normalization"]
        self._obs_mean = np.asarray(norm["mean"], dtype=np.float64) if norm else None
        self._obs_std = np.sqrt(np.asarray(norm["var"]) + norm["epsilon"]) if norm else None
        self._obs_clip = norm["clip_obs"] if norm else math.inf

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        """The observation as the network saw it in training (VecNormalize statistics)."""
        obs = np.asarray(observation, dtype=np.float64)
        if obs.shape != (self.observation_size,):
            raise ConfigError(
                f"observation of shape {obs.shape}; this policy takes "
                f"{self.observation_size} values ({self.history} evaluations)"
            )
        if self._obs_mean is None:
            return obs
        return np.clip((obs - self._obs_mean) / self._obs_std, -self._obs_clip, self._obs_clip)

    @torch.no_grad()
    def forward(self, observation: np.ndarray) -> torch.Tensor:
        """Raw output: action logits (discrete) or the action mean (continuous)."""
        x = torch.as_tensor(self.normalize(observation), dtype=torch.float32)
        for i, (weight, bias) in enumerate(self.layers.values()):
            x = torch.nn.functional.linear(x, weight, bias)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x

    def act(self, observation: np.ndarray, rng: np.random.Generator | None = None):
        """The action for one raw env observation; deterministic unless `rng` is given."""
        out = self.forward(observation)
        if self.action.mode == "discrete":
            if rng is None:
                return int(out.argmax())
            probs = torch.softmax(out.double(), dim=-1).numpy()
            return int(rng.choice(len(probs), p=probs / probs.sum()))
        mean = out.numpy().astype(np.float64)
        if rng is not None:
            mean = mean + np.exp(self.weights["log_std"].numpy()) * rng.standard_normal(mean.shape)
        return np.clip(mean, -1.0, 1.0).astype(np.float32)

    def with_action(self, **changes: Any) -> Policy:
        """The same network with some action settings changed (e.g. `cooldown_fraction=
        0.4`): a variant to measure; `training` in the metadata still says how it was
        trained."""
        action = dataclasses.replace(self.action, **changes)  # which checks the values
        return Policy(self.weights, self.metadata | {"action": action.to_dict()})

    def digest(self) -> str:
        """sha256 of what the policy does, its weights and its metadata but the `training`
        record (how it was made): two policies that act alike share it."""
        acting = {k: v for k, v in self.metadata.items() if k != "training"}
        digest = hashlib.sha256(json_text(acting, indent=None).encode())
        for name in sorted(self.weights):
            digest.update(name.encode() + self.weights[name].numpy().tobytes())
        return digest.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy file (atomically); `path` is a file or a folder."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path.mkdir(parents=True, exist_ok=True)
            path = path / POLICY_FILENAME
        text = json_text(self.metadata, indent=None)
        tensors = {name: t.contiguous() for name, t in self.weights.items()}
        atomic_write_bytes(path, save_safetensors(tensors, metadata={METADATA_KEY: text}))
        return path


# Learned policy files that ship with lrpilot, by name (docs/model-card.md): `tiny`,
# trained by the `controller` preset on the `tiny` workload, and `prior_generalist`,
# trained by `prior_generalist_h1` on many workloads on the range test from the prior.
SHIPPED_POLICIES = ("tiny", "prior_generalist")


def shipped_policy_path(name: str) -> Path:
    """The file of the shipped learned policy `name`."""
    return Path(str(resources.files("lrpilot.agents") / "policies" / f"{name}.safetensors"))


def resolve_policy_path(path: str | os.PathLike) -> Path:
    """The policy file a user means: a shipped policy by name (`tiny`,
    `prior_generalist`), a file, or a folder holding `policy.safetensors`."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(
            f"policy must be a path (a str or os.PathLike) or a name such as "
            f"{DEFAULT_POLICY!r}, got {type(path).__name__} {path!r}"
        )
    if str(path) in SHIPPED_POLICIES and not Path(path).exists():
        path = shipped_policy_path(str(path))
        if not path.is_file():
            raise ConfigError(f"this lrpilot lacks its shipped policy file {str(path)!r}")
        return path
    rule = rule_named(str(path))
    if rule is not None:
        raise ConfigError(
            f"{str(path)!r} is the fixed rule {rule!r}, not a policy file: compare it with "
            f"--controllers {rule}, run it in a loop with load_policy({str(path)!r})"
        )
    path = Path(path)
    if path.is_dir():
        path = path / POLICY_FILENAME
    if not path.is_file():
        raise ConfigError(f"policy file not found: {str(path)!r}")
    return path


def load_policy(path: str | os.PathLike) -> Policy | RulePolicy:
    """Load a policy file (or a folder holding `policy.safetensors`); never unpickles.

    `default` gives lrpilot's default controller, the fixed rule `priorhold`; the name
    of a fixed rule (`priorhold`, `priorstop`, `rangestop`: `RULE_NAMES`) gives that
    rule as a `RulePolicy` (`lrpilot.agents.rule_policy`); `tiny` and
    `prior_generalist` the shipped learned policies. A file or folder of the same name
    wins.
    """
    rule = rule_named(path)
    if rule is not None:
        return RulePolicy(rule)
    path = resolve_policy_path(path)
    return policy_from_bytes(path.read_bytes(), str(path))


def policy_from_bytes(data: bytes, source: str = "<bytes>") -> Policy:
    """A policy from the bytes of a policy file (`source` names it in errors); this is how
    a policy travels to remote workers."""
    try:
        weights = load_safetensors(data)
        header_size = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_size])
        metadata = json.loads(header["__metadata__"][METADATA_KEY])
    except (SafetensorError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"not an lrpilot policy file (corrupted, truncated or another format): "
            f"{source!r} ({type(exc).__name__})"
        ) from None
    try:
        return Policy(weights, metadata)
    except ConfigError as exc:
        raise ConfigError(f"{source!r}: {exc}") from None
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise ConfigError(
            f"{source!r}: policy metadata is incomplete or malformed ({type(exc).__name__}: {exc})"
        ) from None


def _build_layers(
    weights: dict[str, torch.Tensor], metadata: dict[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (weight, bias)} for `hidden.0`, ..., then `output`; shapes checked."""
    hidden = list(metadata["network"]["hidden"])
    action = metadata["action"]
    n_out = len(action["factors"]) if action["mode"] == "discrete" else 1
    size = observation_size(metadata["observation"]["history"], metadata["feature_version"])
    sizes = [size, *hidden, n_out]
    names = [f"hidden.{i}" for i in range(len(hidden))] + ["output"]
    layers = {}
    for name, n_in, n_out_layer in zip(names, sizes[:-1], sizes[1:], strict=True):
        weight, bias = weights.get(f"{name}.weight"), weights.get(f"{name}.bias")
        if weight is None or bias is None:
            raise ConfigError(f"policy file lacks tensor {name}.weight or {name}.bias")
        if tuple(weight.shape) != (n_out_layer, n_in) or tuple(bias.shape) != (n_out_layer,):
            raise ConfigError(
                f"policy tensor {name} has shape {tuple(weight.shape)}, "
                f"expected {(n_out_layer, n_in)}"
            )
        layers[name] = (weight, bias)
    return layers
