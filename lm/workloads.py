"""Workloads: named, seeded factories of training runs, with their budgets.

A workload is one of:

- a built-in name: `tiny`, `small`, `base` (byte-level GPTs of common sizes on
  `pydoc`), `classify` (text classification of standard-library passages);
- a TOML file naming its `family` and every setting (`examples/workloads/`);
- a user's own training, `FILE.py:FUNCTION`: the function takes a seed and returns
  `lrpilot.RunParts` (`examples/custom_workload.py`).

Every workload has `name`, `steps` and `eval_every` (its budget), `metric` (what
`compare` ranks it by: `loss`, or `accuracy` for text classification, its default;
`FILE.py:FUNCTION` workloads are ranked by loss), `make_run(seed, device) ->
TrainingRun`, `to_dict()` (every setting its runs depend on, with `family`: all but
`metric`) and `digest()` (a hash of the data or code its numbers depend on, for caches).
The built-in families also have `step_cost()`, parameters x input bytes of one optimizer
step, by which a task space can bound what its tasks cost (`TaskSpace.max_cost`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

from lrpilot.config import check_fields, from_dict, positive, read_toml, setting
from lrpilot.errors import ConfigError
from lrpilot.lm.byte_gpt import ByteGPTWorkload
from lrpilot.lm.metric import metric_setting, require_loss_metric, run_settings
from lrpilot.lm.model import MODEL_PRESETS
from lrpilot.lm.run import StepRun, TrainingRun
from lrpilot.lm.run_parts import RunParts, check_run_parts


class Workload(Protocol):
    name: str
    steps: int
    eval_every: int
    metric: str  # what compare ranks by: "loss" or "accuracy" (`lrpilot.lm.metric`)

    def make_run(self, seed: int, device: str = "cpu") -> TrainingRun: ...

    def to_dict(self) -> dict: ...

    def digest(self) -> str: ...


@dataclass(frozen=True)
class PythonWorkload:
    """A user's own training: `function(seed) -> RunParts` in the Python file `path`."""

    family: ClassVar[str] = "python"

    path: str = setting(help="the Python file")
    function: str = setting(help="the function of the seed that returns lrpilot.RunParts")
    name: str = setting("", help="the workload's name in tables (default: FILE:FUNCTION)")
    steps: int = setting(400, help="the step budget", check=positive)
    eval_every: int = setting(20, help="steps per evaluation interval", check=positive)
    metric: str = metric_setting("loss")

    def __post_init__(self) -> None:
        check_fields(self)
        require_loss_metric(self, "a custom workload is ranked by test loss")
        object.__setattr__(self, "path", str(Path(self.path).expanduser().resolve()))
        if not self.name:
            object.__setattr__(self, "name", f"{Path(self.path).stem}:{self.function}")
        self.factory()  # a missing file or function fails now, not in a worker

    def factory(self):
        if not Path(self.path).is_file():
            raise ConfigError(f"workload file not found: {self.path!r}")
        module = _import_file(self.path)
        function = getattr(module, self.function, None)
        if not callable(function):
            raise ConfigError(f"workload file {self.path!r} has no function {self.function!r}")
        return function

    def to_dict(self) -> dict:
        return run_settings(self)

    def digest(self) -> str:
        """sha256 of the file: its code (and whatever data it makes) sets the numbers."""
        return hashlib.sha256(Path(self.path).read_bytes()).hexdigest()

    def make_run(self, seed: int, device: str = "cpu") -> StepRun:
        where = f"{Path(self.path).name}:{self.function}({seed})"
        parts = check_run_parts(reporting(self.factory(), where)(seed), where)
        return StepRun(user_code_reported(parts, where), where)


