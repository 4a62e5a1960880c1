"""Files: atomic writes and folder locks, checkpoint formats (resolve, load, save),
records files, experiment trackers (TensorBoard, MLflow) behind one interface."""

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
    "trackers": ["FanOut", "flatten_params", "local_mlflow_store", "log_outputs", "log_records", "log_run_end", "log_selection",
                 "metric_key", "MlflowTracker", "open_tracker", "record_metrics", "Scoped", "TensorBoardTracker",
                 "Tracker", "TrackerError"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
