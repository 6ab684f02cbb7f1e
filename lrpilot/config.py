"""Settings, loaded and checked in one place.

Every group of settings is a frozen dataclass whose fields are declared with
`setting(default, help=..., check=...)`: the help text is the field's only documentation
(the CLI's `--help` prints it), and `check_fields(self)` in `__post_init__` checks every
field against its type annotation and its `check`, so a bad value is one `ConfigError`
naming the field and the value, whether it came from a flag, a TOML file or Python.

- `from_dict(cls, table, where, source=...)` builds a dataclass from a TOML table
  (nested tables become nested dataclasses; an unknown key is named, with its file and
  table);
- `read_toml(spec, what, folder)` reads a TOML file by path, or by name from a folder of
  the package (`presets`, `suites`).

This module imports no torch: the CLI builds its parser from it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from lrpilot.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A check takes a field's value (already of the annotated type) and returns what is
# wrong with it ("must be positive"), or None when it is fine.
Check = Callable[[Any], "str | None"]


def setting(default: Any = dataclasses.MISSING, *, help: str, check: Check | None = None):
    """A dataclass field with its documentation and its check. A list default is stored
    as a tuple (fields are immutable)."""
    if isinstance(default, list):
        default = tuple(default)
    metadata = {"help": help, "check": check}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=metadata)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# -- checks ---------------------------------------------------------------------------------


def positive(value: float) -> str | None:
    return None if value > 0 else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 else "must not be negative"


def above(low: float) -> Check:
    return lambda value: None if value > low else f"must be above {low}"


def fraction_or_zero(value: float) -> str | None:
    return None if 0 <= value < 1 else "must be in [0, 1)"


def fraction(value: float) -> str | None:
    return None if 0 < value < 1 else "must be a fraction in (0, 1)"


def valid_seed(value: int) -> str | None:
    return None if 0 <= value < 2**32 else "must be in [0, 2**32)"


def at_least(low: float) -> Check:
    return lambda value: None if value >= low else f"must be at least {low}"


def in_range(low: float, high: float) -> Check:
    return lambda value: None if low <= value <= high else f"must be in [{low}, {high}]"


def one_of(names: tuple[str, ...]) -> Check:
    return lambda value: None if value in names else f"must be one of {', '.join(names)}"


def non_empty(value: tuple) -> str | None:
    return None if value else "must not be empty"


def distinct(value: tuple) -> str | None:
    doubled = sorted({str(v) for v in value if value.count(v) > 1})
    return None if not doubled else f"lists {', '.join(doubled)} twice"


def low_high(value: tuple[float, float]) -> str | None:
    """A range (low, high) with 0 < low < high."""
    return None if 0 < value[0] < value[1] else "must be LOW,HIGH with 0 < LOW < HIGH"


def each(check: Check) -> Check:
    """`check` applied to every item of a list."""

    def check_items(values: tuple) -> str | None:
        for value in values:
            problem = check(value)
            if problem is not None:
                return f"has {value!r}, which {problem}"
        return None

    return check_items


def all_of(*checks: Check) -> Check:
    def check_all(value: Any) -> str | None:
        for check in checks:
            problem = check(value)
            if problem is not None:
                return problem
        return None

    return check_all


# -- checking a dataclass against its annotations -----------------------------------------


@cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved type annotation of every field of dataclass `cls`."""
    return typing.get_type_hints(cls)