def one_line(exc: BaseException) -> str:
    """An exception as `Type: first line of its message`."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def reporting(function: Callable, where: str, call: str = "") -> Callable:
    """`function`, the user's code, with an exception it raises turned into a one-line
    `ConfigError` saying where it was raised (`where`, then `call`)."""

    def call_reported(*args: Any) -> Any:
        try:
            return function(*args)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(
                f"{where}{': ' + call if call else ''} raised {one_line(exc)}"
            ) from None

    return call_reported


def user_code_reported(parts: RunParts, where: str) -> RunParts:
    """`parts` whose callables and batches report an exception of the user's code as a
    one-line `ConfigError` naming the call."""

    def batches() -> Iterator[Any]:
        next_batch = reporting(iter(parts.batches).__next__, where, "next(batches)")
        while True:
            try:
                yield next_batch()
            except StopIteration:
                return

    def checked(name: str, call: str) -> Callable | None:
        function = getattr(parts, name)
        return None if function is None else reporting(function, where, call)

    return dataclasses.replace(
        parts,
        batches=batches(),
        loss=checked("loss", "loss(batch)"),
        validation_loss=checked("validation_loss", "validation_loss()"),
        test_loss=checked("test_loss", "test_loss()"),
        test_accuracy=checked("test_accuracy", "test_accuracy()"),
        items_in=checked("items_in", "items_in(batch)"),
    )


_MODULES: dict[str, Any] = {}


def _import_file(path: str):
    """Import a workload file once per process, under a name of its own."""
    if path not in _MODULES:
        name = "lrpilot_workload_" + hashlib.sha256(path.encode()).hexdigest()[:12]
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ConfigError(f"cannot import workload file {path!r}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise ConfigError(f"workload file {path!r} failed to import: {one_line(exc)}") from None
        _MODULES[path] = module
    return _MODULES[path]


def _families() -> dict[str, type]:
    """Workload families by their TOML `family` name (optional ones import lazily)."""
    from lrpilot.lm.hf_causal_lm import HFCausalLMWorkload
    from lrpilot.lm.text_classification import TextClassificationWorkload

    return {
        cls.family: cls
        for cls in (ByteGPTWorkload, TextClassificationWorkload, HFCausalLMWorkload, PythonWorkload)
    }


def _byte_gpt_preset(name: str) -> ByteGPTWorkload:
    model = MODEL_PRESETS[name]
    return ByteGPTWorkload(
        name=name,
        n_layer=model.n_layer,
        n_head=model.n_head,
        n_embd=model.n_embd,
        block_size=model.block_size,
    )


def builtin_workloads() -> dict[str, Workload]:
    from lrpilot.lm.text_classification import TextClassificationWorkload

    named: dict[str, Workload] = {name: _byte_gpt_preset(name) for name in MODEL_PRESETS}
    named["classify"] = TextClassificationWorkload(name="classify")
    return named


BUILTIN_NAMES = (*MODEL_PRESETS, "classify")


def workload_from_dict(data: dict[str, Any], where: str = "workload") -> Workload:
    """A workload from its settings (a TOML file's table, or `to_dict()`'s output)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table, got {data!r}")
    settings = dict(data)
    family = settings.pop("family", None)
    families = _families()
    if family is None:
        raise ConfigError(
            f"{where}: give a workload family ({', '.join(families)}) and its settings"
        )
    if family not in families:
        raise ConfigError(
            f"{where}: unknown workload family {family!r}; choose from {', '.join(families)}"
        )
    return from_dict(families[family], settings, where)


def load_workload(spec: str) -> Workload:
    """A workload from a built-in name, a `.toml` file, or `FILE.py:FUNCTION`."""
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"a workload is a name, a .toml file or FILE.py:FUNCTION, got {spec!r}")
    if spec in BUILTIN_NAMES:
        return builtin_workloads()[spec]
    path, sep, function = spec.rpartition(":")
    if sep and path.endswith(".py"):
        return PythonWorkload(path=path, function=function)
    if spec.endswith(".py"):
        raise ConfigError(f"a Python workload is FILE.py:FUNCTION, got {spec!r}")
    if spec.endswith(".toml"):
        data, _ = read_toml(spec, "workload")
        file = Path(spec)
        data.setdefault("name", file.stem)
        return workload_from_dict(data, f"workload file {spec!r}")
    raise ConfigError(
        f"unknown workload {spec!r}; give a built-in name ({', '.join(BUILTIN_NAMES)}), "
        f"a .toml file or FILE.py:FUNCTION"
    )


def spec_in_folder(spec: Any, folder: Path) -> Any:
    """A workload file's spec (`.toml`, `FILE.py:FUNCTION`) relative to `folder` made
    absolute, as a suite or preset that names it means it; other specs as they are."""
    if isinstance(spec, str) and (spec.endswith(".toml") or ".py:" in spec):
        return spec if Path(spec).is_absolute() else str((folder / spec).resolve())
    return spec


def with_overrides(workload: Workload, **overrides: Any) -> Workload:
    """`workload` with some settings replaced (None values are ignored), e.g. the
    corpus or batch size the CLI's flags give; a setting it lacks is refused."""
    changes = {k: v for k, v in overrides.items() if v is not None}
    if not changes:
        return workload
    known = {f.name for f in dataclasses.fields(workload)}
    missing = sorted(set(changes) - known)
    if missing:
        raise ConfigError(
            f"workload {workload.name!r} ({workload.family}) has no setting {', '.join(missing)}"
        )
    try:
        return dataclasses.replace(workload, **changes)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"workload {workload.name!r}: {exc}") from None
