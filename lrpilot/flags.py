"""Command-line flags built from settings dataclasses (`lrpilot.config.setting` fields).

Each field is one flag, `--field-name`, documented by the field's help; a nested
dataclass field contributes its own fields. Lists are comma-separated (`--seeds 1,2,3`),
`true/false` fields are switches, and the default is printed once, by argparse. Values
are checked by the dataclass itself when `build` makes it, so a flag, a TOML file and a
Python call meet the same checks.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

from lrpilot.config import describe, field_types


def _parser_of(hint: Any):
    """An argparse `type` that reads one flag's text as `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if type(None) in args:  # X | None: the flag gives an X
        inner = [a for a in args if a is not type(None)]
        return _parser_of(inner[0]) if len(inner) == 1 else str
    if origin is tuple:
        item = _parser_of(args[0])

        def parse_list(text: str) -> tuple:
            return tuple(item(part.strip()) for part in text.split(",") if part.strip())

        return parse_list

    def parse(text: str):
        try:
            return hint(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {describe(hint)}, got {text!r}") from None

    return parse if hint in (int, float) else str


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return str(value)


def add_flags(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    default_is: str | None = None,
) -> None:
    """One flag per field of dataclass `cls` (of the names in `only`, if given).

    `default_is`: the flags override values held elsewhere (a preset): their default is
    None, shown as `default_is` ("the preset's")."""
    hints = field_types(cls)
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            add_flags(parser, hint)
            continue
        flag = "--" + f.name.replace("_", "-")
        text = f.metadata["help"]
        if hint is bool:
            parser.add_argument(flag, action="store_true", dest=f.name, help=text)
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None if default_is or required else f.default
        if default_is:
            text += f" (default: {default_is})"
        elif default is not None:
            text += f" (default: {_shown(default)})"
        parser.add_argument(
            flag,
            dest=f.name,
            type=_parser_of(hint),
            default=default,
            required=required,
            help=text.replace("%", "%%"),
            metavar=f.name.upper(),
        )


def build(cls: type, namespace: argparse.Namespace):
    """Dataclass `cls` from the parsed flags (nested dataclasses too). Flags left at None
    keep the field's own default."""
    hints = field_types(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            values[f.name] = build(hints[f.name], namespace)
        elif getattr(namespace, f.name, None) is not None:
            values[f.name] = getattr(namespace, f.name)
    return cls(**values)


def named_policy(text: str) -> tuple[str, str]:
    """An argparse type for `NAME=PATH` (PATH: a shipped policy's name such as `tiny`, a
    policy file or a folder holding one), checked at once so a missing policy fails
    before hours of work."""
    from lrpilot.agents.policy_file import resolve_policy_path  # torch: only when used
    from lrpilot.errors import ConfigError

    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    try:
        resolve_policy_path(path)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return name, path
