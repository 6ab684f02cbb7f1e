"""The one error type for bad input: the CLI turns it into a one-line message and exit code 2."""


class ConfigError(ValueError):
    """A user-supplied value is invalid; the message names the field and the value."""
