"""The typed config tree: one pydantic model per section, validated at load with errors
that name the file and the field. Importing it needs no torch; validating a dataset
or backbone looks its kind up in the registries, which load their modules on first
use."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "backbone": ["BackboneSpec"],
    "datasets": ["check_dataset_spec", "dataset_options", "DatasetSpec", "describe_type"],
    "errors": ["ConfigError", "FieldError"],
    "evaluation": ["EvalConfig"],
    "finetune": ["FinetuneConfig", "LoraConfig"],
    "merge": ["DEFAULT_CHUNK_BYTES", "MergeConfig", "MergeRun", "MergeSpec", "parse_size"],
    "report": ["DEFAULT_BASELINES", "ReportConfig"],
    "run": ["DataConfig", "DEFAULT_ALPHAS", "load_config", "parse_config", "RunConfig"],
    "tracking": ["MlflowConfig", "TrackingConfig"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
