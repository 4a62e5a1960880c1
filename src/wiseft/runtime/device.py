"""Device and precision helpers shared by the library and the training engine.

``choose_precision`` is the one place that decides which precision a stage runs in:
``auto`` picks the fastest precision the device runs natively (bf16 on CUDA devices
and CPUs that have it, else fp32); an explicit choice is kept, with a warning where it
runs emulated. ``compute_info`` says where a result was computed, for provenance.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import platform
from dataclasses import dataclass
from typing import Iterator

import torch

log = logging.getLogger("wiseft")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = ("fp32", "bf16", "fp16")
# set to 0 or 1 to override the CPU's native-bf16 detection (benchmarks emulate the other CPU kind with it)
NATIVE_BF16_ENV = "WISEFT_NATIVE_BF16"
# CPU flags (Linux /proc/cpuinfo names) that mean native bf16 arithmetic: x86 AVX512-BF16 and AMX,
# Arm's BF16 extension; and the ones reported beside them in provenance
_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")
_REPORTED_FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16",
                   "avx2", "bf16", "asimd")
# measured on a 2-core Xeon without native bf16 (all-MiniLM-L6-v2, batch 32 x 64 tokens, AdamW):
# a training step took 2.52 s under bf16 autocast and 0.79 s in fp32
_EMULATED_BF16_COST = "about 3x slower than fp32"


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision a stage runs in, what was asked for, and why (for the plan and provenance)."""

    precision: str
    requested: str
    why: str


def parse_cpuinfo(text: str) -> tuple[str, frozenset[str]]:
    """(CPU model name, flags) from the text of Linux's /proc/cpuinfo (x86 ``flags``, Arm ``Features``)."""
    name, flags = "", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not name:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return name, flags


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """This machine's (CPU model name, flags); the name from ``platform`` where there is no /proc/cpuinfo."""
    try:
        with open("/proc/cpuinfo") as f:
            name, flags = parse_cpuinfo(f.read())
    except OSError:
        name, flags = "", frozenset()
    return name or platform.processor() or platform.machine(), flags


def cpu_name() -> str:
    """The CPU's model name (``AMD EPYC``, ``Intel(R) Xeon(R) ...``)."""
    return _cpuinfo()[0]


def cpu_flags() -> list[str]:
    """The CPU features that decide precision and speed here (bf16, AMX, AVX-512), as the OS names them."""
    flags = _cpuinfo()[1]
    return [f for f in _REPORTED_FLAGS if f in flags]


def _forced_bf16() -> bool | None:
    """What ``WISEFT_NATIVE_BF16=0|1`` says of native bf16, or None where it is not set."""
    forced = os.environ.get(NATIVE_BF16_ENV, "").strip()
    return forced == "1" if forced in ("0", "1") else None


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16, AMX or Arm BF16);
    ``WISEFT_NATIVE_BF16=0|1`` overrides the detection."""
    forced = _forced_bf16()
    return forced if forced is not None else any(f in _cpuinfo()[1] for f in _BF16_FLAGS)


def _native_bf16(device: torch.device) -> tuple[bool, str]:
    """(whether ``device`` runs bf16 natively, the facts that decided it)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        has = torch.cuda.is_bf16_supported()
        return has, f"{name} {'has' if has else 'lacks'} bf16"
    if device.type == "cpu":
        has = cpu_has_bf16()
        flags = [f for f in _BF16_FLAGS if f in _cpuinfo()[1]]
        facts = (f"{NATIVE_BF16_ENV}={int(has)}" if _forced_bf16() is not None else
                 ", ".join(flags) if flags else "no avx512_bf16/amx_bf16")
        return has, f"{cpu_name()} {'has' if has else 'lacks'} native bf16 ({facts})"
    return False, f"{device.type}: bf16 is not chosen automatically"


