"""From records to a report: effective robustness, plots, tables, one offline HTML
page, and the model card of an export."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "build": ["build_report"],
    "card": ["CardSettings", "write_model_card"],
    "robustness": ["clopper_pearson", "effective_robustness", "fit_baseline", "select_alpha"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
