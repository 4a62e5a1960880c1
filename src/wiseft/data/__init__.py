"""Datasets: one module per family registers its builders; LabeledDataset, PairDataset, projections
onto the reference classes, seeded hold-outs, and the run's data preparation."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "base": ["build_dataset", "build_projection", "DataError", "LabeledDataset", "list_datasets",
             "per_class_permutations", "Projection", "read_classnames", "register_dataset", "split_holdout"],
    "folders": ["check_unreadable", "load_image"],
    "pairs": ["PairDataset", "split_pairs"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
