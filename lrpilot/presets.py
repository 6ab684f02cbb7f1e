"""Presets: TOML files in `experiments/presets/`, read with `tomllib`."""

from __future__ import annotations

import dataclasses
import sys
from importlib import resources
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def preset_names() -> list[str]:
    folder = resources.files("lrpilot.experiments") / "presets"
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def load_preset(name: str) -> dict[str, Any]:
    """A preset by name (`tiny`, `default`, ...) or a path to a TOML file."""
    if name.endswith(".toml"):
        path = Path(name)
        if not path.is_file():
            raise ConfigError(f"preset file not found: {name!r}")
        text = path.read_text()
    else:
        file = resources.files("lrpilot.experiments") / "presets" / f"{name}.toml"
        if not file.is_file():
            raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(preset_names())}")
        text = file.read_text()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"preset {name!r} is not valid TOML: {exc}") from None


def dataclass_from_dict(cls, data: dict[str, Any], where: str):
    """Build dataclass `cls` from `data`, naming any key it does not know."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown key(s) in [{where}]: {', '.join(unknown)}")
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"[{where}] {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[{where}] has an invalid value: {exc}") from None
