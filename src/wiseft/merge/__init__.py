"""Weight-space merging, one front door: the plan, the kernels, in memory and out of
core, several alphas at once, LoRA adapters, and the merge methods (one file each in
methods/)."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "depth": ["layer_depths"],
    "engine": ["MergeCall", "check_call", "merge_states"],
    "files": ["MergePlan", "average_files", "interpolate_files", "merge_files", "plan_files", "plan_method_files",
              "write_interpolations", "write_merges"],
    "interpolator": ["AlphaSchedule", "Interpolator", "interpolate"],
    "kernels": ["average_tensor", "interpolate_tensor"],
    "lora": ["AdapterInterpolator", "adapter_provenance", "interpolator_for", "is_peft_adapter", "merged_adapter_state",
             "model_base", "read_peft_adapter", "state_base", "write_peft_adapter"],
    "method": ["MergeMethod", "MergeParams", "TensorInputs", "apply", "get_method", "list_methods"],
    "methods.fisher": ["estimate_fisher", "fisher_merge"],
    "methods.greedy_soup": ["GreedySoup", "greedy_soup"],
    "methods.soup": ["uniform_soup", "weighted_average"],
    "plan": ["MergeError", "alpha_destinations", "alpha_label", "check_alpha", "check_weights", "plan_merge"],
    "safetensors": ["SafetensorsCheckpoint", "is_safetensors_checkpoint", "open_checkpoint"],
    "stacked": ["MultiAlpha", "MultiAlphaSettings", "split_alphas"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
