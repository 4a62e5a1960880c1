"""Front doors that load on first use (PEP 562): a package's ``__init__`` names what it
exports and the submodule that defines each name; a name's submodule is imported the
first time the name is read, so ``import wiseft`` (or ``wiseft.config``, which needs the
registries) imports no torch, matplotlib or scipy."""

from __future__ import annotations

import importlib
import sys
from typing import Callable


def front_door(package: str, sources: dict[str, list[str]]) -> tuple[list[str], Callable, Callable]:
    """``(__all__, __getattr__, __dir__)`` for ``package``, whose exports are ``sources``
    (submodule -> the names it defines)."""
    where = {name: module for module, names in sources.items() for name in names}

    def __getattr__(name: str):
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)  # next time a plain attribute
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return sorted(where), __getattr__, __dir__
