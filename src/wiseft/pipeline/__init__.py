"""The main job (wiseft.run): plan and estimate, data, head, fine-tunes, sweeps,
selection, export, report."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "main": ["run", "RunResult"],
    "plan": ["resolve_precisions"],
    "prepare": ["prepare_data"],
    "training": ["checkpoint_paths", "train_from_config"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