def describe(hint: Any) -> str:
    """A type annotation in words, for error messages and `--help`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args if a is not type(None))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            if args[0] is Any:
                return "a list"
            return f"a list of {describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
        return f"a list of {len(args)} {describe(args[0]).removeprefix('a ')}s"
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a string",
        Any: "a value",
    }
    if hint in names:
        return names[hint]
    return "a table" if origin in (dict, Mapping) or dataclasses.is_dataclass(hint) else str(hint)


def coerce(hint: Any, value: Any, name: str) -> Any:
    """`value` as type `hint` (a list becomes a tuple, an integer a float), or a
    `ConfigError` naming `name` and the value. Floats must be finite."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    wrong = ConfigError(f"{name} must be {describe(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [arg for arg in args if arg is not type(None)]
        if len(choices) == 1:  # X | None: X's own message
            return coerce(choices[0], value, name)
        for arg in choices:
            try:
                return coerce(arg, value, name)
            except ConfigError:
                pass
        raise wrong
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise wrong
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        if len(value) != len(args):
            raise wrong
        try:
            return tuple(coerce(arg, v, name) for arg, v in zip(args, value, strict=True))
        except ConfigError as item:
            if "finite" in str(item):  # the right kind, but inf or nan: say so
                raise ConfigError(f"{name} must hold finite numbers, got {value!r}") from None
            raise wrong from None
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise wrong
        return value
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            return from_dict(hint, dict(value), name)
        raise wrong
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if hint is int:  # numpy's integers too
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Integral):
            raise wrong
        return int(value)
    if hint is float:
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise wrong
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise wrong
        return value
    return value


def check_fields(obj: Any) -> None:
    """Check (and normalise) every field of the frozen dataclass `obj`: its type, then its
    `check`. Call it first in `__post_init__`."""
    hints = field_types(type(obj))
    for f in dataclasses.fields(obj):
        value = checked(hints[f.name], getattr(obj, f.name), f.name, f.metadata.get("check"))
        object.__setattr__(obj, f.name, value)


def checked(hint: Any, value: Any, name: str, check: Check | None = None) -> Any:
    """`value` as type `hint`, checked by `check`; a `ConfigError` naming `name` if not."""
    value = coerce(hint, value, name)
    if check is not None and value is not None:
        problem = check(value)
        if problem is not None:
            raise ConfigError(f"{name} {problem}, got {_shown(value)}")
    return value


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) if value else "nothing"
    return repr(value)


def from_dict(cls: type, data: Any, where: str = "", *, source: str = ""):
    """Dataclass `cls` from a TOML table `data`; an unknown key or a bad value is one
    `ConfigError` that names the file (`source`, e.g. "preset 'x.toml'") and the table
    (`[where]`; nested tables as `[where.name]`)."""
    prefix = (f"{source}: " if source else "") + (f"[{where}] " if where else "")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix}must be a table, got {data!r}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{prefix}unknown key(s): {', '.join(map(str, unknown))}")
    hints = field_types(cls)
    values = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            table = f"{where}.{name}" if where else name
            value = from_dict(hint, value, table, source=source)
        values[name] = value
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}{exc}") from None
    except (TypeError, ValueError) as exc:  # a check the dataclass lacks
        raise ConfigError(f"{prefix}invalid settings ({exc})") from None


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass as a TOML-ready table: tuples become lists and unset (None) settings
    are left out (TOML has no null)."""

    def tomlable(value):
        if isinstance(value, dict):
            return {k: tomlable(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [tomlable(v) for v in value]
        return value

    return tomlable(dataclasses.asdict(obj))


# -- TOML files -------------------------------------------------------------------------------


def packaged_names(folder: str) -> list[str]:
    """The names of the TOML files in a folder of the package (`presets`, `suites`)."""
    root = resources.files("lrpilot.experiments") / folder
    return sorted(p.name.removesuffix(".toml") for p in root.iterdir() if p.name.endswith(".toml"))


def read_toml(spec: str, what: str, folder: str | None = None) -> tuple[dict[str, Any], Path]:
    """A TOML file's table and the folder it lies in (relative paths inside it are
    relative to that folder). `spec` is a path ending in `.toml`, or, with `folder`, the
    name of a file in that folder of the package. `what` names the file in errors
    ("suite", "preset", "workload file")."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"a {what} is a name or a .toml path, got {spec!r}")
    if spec.endswith(".toml") or folder is None:
        path = Path(spec)
        if path.is_dir():
            raise ConfigError(f"{what} {spec!r} is a folder, not a TOML file")
        if not path.is_file():
            raise ConfigError(f"{what} file not found: {spec!r}")
    else:
        path = Path(str(resources.files("lrpilot.experiments") / folder / f"{spec}.toml"))
        if not path.is_file():
            names = ", ".join(packaged_names(folder))
            raise ConfigError(f"unknown {what} {spec!r}; choose from {names}, or give a path")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {spec!r}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {spec!r} is not UTF-8 text ({exc.reason})") from None
    try:
        return tomllib.loads(text), path.parent
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {spec!r} is not valid TOML: {exc}") from None
