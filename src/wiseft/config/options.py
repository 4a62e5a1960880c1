"""Settings objects given loose keyword overrides: the form functions took before they
took one settings object."""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel

Settings = TypeVar("Settings", bound=BaseModel)


def with_options(cls: type[Settings], settings: Settings | None = None, **options: Any) -> Settings:
    """``settings`` (default ``cls()``) with ``options``, fields of ``cls`` given as keyword
    arguments, applied; the options win over ``settings``'s fields, and the result is
    validated again as a whole."""
    if not options:
        return settings if settings is not None else cls()
    base = settings.model_dump(exclude_unset=True) if settings is not None else {}
    return cls(**{**base, **options})
