"""Output folders that never mix two experiments: `claim_folder`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lrpilot.errors import ConfigError
from lrpilot.files import atomic_write_json, json_text

CONFIG_FILE = "config.json"  # what a folder holds: the command and its settings


def claim_folder(out: Path, command: str, settings: dict[str, Any], force: bool) -> None:
    """Record in `out/config.json` that `out` holds this `command`'s results with these
    `settings`. A folder that holds another experiment (another command, or different
    settings) is refused, naming the difference, unless `force`: then its results are
    replaced (cached runs are kept, keyed by their own settings)."""
    record = json.loads(json_text({"command": command} | settings))  # as it reads back
    path = out / CONFIG_FILE
    if path.is_file() and not force:
        try:
            held = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConfigError(
                f"{str(path)!r} cannot be read as JSON: give a new --out, or --force to "
                f"replace what the folder holds"
            ) from None
        changed = _differences(held, record)
        if changed:
            raise ConfigError(
                f"{str(out)!r} holds another experiment (it differs in {', '.join(changed)}); "
                f"give a new --out, or --force to replace its results"
            )
    atomic_write_json(path, record)


def _differences(old: Any, new: Any, where: str = "") -> list[str]:
    """The dotted names of the settings that differ between two records."""
    if isinstance(old, dict) and isinstance(new, dict):
        names = []
        for key in sorted(set(old) | set(new)):
            names += _differences(old.get(key), new.get(key), f"{where}{key}.")
        return names
    return [] if old == new else [where.rstrip(".") or "everything"]
