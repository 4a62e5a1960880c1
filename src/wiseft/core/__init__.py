"""The ground floor, no torch at import: the one error base, the registries, records,
metrics, prompt templates, progress."""

from __future__ import annotations

from wiseft.core.lazy import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "errors": ["WiseftError"],
    "metrics": ["Score", "accuracy", "expected_calibration_error", "fit_temperature", "macro_f1", "pm_k_accuracy",
                "worst_group_accuracy"],
    "progress": ["configure_logging", "duration", "progress_bar"],
    "records": ["DEFAULT_ALPHA", "MERGE", "alpha_rank", "best_alpha", "NOT_PRIMARY", "OUTPUT_ENSEMBLE", "PRIMARY",
                "QUICK_BANNER", "Record", "RecordView", "SEARCH", "TEST", "column_name", "is_quick",
                "is_restricted_metric", "merge_names", "merge_of", "merge_stage", "output_ensemble_name",
                "package_versions", "record_view", "restricted_metric", "select_metric", "summary_table"],
    "registry": ["BACKBONES", "DATASETS", "MERGE_METHODS", "deferred_plugins", "did_you_mean"],
    "templates": ["CIFAR_TEMPLATES", "TEMPLATES", "check_prompts", "classnames_problem", "get_templates", "list_templates",
                  "register_templates", "template_problem", "templates_hash"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
