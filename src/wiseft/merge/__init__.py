"""Weight-space merging, one front door: the plan, the kernels, in memory and out of
core, several alphas at once, LoRA adapters, and the merge methods (one file each in
methods/)."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "depth": ["layer_depths"],
    "engine": ["check_call", "merge_states", "MergeCall"],
    "files": ["average_files", "interpolate_files", "merge_files", "MergePlan", "plan_files", "plan_method_files",
              "write_interpolations", "write_merges"],
    "interpolator": ["AlphaSchedule", "interpolate", "Interpolator"],
    "kernels": ["average_tensor", "interpolate_tensor"],
    "lora": ["adapter_provenance", "AdapterInterpolator", "interpolator_for", "is_peft_adapter",
             "merged_adapter_state", "model_base", "read_peft_adapter", "state_base", "write_peft_adapter"],
    "method": ["apply", "get_method", "list_methods", "MergeMethod", "MergeParams", "TensorInputs"],
    "methods.fisher": ["estimate_fisher", "fisher_merge"],
    "methods.greedy_soup": ["greedy_soup", "GreedySoup"],
    "methods.soup": ["uniform_soup", "weighted_average"],
    "plan": ["alpha_destinations", "alpha_label", "check_alpha", "check_weights", "MergeError", "plan_merge"],
    "safetensors": ["is_safetensors_checkpoint", "open_checkpoint", "SafetensorsCheckpoint"],
    "stacked": ["MultiAlpha", "MultiAlphaSettings", "split_alphas"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
