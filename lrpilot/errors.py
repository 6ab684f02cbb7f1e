"""The one error type for bad input: the CLI turns it into a one-line message and exit code 2."""


class ConfigError(ValueError):
    """A user-supplied value is invalid; the message names the field and the value."""


def require_seed(seed: object, name: str = "seed") -> None:
    """Raise `ConfigError` unless `seed` is an int in [0, 2**32) (what numpy seeds take)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {seed!r}")


def require_positive_int(name: str, value: object) -> None:
    """Raise `ConfigError` naming `name` unless `value` is an int > 0 (bools excluded)."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
