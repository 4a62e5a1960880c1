"""wiseft: robust fine-tuning of zero-shot models (WiSE-FT, Wortsman et al., CVPR 2022).

Public API::

    from wiseft import load_config, run                     # the whole pipeline
    from wiseft import load_backbone, zeroshot_head, Classifier, finetune
    from wiseft import interpolate, Interpolator, sweep, export_model, load_model

Names load on first use (PEP 562), so ``import wiseft`` and the ``wiseft`` command's
help do not import torch, matplotlib or scipy.
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

# public name -> submodule that defines it
_SOURCES = {
    "backbones": ["Backbone", "BackboneSpec", "list_backbones", "load_backbone", "register_backbone"],
    "checkpoint": ["export_model", "load_model", "load_state", "save_state"],
    "config": ["ConfigError", "FinetuneConfig", "MergeConfig", "ReportConfig", "RunConfig", "load_config"],
    "errors": ["WiseftError"],
    "data": ["LabeledDataset", "build_dataset", "list_datasets", "register_dataset", "split_holdout"],
    "evaluate": ["EvalSet", "EvalSettings", "SweepSettings", "evaluate", "sweep"],
    "finetune": ["finetune"],
    "heads": ["Classifier", "zeroshot_head", "zeroshot_weights"],
    "merge": ["Interpolator", "MergeError", "interpolate"],
    "merge_files": ["average_files", "interpolate_files", "plan_files", "sweep_files", "write_interpolations"],
    "pipeline": ["run"],
    "soup": ["estimate_fisher", "fisher_merge", "greedy_soup", "uniform_soup", "weighted_average"],
    "report": ["build_report"],
    "robustness": ["clopper_pearson", "effective_robustness", "fit_baseline", "select_alpha"],
    "results": ["Record", "read_records", "summary_table"],
    "templates": ["get_templates", "list_templates", "register_templates"],
}
_LAZY = {name: module for module, names in _SOURCES.items() for name in names}

__all__ = [
    "average_files", "interpolate_files", "plan_files", "sweep_files", "write_interpolations", "MergeConfig",
    "ReportConfig",
    "estimate_fisher", "fisher_merge", "greedy_soup", "uniform_soup", "weighted_average",
    "Backbone", "BackboneSpec", "Classifier", "ConfigError", "EvalSet", "FinetuneConfig", "Interpolator",
    "LabeledDataset", "MergeError", "Record", "RunConfig", "build_dataset", "evaluate", "export_model",
    "finetune", "get_templates", "interpolate", "list_backbones", "list_datasets", "list_templates",
    "load_backbone", "load_config", "load_model", "load_state", "read_records", "register_backbone",
    "register_dataset", "register_templates", "run", "save_state", "split_holdout", "summary_table",
    "sweep", "zeroshot_head", "zeroshot_weights", "build_report", "clopper_pearson", "effective_robustness",
    "fit_baseline", "select_alpha", "WiseftError", "EvalSettings", "SweepSettings",
]


def __getattr__(name: str):
    """Import a public name's submodule on first use; also reach submodules as attributes."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # next time a plain attribute
        return value
    if not name.startswith("__"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """``wiseft.evaluate`` and ``wiseft.finetune`` name functions, not the submodules of
    the same name: importing such a submodule binds the function on the package."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
