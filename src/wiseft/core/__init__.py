"""The ground floor, no torch at import: the one error base, the registries, records,
metrics, prompt templates, progress, and the command line a run was started with."""

from __future__ import annotations

from wiseft.core.lazy import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "errors": ["WiseftError"],
    "invocation": ["current_command", "invoked_as"],
    "metrics": ["accuracy", "COSINE_TIE", "expected_calibration_error", "fit_temperature", "macro_f1", "pm_k_accuracy",
                "recall_at_k", "retrieval_metrics", "Score", "worst_group_accuracy"],
    "progress": ["configure_logging", "duration", "progress_bar"],
    "records": ["alpha_rank", "best_alpha", "column_name", "DEFAULT_ALPHA", "is_quick", "is_restricted_metric",
                "is_retrieval_metric", "MERGE", "merge_names", "merge_of", "merge_stage", "NOT_PRIMARY",
                "OUTPUT_ENSEMBLE", "output_ensemble_name", "package_versions", "PRIMARY", "QUICK_BANNER", "Record",
                "record_view", "RecordView", "restricted_metric", "RETRIEVAL_PRIMARY", "SEARCH", "select_metric",
                "summary_table", "TEST"],
    "registry": ["BACKBONES", "DATASETS", "deferred_plugins", "did_you_mean", "MERGE_METHODS"],
    "templates": ["check_prompts", "CIFAR_TEMPLATES", "classnames_problem", "get_templates", "list_templates",
                  "register_templates", "template_problem", "TEMPLATES", "templates_hash"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
