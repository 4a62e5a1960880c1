"""Where and how tensors compute: devices and the precision decision, numeric flags, the
memory budget, torchrun process plumbing."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "device": ["autocast", "choose_precision", "compute_info", "describe_compute", "deterministic_numerics",
               "device_of", "PrecisionChoice", "to_device"],
    "distributed": ["all_gather_objects", "all_gather_rows", "all_reduce_sum", "barrier", "check_same", "current",
                    "init_distributed", "processes_here"],
    "memory": ["available_memory"],
    "precision": ["numerics", "resolve_precision"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
