"""wiseft: robust fine-tuning of zero-shot models (WiSE-FT, Wortsman et al., CVPR 2022).

Public API::

    from wiseft import load_config, run                     # the whole pipeline
    from wiseft import load_backbone, zeroshot_head, Classifier, finetune
    from wiseft import interpolate, Interpolator, sweep, export_model, load_model
    from wiseft import track                                # WiSE-FT for your own training loop

Names load on first use (PEP 562), so ``import wiseft`` and the ``wiseft`` command's
help do not import torch, matplotlib or scipy.
"""

from __future__ import annotations

from wiseft.core import front_door

__version__ = "0.1.0"

# package (its front door) -> the public names taken from it
_SOURCES = {
    "backbones": ["Backbone", "list_backbones", "load_backbone", "register_backbone"],
    "config": ["BackboneSpec", "ConfigError", "FinetuneConfig", "load_config", "MergeConfig", "ReportConfig",
               "RunConfig"],
    "core": ["get_templates", "list_templates", "Record", "register_templates", "summary_table", "WiseftError"],
    "data": ["build_dataset", "LabeledDataset", "list_datasets", "register_dataset", "split_holdout"],
    "evaluation": ["EvalSet", "EvalSettings", "evaluate", "sweep", "SweepSettings"],
    "heads": ["build_zeroshot_model", "Classifier", "export_model", "load_model", "zeroshot_head",
              "zeroshot_weights"],
    "integrations": ["track"],
    "io": ["load_state", "read_records", "save_state"],
    "merge": ["average_files", "estimate_fisher", "fisher_merge", "greedy_soup", "interpolate", "interpolate_files",
              "Interpolator", "MergeError", "plan_files", "uniform_soup", "weighted_average", "write_interpolations"],
    "pipeline": ["run"],
    "report": ["build_report", "clopper_pearson", "effective_robustness", "fit_baseline", "select_alpha"],
    "train": ["finetune"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
