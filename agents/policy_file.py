"""Policy files: a learned LR policy as weights plus JSON metadata, safe to share.

One `.safetensors` file holds the actor network's tensors; its header metadata holds
a JSON document (key `lrpilot`) with the feature-set version, the observation and
action specs, the observation normalisation statistics and the training config.
Loading never unpickles anything, and needs no Stable-Baselines3: `Policy` rebuilds
the small MLP itself.

Tensor names: `hidden.{i}.weight`, `hidden.{i}.bias` for each hidden layer (tanh),
`output.weight`, `output.bias` (action logits, or the mean of the continuous action)
and, for continuous policies, `log_std`.

Ensembles: a file may hold several networks of the same shape and action rule (PPO
runs with other seeds, say). The first is stored as above; network k >= 1 under the
tensor names `ensemble.{k}.hidden.{i}.weight`, ..., with its normalisation statistics
and training record in the metadata list `ensemble` (entry k - 1). The action is the
mean of the networks' outputs.

Format versions: a file is written as version 3 if it holds an ensemble, else as
version 2 if its policy takes a wide first action (`action.first_action_max_factor >
0`), else as version 1: the oldest version whose readers act as it means (a reader of
version 1 alone would silently ignore the wide first action, and one of version 2 the
other networks), so older readers refuse what they would misread. This lrpilot reads
all three; files written before version 2 existed that take a wide first action
(version 1) are read correctly and re-saved as version 2.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from collections.abc import Sequence
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from lrpilot.env.actions import (
    ACTION_MODES,
    DEFAULT_CONTINUOUS_MAX_FACTOR,
    ActionRule,
    applied_lr,
    check_continuous_max_factor,
    check_first_action_max_factor,
    check_fractions,
    next_lr,
)
from lrpilot.env.features import FEATURE_NAMES, FEATURE_VERSION, check_masked_features
from lrpilot.errors import ConfigError
from lrpilot.files import atomic_write_bytes

FORMAT = "lrpilot-policy"
READABLE_FORMAT_VERSIONS = (1, 2, 3)
ENSEMBLE_PREFIX = "ensemble."  # tensor names of network k >= 1: "ensemble.{k}.hidden.0.weight"
POLICY_FILENAME = "policy.safetensors"
METADATA_KEY = "lrpilot"


class Policy:
    """A learned LR policy: `act(observation) -> action`, with no SB3 at inference."""

    def __init__(self, weights: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
        self.metadata = metadata
        self.weights = {name: tensor.float() for name, tensor in weights.items()}
        _check_metadata(metadata)
        self.action_mode: str = metadata["action"]["mode"]
        self.factors: tuple[float, ...] = tuple(metadata["action"]["factors"])
        # Files written before the setting existed used x2**a.
        self.continuous_max_factor: float = check_continuous_max_factor(
            metadata["action"].get("continuous_max_factor", DEFAULT_CONTINUOUS_MAX_FACTOR),
            "policy's ",
        )
        self.lr_min: float = metadata["action"]["lr_min"]
        self.lr_max: float = metadata["action"]["lr_max"]
        self.factor_span: float = float(metadata["action"]["factor_span"])
        # Files written before the setting existed have a first action like the others.
        self.first_action_max_factor: float = check_first_action_max_factor(
            metadata["action"].get("first_action_max_factor", 0.0), self.action_mode, "policy's "
        )
        # Files written before the cooldown or the warmup existed have none.
        self.warmup_fraction, self.cooldown_fraction = check_fractions(
            metadata["action"].get("warmup_fraction", 0.0),
            metadata["action"].get("cooldown_fraction", 0.0),
            "policy's ",
        )
        self.masked_features: tuple[str, ...] = check_masked_features(
            metadata["observation"]["masked"]
        )
        if self.action_mode == "continuous" and "log_std" not in self.weights:
            raise ConfigError("continuous policy file lacks tensor log_std")
        others = metadata.get("ensemble", [])
        if not isinstance(others, list):
            raise ConfigError(
                f"policy metadata 'ensemble' must be a list, got a {type(others).__name__}"
            )
        for k, member in enumerate(others, start=1):
            if not isinstance(member, dict) or "normalization" not in member:
                raise ConfigError(
                    f"policy metadata 'ensemble' entry {k} must be a table with "
                    f"'normalization', got a {type(member).__name__}"
                )
        members = [metadata, *others]  # network k's normalisation and training record
        self.networks: list[_Network] = [
            _Network(self.weights, k, member.get("normalization"), member.get("training"), metadata)
            for k, member in enumerate(members)
        ]
        unused = set(self.weights) - {"log_std"}
        for network in self.networks:
            unused -= {network.prefix + name for name in network.tensors}
        if unused:
            raise ConfigError(f"policy file has tensors no network uses: {sorted(unused)}")

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        """The observation as the network saw it in training (VecNormalize statistics;
        in an ensemble, the first network's: each network normalises with its own)."""
        return self.networks[0].normalize(observation)

    @torch.no_grad()
    def forward(self, observation: np.ndarray) -> torch.Tensor:
        """Raw output, the mean over the networks: action logits (discrete) or action mean
        (continuous)."""
        return torch.stack([network(observation) for network in self.networks]).mean(dim=0)

    def act(self, observation: np.ndarray, rng: np.random.Generator | None = None):
        """The action for one raw env observation; deterministic unless `rng` is given."""
        out = self.forward(observation)
        if self.action_mode == "discrete":
            if rng is None:
                return int(out.argmax())
            probs = torch.softmax(out.double(), dim=-1).numpy()
            return int(rng.choice(len(probs), p=probs / probs.sum()))
        mean = out.numpy().astype(np.float64)
        if rng is not None:
            mean = mean + np.exp(self.weights["log_std"].numpy()) * rng.standard_normal(mean.shape)
        return np.clip(mean, -1.0, 1.0).astype(np.float32)

    @cached_property
    def action_rule(self) -> ActionRule:
        """How this policy's actions change the LR, as in its training environment
        (built once: `next_lr` runs at every interval)."""
        return ActionRule.of(self)

    def next_lr(
        self, lr: float, action, *, first: bool, interval_steps: int, total_steps: int
    ) -> float:
        """The LR of the next interval after `action`, as the training environment set it
        (`first`: the run's first action, taken before any step)."""
        return next_lr(
            lr,
            action,
            first=first,
            interval_steps=interval_steps,
            total_steps=total_steps,
            rule=self.action_rule,
        )

    def applied_lr(self, lr: float, step: int, *, total_steps: int) -> float:
        """The LR step `step` trains at when this policy's LR is `lr` (its warmup and
        cooldown)."""
        return applied_lr(
            lr,
            step,
            total_steps=total_steps,
            cooldown_fraction=self.cooldown_fraction,
            warmup_fraction=self.warmup_fraction,
        )

    def with_fractions(
        self, *, warmup_fraction: float | None = None, cooldown_fraction: float | None = None
    ) -> Policy:
        """The same network(s) with another fixed warmup or cooldown (None keeps this
        policy's). The network was trained with its own fractions; the new ones are a
        variant to measure, and `training` in the metadata still says how it was trained."""
        metadata = copy.deepcopy(self.metadata)  # the variant shares nothing mutable
        if warmup_fraction is not None:
            metadata["action"]["warmup_fraction"] = warmup_fraction
        if cooldown_fraction is not None:
            metadata["action"]["cooldown_fraction"] = cooldown_fraction
        return Policy(self.weights, metadata)  # which checks the fractions

    def save(self, path: str | os.PathLike) -> Path:
        """Write the policy file (atomically); `path` is a file or a folder."""
        path = Path(path)
        if path.suffix != ".safetensors":
            path.mkdir(parents=True, exist_ok=True)
            path = path / POLICY_FILENAME
        metadata = dict(self.metadata)
        version = metadata.get("format_version")
        if _readable_format_version(version):  # an unreadable one is written as it is
            metadata["format_version"] = max(version, _needed_format_version(metadata))
        text = json.dumps(metadata, sort_keys=True)
        tensors = {name: t.contiguous() for name, t in self.weights.items()}
        atomic_write_bytes(path, save_safetensors(tensors, metadata={METADATA_KEY: text}))
        return path


def ensemble_policy(policies: Sequence[Policy]) -> Policy:
    """One policy whose action is the mean of these policies' network outputs (their
    action means, for continuous actions). They must see the same features and share the
    network shape and action rule (the same preset trained with other seeds, say); the
    first one's metadata and `log_std` lead, and every network keeps its own
    normalisation and training record (in `ensemble`, after the first)."""
    if not policies:
        raise ConfigError("an ensemble needs at least one policy")
    first = policies[0]
    weights = dict(first.weights)
    others = list(first.metadata.get("ensemble", []))
    for policy in policies[1:]:
        _check_same_rule(first, policy)
        for network in policy.networks:
            others.append({"normalization": network.normalization, "training": network.training})
            prefix = _network_prefix(len(others))
            weights |= {prefix + name: tensor for name, tensor in network.tensors.items()}
    metadata = copy.deepcopy(first.metadata)  # the ensemble shares nothing mutable
    metadata["ensemble"] = copy.deepcopy(others)
    metadata["format_version"] = max(metadata["format_version"], _needed_format_version(metadata))
    return Policy(weights, metadata)


def _check_same_rule(first: Policy, other: Policy) -> None:
    """Raise `ConfigError` naming the first setting in which `other` acts differently."""
    ours, theirs = _acting_settings(first), _acting_settings(other)
    for name, value in theirs.items():
        if value != ours[name]:
            raise ConfigError(
                f"ensemble members differ in {name}: {value!r} against {ours[name]!r}"
            )


def _acting_settings(policy: Policy) -> dict[str, Any]:
    """What turns the policy's observations into LRs, besides the weights: its action
    rule (`ActionRule`), fixed warmup and cooldown, masked features and layer sizes."""
    return dataclasses.asdict(policy.action_rule) | {
        "warmup_fraction": policy.warmup_fraction,
        "cooldown_fraction": policy.cooldown_fraction,
        "masked_features": policy.masked_features,
        "hidden layers": policy.metadata["network"]["hidden"],
    }


class _Network:
    """Network `k` of a policy file: an MLP with the observation normalisation and the
    training record of the PPO run that made it."""

    def __init__(
        self,
        weights: dict[str, torch.Tensor],
        k: int,
        normalization: dict[str, Any] | None,
        training: dict[str, Any] | None,
        metadata: dict[str, Any],
    ) -> None:
        self.prefix = _network_prefix(k)  # of its tensors' names in the file
        self.layers = _build_layers(weights, self.prefix, metadata)
        self.normalization, self.training = normalization, training
        norm = normalization
        if norm and not len(norm["mean"]) == len(norm["var"]) == len(FEATURE_NAMES):
            raise ConfigError(
                f"policy normalisation statistics of network {k} do not match the features"
            )
        self._obs_mean = np.asarray(norm["mean"], dtype=np.float64) if norm else None
        self._obs_std = np.sqrt(np.asarray(norm["var"]) + norm["epsilon"]) if norm else None
        self._obs_clip = norm["clip_obs"] if norm else math.inf

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """Its tensors under their names without the prefix (`hidden.0.weight`, ...)."""
        return {
            f"{layer}.{part}": tensor
            for layer, pair in self.layers.items()
            for part, tensor in zip(("weight", "bias"), pair, strict=True)
        }

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        obs = np.asarray(observation, dtype=np.float64)
        if self._obs_mean is None:
            return obs
        return np.clip((obs - self._obs_mean) / self._obs_std, -self._obs_clip, self._obs_clip)

    def __call__(self, observation: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(self.normalize(observation), dtype=torch.float32)
        for i, (weight, bias) in enumerate(self.layers.values()):
            x = torch.nn.functional.linear(x, weight, bias)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


def _network_prefix(k: int) -> str:
    """Tensor-name prefix of network `k`: none for the first, `ensemble.{k}.` after it."""
    return f"{ENSEMBLE_PREFIX}{k}." if k else ""


def _layer_names(metadata: dict[str, Any]) -> list[str]:
    """`hidden.0`, ..., `output`: a network's layers, in order."""
    return [f"hidden.{i}" for i in range(len(metadata["network"]["hidden"]))] + ["output"]


DEFAULT_POLICY = "default"  # the name of the policy shipped with lrpilot


def default_policy_path() -> Path:
    """The shipped policy, trained by the `controller` preset (README: which commit's)."""
    return Path(str(resources.files("lrpilot.agents") / "policies" / "default.safetensors"))


def resolve_policy_path(path: str | os.PathLike) -> Path:
    """The policy file a user means: `default` (the shipped policy), a file, or a folder
    holding `policy.safetensors`."""
    if str(path) == DEFAULT_POLICY and not Path(path).exists():
        path = default_policy_path()
        if not path.is_file():
            raise ConfigError("this lrpilot ships no default policy; give a policy path")
        return path
    path = Path(path)
    if path.is_dir():
        path = path / POLICY_FILENAME
    if not path.is_file():
        raise ConfigError(f"policy file not found: {str(path)!r}")
    return path


def load_policy(path: str | os.PathLike) -> Policy:
    """Load a policy file (or a folder holding `policy.safetensors`); never unpickles."""
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


def _check_metadata(metadata: dict[str, Any]) -> None:
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ConfigError("metadata is not an lrpilot policy's")
    version = metadata.get("format_version")
    if not _readable_format_version(version):
        raise ConfigError(
            f"policy format version {version!r} is not supported "
            f"(this lrpilot reads {', '.join(map(str, READABLE_FORMAT_VERSIONS))})"
        )
    if metadata.get("feature_version") != FEATURE_VERSION:
        raise ConfigError(
            f"policy was trained on feature set {metadata.get('feature_version')!r}, "
            f"this lrpilot computes {FEATURE_VERSION!r}"
        )
    if tuple(metadata["observation"]["features"]) != FEATURE_NAMES:
        raise ConfigError("policy's observation features differ from this lrpilot's")
    if metadata["action"]["mode"] not in ACTION_MODES:
        raise ConfigError(f"unknown action mode {metadata['action']['mode']!r} in policy")


def _build_layers(
    weights: dict[str, torch.Tensor], prefix: str, metadata: dict[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{layer: (weight, bias)} for the hidden layers then the output of the network whose
    tensor names start with `prefix`, keyed without the prefix; shapes checked."""
    hidden = list(metadata["network"]["hidden"])
    action = metadata["action"]
    n_out = len(action["factors"]) if action["mode"] == "discrete" else 1
    sizes = [len(FEATURE_NAMES), *hidden, n_out]
    layers = {}
    for layer, n_in, n_out_layer in zip(_layer_names(metadata), sizes[:-1], sizes[1:], strict=True):
        name = prefix + layer
        weight, bias = weights.get(f"{name}.weight"), weights.get(f"{name}.bias")
        if weight is None or bias is None:
            raise ConfigError(f"policy file lacks tensor {name}.weight or {name}.bias")
        if tuple(weight.shape) != (n_out_layer, n_in) or tuple(bias.shape) != (n_out_layer,):
            raise ConfigError(
                f"policy tensor {name} has shape {tuple(weight.shape)}, "
                f"expected {(n_out_layer, n_in)}"
            )
        layers[layer] = (weight, bias)
    return layers


def _readable_format_version(version: Any) -> bool:
    """Whether this lrpilot reads format `version` (bools excluded: True == 1)."""
    return not isinstance(version, bool) and version in READABLE_FORMAT_VERSIONS


def _needed_format_version(metadata: dict[str, Any]) -> int:
    """`format_version` of the policy this metadata describes."""
    return format_version(
        metadata["action"].get("first_action_max_factor", 0.0),
        ensemble=bool(metadata.get("ensemble")),
    )


def format_version(first_action_max_factor: float, *, ensemble: bool = False) -> int:
    """The oldest format version that describes a policy: 3 if it holds an ensemble
    (which a version-2 reader would read as its first network), else 2 if it takes a wide
    first action (which a version-1 reader would ignore and so misread), else 1."""
    if ensemble:
        return 3
    return 2 if first_action_max_factor else 1


def policy_metadata(
    *,
    action_mode: str,
    factors: tuple[float, ...],
    continuous_max_factor: float = DEFAULT_CONTINUOUS_MAX_FACTOR,
    lr_min: float,
    lr_max: float,
    factor_span: float,
    first_action_max_factor: float = 0.0,
    masked_features: tuple[str, ...],
    hidden: list[int],
    cooldown_fraction: float = 0.0,
    warmup_fraction: float = 0.0,
    normalization: dict[str, Any] | None,
    training: dict[str, Any],
) -> dict[str, Any]:
    """The JSON metadata of a policy file (see the module docstring)."""
    return {
        "format": FORMAT,
        "format_version": format_version(first_action_max_factor),
        "feature_version": FEATURE_VERSION,
        "observation": {
            "features": list(FEATURE_NAMES),
            "shape": [len(FEATURE_NAMES)],
            "masked": list(masked_features),
        },
        "action": {
            "mode": action_mode,
            "factors": list(factors),
            "continuous_max_factor": continuous_max_factor,
            "lr_min": lr_min,
            "lr_max": lr_max,
            "factor_span": factor_span,
            "first_action_max_factor": first_action_max_factor,
            "cooldown_fraction": cooldown_fraction,
            "warmup_fraction": warmup_fraction,
        },
        "network": {"hidden": list(hidden), "activation": "tanh"},
        "normalization": normalization,
        "training": training,
    }
