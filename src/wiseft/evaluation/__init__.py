"""Scoring models: the input cache, evaluation sets, alpha sweeps, the merge search, the
output-space ensemble."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "alpha_sweep": ["sweep"],
    "cache": ["build_input_cache", "InputCache"],
    "search": ["reuse_sweep", "search_merge"],
    "sets": ["EvalSet", "evaluate", "evaluate_records", "predict_logits"],
    "settings": ["EvalSettings", "SweepSettings"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
