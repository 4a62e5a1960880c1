"""Scoring models: the input cache, evaluation sets, alpha sweeps, the merge search, the
output-space ensemble."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "alpha_sweep": ["EvalSet", "EvalSettings", "InputCache", "SweepSettings", "build_input_cache", "evaluate", "evaluate_records",
                    "numerics", "predict_logits", "reuse_sweep", "search_merge", "sweep"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
