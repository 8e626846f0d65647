"""Exceptions raised while building or merging configs.

They all derive from :class:`ConfigError` (a ``ValueError``) so callers can catch one type, and
additionally from the builtin a caller would naturally expect (``KeyError`` for unknown keys,
``TypeError`` for wrong types, ``FileNotFoundError`` for missing files).
"""
from __future__ import annotations


class ConfigError(ValueError):
    """Any problem with a config file, a command-line override or a config value."""


class UnknownKeyError(ConfigError, KeyError):
    """A key that does not exist in the defaults (almost always a typo)."""

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0]) if self.args else ""


class ConfigTypeError(ConfigError, TypeError):
    """A value whose type does not match the default value of its key."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """A config file, or a ``_BASE_`` it names, does not exist."""

    def __str__(self) -> str:  # OSError formats (errno, strerror) pairs; keep our message
        return str(self.args[0]) if self.args else ""
