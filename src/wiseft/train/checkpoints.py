"""Resumable training checkpoints, written atomically (temporary file, then ``os.replace``).

A checkpoint holds the model, optimizer, EMA and grad-scaler state, every rank's RNG
states, the data position (optimizer steps done) and the config. Files are
``step_00001000.pt`` (the last ``keep_last`` kept) and ``epoch_003_step_00003000.pt`` (all kept),
read back with ``torch.load(weights_only=True)`` by ``load_training_state``. That is a torch
file of format ``FORMAT``, not weights: weights (any format) are read by ``io.load_state``.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wiseft.core import WiseftError
from wiseft.io import read_torch, resolve_checkpoint, write_with

FORMAT = "wiseft-train-1"
_NAME = re.compile(r"^(?:epoch_(\d+)_)?step_(\d+)\.pt$")
# fields that change the trajectory of a run; a resume must not change them
TRAJECTORY_FIELDS = ("mode", "lr", "weight_decay", "batch_size", "epochs", "warmup_steps", "grad_clip",
                     "label_smoothing", "seed", "precision", "ema_decay", "l2_to_zeroshot",
                     "weight_decay_exclusions", "lp_epochs", "lp_lr", "shots_per_class", "shots_seed")


class ResumeError(WiseftError):
    """A checkpoint cannot continue this run; the message names the file and field."""


RESUME_HINT = ("wiseft's own training checkpoints hold plain tensors and containers only; delete this file "
               "(or resume from another one) and train from the last good checkpoint or afresh")


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU and CUDA, Python, NumPy) as plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def atomic_save(obj: Any, path: Path) -> Path:
    """``torch.save`` through the I/O layer: a temporary file in the same folder, fsync,
    rename, fsync of the folder (a killed writer's temporary is removed by the next)."""
    return write_with(path, lambda tmp: torch.save(obj, tmp))


class CheckpointDir:
    """The checkpoints of one training stage in one folder."""

    def __init__(self, root: str | Path, keep_last: int = 2, keep_epochs: bool = True):
        self.root, self.keep_last, self.keep_epochs = Path(root), keep_last, keep_epochs

    def list(self) -> list[tuple[int, str, Path]]:
        """(steps done, kind, path), oldest first."""
        if not self.root.is_dir():
            return []
        found = []
        for p in self.root.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m[2]), "epoch" if m[1] else "step", p))
        return sorted(found, key=lambda t: (t[0], t[1] == "step"))

    def latest(self) -> Path | None:
        found = self.list()
        return found[-1][2] if found else None

    def save(self, state: dict[str, Any], step: int, epoch: int | None) -> Path:
        """Write the state after ``step`` optimizer steps; ``epoch`` set at an epoch's end."""
        if epoch is not None and self.keep_epochs:
            path = atomic_save(state, self.root / f"epoch_{epoch:03d}_step_{step:08d}.pt")
        else:
            path = atomic_save(state, self.root / f"step_{step:08d}.pt")
        steps = [p for _, kind, p in self.list() if kind == "step"]
        for old in steps[:-self.keep_last]:
            old.unlink(missing_ok=True)
        return path


def load_training_state(path: str | Path) -> dict[str, Any]:
    """A training checkpoint (a torch file of format ``FORMAT``: model, optimizer, RNG and
    data position), read with ``torch.load(weights_only=True)`` through the one resolver;
    weights alone, a pickle that would run code or a damaged file is a ResumeError."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"checkpoint {path} does not exist")
    kind, _ = resolve_checkpoint(path, ResumeError)
    if kind != "torch":
        raise ResumeError(f"{path} is not a wiseft training checkpoint (a {kind} file holds weights only)")
    state = read_torch(path, ResumeError, hint=RESUME_HINT)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a wiseft training checkpoint")
    return state


def check_resumable(root: str | Path) -> None:
    """Check, before anything is written, that the checkpoint each stage under ``root``
    would resume from (its latest) reads with ``weights_only=True`` (memory-mapped, so
    cheap) and is a wiseft training checkpoint; ResumeError naming the file if not."""
    root = Path(root)
    if not root.is_dir():
        return
    for stage in sorted(p for p in root.iterdir() if p.is_dir()):
        latest = CheckpointDir(stage).latest()
        if latest is not None:
            state = read_torch(latest, ResumeError, hint=RESUME_HINT, mmap=True)
            if not isinstance(state, dict) or state.get("format") != FORMAT:
                raise ResumeError(f"{latest} is not a wiseft training checkpoint")


def check_same_trajectory(state: dict[str, Any], config: dict[str, Any], stage: str, path: Path) -> None:
    """Check that training state ``state`` (read from ``path``) can continue ``stage`` under
    ``config``: ResumeError naming the stage, or the first trajectory field (TRAJECTORY_FIELDS)
    where ``config`` differs from the checkpoint's."""
    if state.get("stage") != stage:
        raise ResumeError(f"{path} belongs to stage {state.get('stage')!r}, not {stage!r}")
    saved = state.get("config", {})
    for key in TRAJECTORY_FIELDS:
        if key in saved and saved[key] != config.get(key):
            raise ResumeError(f"cannot resume from {path}: finetune.{key} was {saved[key]!r} there, "
                              f"now {config.get(key)!r}")