def choose_precision(requested: str, device: torch.device | str,
                     allowed: tuple[str, ...] = PRECISIONS) -> PrecisionChoice:
    """The precision a stage runs in on ``device``: ``auto`` is bf16 where the device runs it
    natively (CUDA with bf16, a CPU with AVX512-BF16/AMX/Arm BF16), else fp32 (fp16 only when
    asked for); an explicit precision is kept, with a warning naming its cost where it runs
    emulated.

    Example:
        >>> choose_precision("auto", torch.device("cpu")).precision
        'fp32'
    """
    device = torch.device(device)
    if requested != "auto" and requested not in allowed:
        raise ValueError(f"precision must be 'auto' or one of {', '.join(allowed)}; got {requested!r}")
    has_bf16, facts = _native_bf16(device)
    if requested == "auto":
        chosen = "bf16" if has_bf16 and "bf16" in allowed else "fp32"
        return PrecisionChoice(chosen, requested, f"auto: {facts}")
    if requested == "bf16" and not has_bf16 and device.type == "cpu":
        _warn_once(f"precision bf16 on {facts} runs emulated, {_EMULATED_BF16_COST}; precision: auto "
                   "picks fp32 here")
        return PrecisionChoice(requested, requested, f"asked for; {facts}: emulated")
    return PrecisionChoice(requested, requested, "asked for")


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    log.warning("%s", message)


def compute_info(device: torch.device | str) -> dict[str, object]:
    """Where results are computed: device and its name, CPU model, flags and cores, native
    bf16 (and whether the detection was forced), torch version; for records and summaries."""
    device = torch.device(device)
    has_bf16, _ = _native_bf16(device)
    info: dict[str, object] = {"device": device.type, "cpu": cpu_name(), "cpu_flags": cpu_flags(),
                               "cores": os.cpu_count(), "native_bf16": has_bf16, "torch": torch.__version__}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    if _forced_bf16() is not None:
        info["native_bf16_forced"] = _forced_bf16()
    return info


def describe_compute(info: dict[str, object]) -> str:
    """One line of ``compute_info``: 'cpu AMD EPYC, 2 cores (avx512_bf16), native bf16, torch 2.14.1'."""
    name = info.get("device_name") or info.get("cpu")
    flags = [f for f in info.get("cpu_flags", []) if "bf16" in f or "amx" in f]  # type: ignore[union-attr]
    forced = " (forced)" if "native_bf16_forced" in info else ""
    return (f"{info['device']} {name}, {info['cores']} cores" + (f" ({', '.join(flags)})" if flags else "")
            + f", {'native' if info['native_bf16'] else 'no native'} bf16{forced}, torch {info['torch']}")


def device_of(module: torch.nn.Module) -> torch.device:
    """The device of a module's first parameter."""
    return next(module.parameters()).device


def to_device(inputs, device: torch.device, *, channels_last: bool = False):
    """Move a tensor or a dict of them (a tokenised batch; nested for FLYP's input-prompt
    pairs) to ``device``."""
    if isinstance(inputs, torch.Tensor):
        if channels_last and inputs.dim() == 4:
            return inputs.to(device, non_blocking=True, memory_format=torch.channels_last)
        return inputs.to(device, non_blocking=True)
    return {k: to_device(v, device, channels_last=channels_last) for k, v in inputs.items()}


def autocast(device: torch.device, precision: str):
    """``torch.autocast`` for ``"bf16"``/``"fp16"``; a no-op context for ``"fp32"``. A stage
    resolves ``"auto"`` once (:func:`choose_precision`) before its steps; here it is an error."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)} here (resolve 'auto' with "
                         f"choose_precision first); got {precision!r}")
    dtype = _DTYPES.get(precision, torch.bfloat16)
    return torch.autocast(device.type, dtype=dtype, enabled=precision in _DTYPES)


_CUBLAS = "CUBLAS_WORKSPACE_CONFIG"


@contextlib.contextmanager
def deterministic_numerics(*, strict: bool = False) -> Iterator[None]:
    """fp32 that repeats, for the duration: TF32 off, cuDNN benchmark off, deterministic
    algorithms on. ``strict`` (training) makes an op without a deterministic kernel an
    error rather than a warning, and also sets ``cudnn.deterministic`` and cuBLAS's fixed
    workspace (``CUBLAS_WORKSPACE_CONFIG``, unless already set). Every flag is restored
    on exit, an exception included."""
    cuda, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             os.environ.get(_CUBLAS))
    try:
        cuda.allow_tf32 = cudnn.allow_tf32 = cudnn.benchmark = False
        if strict:
            os.environ.setdefault(_CUBLAS, ":4096:8")
            cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=not strict)
        yield
    finally:
        cuda.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved[:4]
        torch.use_deterministic_algorithms(saved[4], warn_only=saved[5])
        if strict and saved[6] is None:
            os.environ.pop(_CUBLAS, None)
