"""wiseft: robust fine-tuning of zero-shot models (WiSE-FT, Wortsman et al., CVPR 2022).

Public API::

    from wiseft import load_config, run                     # the whole pipeline
    from wiseft import load_backbone, zeroshot_head, Classifier, finetune
    from wiseft import interpolate, Interpolator, sweep, export_model, load_model
"""

__version__ = "0.1.0"

from .backbones import Backbone, BackboneSpec, list_backbones, load_backbone, register_backbone
from .checkpoint import export_model, load_model, load_state, save_state
from .config import ConfigError, RunConfig, load_config
from .data import LabeledDataset, build_dataset, list_datasets, register_dataset, split_holdout
from .evaluate import EvalSet, evaluate, sweep
from .finetune import FinetuneConfig, finetune
from .heads import Classifier, zeroshot_head, zeroshot_weights
from .merge import Interpolator, MergeError, interpolate
from .merge_files import average_files, interpolate_files, plan_files, sweep_files
from .pipeline import run
from .soup import estimate_fisher, fisher_merge, greedy_soup, uniform_soup, weighted_average
from .report import build_report
from .robustness import clopper_pearson, effective_robustness, fit_baseline, select_alpha
from .results import Record, read_records, summary_table
from .templates import get_templates, list_templates, register_templates

__all__ = [
    "average_files", "interpolate_files", "plan_files", "sweep_files",
    "estimate_fisher", "fisher_merge", "greedy_soup", "uniform_soup", "weighted_average",
    "Backbone", "BackboneSpec", "Classifier", "ConfigError", "EvalSet", "FinetuneConfig", "Interpolator",
    "LabeledDataset", "MergeError", "Record", "RunConfig", "build_dataset", "evaluate", "export_model",
    "finetune", "get_templates", "interpolate", "list_backbones", "list_datasets", "list_templates",
    "load_backbone", "load_config", "load_model", "load_state", "read_records", "register_backbone",
    "register_dataset", "register_templates", "run", "save_state", "split_holdout", "summary_table",
    "sweep", "zeroshot_head", "zeroshot_weights", "build_report", "clopper_pearson", "effective_robustness",
    "fit_baseline", "select_alpha",
]
