"""The typed config tree: one pydantic model per section, validated at load with errors
that name the file and the field. Importing it needs no torch; validating a dataset or
backbone looks its kind up in the registries, which load their modules on first use."""

from .backbone import BackboneSpec
from .datasets import DatasetSpec, check_dataset_spec, dataset_options, describe_type
from .errors import ConfigError, FieldError
from .evaluation import EvalConfig
from .finetune import FinetuneConfig
from .merge import MergeConfig
from .merges import MergeRun, MergeSpec
from .report import ReportConfig
from .run import DEFAULT_ALPHAS, DataConfig, RunConfig, load_config, parse_config

__all__ = ["BackboneSpec", "ConfigError", "DEFAULT_ALPHAS", "DataConfig", "DatasetSpec", "EvalConfig", "FieldError",
           "FinetuneConfig", "MergeConfig", "MergeRun", "MergeSpec", "ReportConfig", "RunConfig", "check_dataset_spec",
           "dataset_options", "describe_type", "load_config", "parse_config"]
