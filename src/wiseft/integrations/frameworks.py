"""What the framework callbacks share: importing the framework (or an error naming the
extra that installs it), and finding the model to watch inside what the framework trains."""

from __future__ import annotations

import importlib

import torch

from wiseft.backbones import wrapped_prefixes
from wiseft.heads import Classifier


def require_framework(module: str, extra: str):
    """Import a training framework, or fail naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"{module} is needed for this callback: pip install 'wiseft[{extra}]' ({e})") from e


def watched_model(root: torch.nn.Module, plain: bool) -> torch.nn.Module:
    """The model inside ``root`` (the framework's model) whose weights WiSE-FT mixes: ``root``
    itself for a plain module (an ``evaluate`` given), else the first wiseft Classifier or
    model of a family wiseft knows, ``root`` included (a LightningModule holds its model)."""
    if plain:
        return root
    prefixes = wrapped_prefixes()
    for m in root.modules():
        if isinstance(m, Classifier) or type(m).__module__.startswith(prefixes):
            return m
    return root
