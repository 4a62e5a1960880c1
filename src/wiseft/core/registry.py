"""One registry per kind of plug-in (backbone families, dataset kinds, template sets):
a decorator (or ``add``) fills a dict; the modules that hold the entries are imported
on first look-up."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import importlib
import re
from typing import Any, Callable, Generic, Iterable, Mapping, Sequence, TypeVar

T = TypeVar("T")


def did_you_mean(name: object, candidates: Iterable[str]) -> str | None:
    """The candidate closest to ``name``, or None when none is close: the same name in
    another case, an abbreviation by initials ('learning_rate' -> 'lr'), else the
    nearest by difflib."""
    if not isinstance(name, str):
        return None
    candidates = list(candidates)
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:  # 'Open_CLIP' -> 'open_clip'
        return lowered[name.lower()]
    for c in candidates:
        if _initials(name) == c.lower() or _initials(c) == name.lower():
            return c
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return close[0] if close else None


def _initials(name: str) -> str | None:
    parts = [p for p in re.split(r"[_\-\s.]+", name.lower()) if p]
    return "".join(p[0] for p in parts) if len(parts) > 1 else None


def unknown_name(kind: str, name: object, candidates: Iterable[str]) -> str:
    """'unknown <kind> 'x'; did you mean 'y'? known: a, b, c' (the hint only when one is close)."""
    candidates = sorted(candidates)
    hint = did_you_mean(name, candidates)
    return (f"unknown {kind} {name!r}" + (f"; did you mean {hint!r}? " if hint else "; ")
            + f"known: {', '.join(candidates)}")


# set while a config is checked for everything its plug-ins do not decide (deferred_plugins)
_DEFERRED: contextvars.ContextVar[bool] = contextvars.ContextVar("wiseft_plugins_deferred", default=False)


@contextlib.contextmanager
def deferred_plugins():
    """Within it, a registry whose modules are not imported yet imports nothing: it takes
    every name, and ``get`` gives an entry that takes any option. A config validated so is
    checked for every error its plug-ins do not decide, without importing them (the dataset
    and backbone modules import torch: seconds); the plug-in checks run on the full
    validation that follows."""
    token = _DEFERRED.set(True)
    try:
        yield
    finally:
        _DEFERRED.reset(token)


def _any_options(**options: Any) -> None:
    """The stand-in entry of a deferred registry: takes any option."""


class Registry(Generic[T]):
    """Named entries of one kind. An entry may declare facts about itself when it is
    registered (keyword arguments, read back with ``info``), so code that needs them
    asks the registry instead of keeping its own list of names.

    Example:
        >>> BACKBONES = Registry("backbone family", ["wiseft.backbones.open_clip_backbone"])
        >>> @BACKBONES.register("open_clip", settings=("quick_gelu",))
        ... def load_open_clip(spec): ...
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()):
        self.kind = kind
        self._modules = tuple(modules)
        self._entries: dict[str, T] = {}
        self._info: dict[str, dict[str, Any]] = {}
        self._loaded = False

    def register(self, name: str, **info: Any) -> Callable[[T], T]:
        """Decorator: add ``fn`` under ``name``, with what it declares about itself (``info``)."""

        def wrap(fn: T) -> T:
            return self.add(name, fn, **info)

        return wrap

    def add(self, name: str, entry: T, **info: Any) -> T:
        """Add ``entry`` (any value, e.g. a tuple of templates) under ``name``, with what it
        declares about itself (``info``)."""
        self._entries[name] = entry
        self._info[name] = dict(info)
        return entry

    def info(self, name: str) -> Mapping[str, Any]:
        """What the entry ``name`` declared when it was registered (empty when nothing);
        a KeyError, as ``get`` gives, for a name not registered."""
        if self._deferred():
            return {}
        self.get(name)
        return dict(self._info.get(name, {}))

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True
            for m in self._modules:
                importlib.import_module(m)

    def _deferred(self) -> bool:
        return bool(self._modules) and not self._loaded and _DEFERRED.get()

    def names(self) -> list[str]:
        """Every registered name, sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if self._deferred():
            return True
        self._load()
        return name in self._entries

    def unknown(self, name: object) -> str:
        """The message for a name not registered: the closest name, and every known one."""
        return unknown_name(self.kind, name, self.names())

    def get(self, name: str) -> T:
        """The entry, or a KeyError that suggests the closest name and lists the known ones."""
        if self._deferred():
            return self._entries.get(name, _any_options)  # type: ignore[return-value]
        self._load()
        if name not in self._entries:
            raise KeyError(self.unknown(name))
        return self._entries[name]


# The registries. Each lists the modules that fill it; they are imported on the first
# look-up, so importing this module (and the config that validates against it) needs no torch.
BACKBONES: Registry = Registry("backbone family", [f"wiseft.backbones.{m}" for m in
                                                    ("hf_clip", "open_clip_backbone", "text")])
DATASETS: Registry = Registry("dataset kind", [f"wiseft.data.{m}" for m in
                                               ("bbc_news", "cifar", "folders", "imagenet", "pair_sets", "transfer",
                                                "video", "webdataset", "wilds")])
MERGE_METHODS: Registry = Registry("merge method", [f"wiseft.merge.methods.{m}" for m in
                                                    ("dare", "fisher", "greedy_soup", "linear", "model_stock",
                                                     "slerp", "soup", "task_arithmetic", "ties")])
