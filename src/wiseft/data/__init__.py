"""Dataset registry and loaders."""

from .base import (DataError, LabeledDataset, Projection, build_dataset, build_projection,
                   list_datasets, register_dataset, split_holdout)

__all__ = ["DataError", "LabeledDataset", "Projection", "build_dataset", "build_projection",
           "list_datasets", "register_dataset", "split_holdout"]
