"""Files: atomic writes and folder locks, checkpoint formats (resolve, load, save), records files."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "scratch": ["Terminated", "on_main_thread", "raise_terminated", "release_scratch", "scratch_dir", "scratch_file"],
    "atomic": ["atomic_path", "atomic_write", "check_free", "clear_dir", "hold", 
               "open_append", "write_with", "writing"],
    "checkpoint": ["CheckpointError", "INDEX_SUFFIX", "META_FILE", "MODEL_FILE", "SAFETENSORS_SINGLE_NAMES", "StateDict",
                   "all_finite", "check_finite", "shareless", "check_torch_file", "load_state", "read_meta", "read_torch",
                   "resolve_checkpoint", "safetensors_files", "save_state"],
    "records": ["append_records", "read_records"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
