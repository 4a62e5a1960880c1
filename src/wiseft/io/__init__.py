"""Files: atomic writes and folder locks, checkpoint formats (resolve, load, save),
records files."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "atomic": ["atomic_path", "atomic_write", "check_free", "clear_dir", "hold", "open_append", "write_with",
               "writing"],
    "checkpoint": ["all_finite", "check_finite", "check_torch_file", "CheckpointError", "INDEX_SUFFIX", "load_state",
                   "META_FILE", "MODEL_FILE", "read_meta", "read_torch", "resolve_checkpoint", "safetensors_files",
                   "SAFETENSORS_SINGLE_NAMES", "save_state", "shareless", "StateDict"],
    "records": ["append_records", "read_records"],
    "scratch": ["on_main_thread", "raise_terminated", "release_scratch", "scratch_dir", "scratch_file", "Terminated"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
