"""The config layer's errors: ``ConfigError`` for users, ``FieldError`` inside validators."""

from __future__ import annotations

from wiseft.core import WiseftError


class ConfigError(WiseftError):
    """A configuration that cannot run; the message names the file and field."""


class FieldError(ValueError):
    """A validator's error about a field at or below the one it validates: ``loc`` is
    the path from there (``("kind",)`` inside ``data.train``), so the message names
    the full dotted field."""

    def __init__(self, loc: tuple = (), message: str = ""):
        super().__init__(message)
        self.loc = tuple(str(p) for p in loc)
        self.message = message
