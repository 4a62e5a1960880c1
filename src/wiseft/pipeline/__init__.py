"""The main job (wiseft.run): plan and estimate, data, head, fine-tunes, sweeps,
selection, export, report."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "main": ["finish_run", "run", "RunResult", "RunState", "start_run", "sweep_records"],
    "plan": ["resolve_precisions"],
    "prepare": ["prepare_data"],
    "training": ["checkpoint_paths", "train_from_config", "train_key"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
