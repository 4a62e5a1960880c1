"""One registry per kind of plug-in (backbone families, dataset kinds): a decorator
fills a dict; the modules that hold the entries are imported on first look-up."""

from __future__ import annotations

import importlib
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T", bound=Callable)


class Registry(Generic[T]):
    """Named entries of one kind.

    Example:
        >>> BACKBONES = Registry("backbone family", ["wiseft.backbones.open_clip_backbone"])
        >>> @BACKBONES.register("open_clip")
        ... def load_open_clip(spec): ...
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()):
        self.kind = kind
        self._modules = tuple(modules)
        self._entries: dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add ``fn`` under ``name``."""

        def wrap(fn: T) -> T:
            self._entries[name] = fn
            return fn

        return wrap

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in self._modules:
                importlib.import_module(m)

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load()
        return name in self._entries

    def get(self, name: str) -> T:
        """The entry, or a KeyError that lists the known names."""
        self._load()
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]
