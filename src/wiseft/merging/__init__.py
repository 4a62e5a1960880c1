"""Merge methods: a name, a typed parameter model, a reference and a pure per-tensor
function each, registered in ``wiseft.registry.MERGE_METHODS`` (one file and one
registry line per method; docs/merge-methods.md).

Example:
    >>> from wiseft.merging import TensorInputs, apply, list_methods
    >>> list_methods()
    ['dare', 'fisher', 'greedy_soup', 'linear', 'model_stock', 'slerp', 'soup', 'task_arithmetic', 'ties']
    >>> x = TensorInputs("visual.proj", depth=1.0, base=theta_0, models=(theta_1, theta_2))
    >>> merged = apply("ties", x, {"density": 0.2})
    >>> state = merge_states("ties", zs_state, [ft_a, ft_b], {"density": 0.2})  # whole state dicts
"""

from ..merge import MergeError
from .base import MergeMethod, MergeParams, TensorInputs, apply, get_method, list_methods
from .depth import layer_depths
from .engine import merge_states

__all__ = ["MergeError", "MergeMethod", "MergeParams", "TensorInputs", "apply", "get_method", "layer_depths",
           "list_methods", "merge_states"]
