"""What a policy file's metadata holds: format version 4, every field required.

The metadata is one JSON document (docs/policy-file.md describes it field by field).
`policy_metadata` builds it; `check_metadata` refuses, in one line naming the field,
a document of another format or version, of another feature set, or with a field
missing, unknown or of the wrong kind. Nothing here reads a file or runs a network
(`lrpilot.agents.policy_file` does).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from lrpilot.env.actions import ActionRule
from lrpilot.env.features import (
    FEATURE_SETS,
    FEATURE_VERSION,
    check_feature_version,
    check_history,
    check_masked_features,
    observation_size,
)
from lrpilot.errors import ConfigError

FORMAT = "lrpilot-policy"
FORMAT_VERSION = 4
ACTIVATION = "tanh"  # the hidden layers' activation, the only one a policy file may name

# The fields of each table; `action` holds the fields of `ActionRule`.
_TOP_FIELDS = (
    "format",
    "format_version",
    "feature_version",
    "observation",
    "action",
    "network",
    "normalization",
    "training",
)
_TABLE_FIELDS = {
    "observation": ("features", "shape", "masked", "history"),
    "action": tuple(field.name for field in dataclasses.fields(ActionRule)),
    "network": ("hidden", "activation"),
    "normalization": ("mean", "var", "epsilon", "clip_obs"),  # or null: none
}


def policy_metadata(
    *,
    action: ActionRule,
    masked_features: tuple[str, ...],
    history: int = 1,
    feature_version: str = FEATURE_VERSION,
    hidden: list[int],
    normalization: dict[str, Any] | None,
    training: dict[str, Any],
) -> dict[str, Any]:
    """The JSON metadata of a policy file (see docs/policy-file.md)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "feature_version": feature_version,
        "observation": {
            "features": list(FEATURE_SETS[check_feature_version(feature_version)]),
            "shape": [observation_size(history, feature_version)],
            "masked": list(masked_features),
            "history": history,
        },
        "action": action.to_dict(),
        "network": {"hidden": list(hidden), "activation": ACTIVATION},
        "normalization": normalization,
        "training": training,
    }


def check_metadata(metadata: Any) -> ActionRule:
    """The `ActionRule` of `metadata`, or a one-line `ConfigError` if this lrpilot cannot
    run the policy exactly as it was trained."""
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ConfigError("metadata is not an lrpilot policy's")
    version = metadata.get("format_version")
    if isinstance(version, bool) or version != FORMAT_VERSION:
        raise ConfigError(
            f"policy format version {version!r} is not supported (this lrpilot reads "
            f"{FORMAT_VERSION}; retrain or re-export the policy with this lrpilot)"
        )
    _check_fields("policy metadata", metadata, _TOP_FIELDS)
    version = metadata["feature_version"]
    if not isinstance(version, str) or version not in FEATURE_SETS:
        raise ConfigError(
            f"policy was trained on feature set {version!r}, "
            f"this lrpilot computes {', '.join(map(repr, FEATURE_SETS))}"
        )
    for table, fields in _TABLE_FIELDS.items():
        if not (table == "normalization" and metadata[table] is None):
            _check_fields(f"policy {table} table", metadata[table], fields)
    observation = metadata["observation"]
    if tuple(observation["features"]) != FEATURE_SETS[version]:
        raise ConfigError(
            f"policy's observation features differ from this lrpilot's feature set {version!r}"
        )
    check_masked_features(observation["masked"])
    size = observation_size(check_history(observation["history"]), version)
    if observation["shape"] != [size]:
        raise ConfigError(
            f"policy's observation shape {observation['shape']!r} is not [{size}] "
            f"({len(FEATURE_SETS[version])} features x its history)"
        )
    activation = metadata["network"]["activation"]
    if activation != ACTIVATION:
        raise ConfigError(f"policy network activation must be {ACTIVATION!r}, got {activation!r}")
    if metadata["normalization"] is not None:
        _check_normalization(metadata["normalization"], size)
    return ActionRule(**metadata["action"])  # which checks the values


def _check_fields(name: str, table: Any, fields: tuple[str, ...]) -> None:
    """A one-line `ConfigError` naming the missing and unknown fields of `table`."""
    if not isinstance(table, dict):
        raise ConfigError(f"{name} must be a table, got {table!r}")
    missing = sorted(set(fields) - set(table))
    unknown = sorted(set(table) - set(fields))
    if missing or unknown:
        raise ConfigError(
            f"{name}: missing {', '.join(missing) or 'nothing'}, "
            f"unknown {', '.join(unknown) or 'nothing'}"
        )


def _check_normalization(norm: dict[str, Any], size: int) -> None:
    """VecNormalize's statistics: one finite mean and variance >= 0 per observation value,
    a positive epsilon and clip."""
    if not len(norm["mean"]) == len(norm["var"]) == size:
        raise ConfigError("policy normalisation statistics do not match the features")
    for name in ("mean", "var"):
        if not all(_is_real(v) and math.isfinite(v) for v in norm[name]):
            raise ConfigError(f"policy normalization.{name} holds values that are not finite")
    if min(norm["var"]) < 0:
        raise ConfigError(f"policy normalization.var holds a negative value, {min(norm['var'])!r}")
    for name in ("epsilon", "clip_obs"):
        if not (_is_real(norm[name]) and norm[name] > 0):
            raise ConfigError(
                f"policy normalization.{name} must be a positive number, got {norm[name]!r}"
            )


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
