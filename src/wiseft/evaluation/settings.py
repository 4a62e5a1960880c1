"""How to evaluate, as one object: ``EvalSettings`` (batch size, precision, input cache,
loader workers, the bf16 check, alphas per pass) and a sweep's ``SweepSettings``, which
adds how to mix and name its records."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, TypeVar

from wiseft.runtime import resolve_precision

if TYPE_CHECKING:
    import torch

    from wiseft.config import EvalConfig

CacheMode = Literal["auto", "memory", "disk"]

_Settings = TypeVar("_Settings", bound="EvalSettings")


@dataclass(frozen=True)
class EvalSettings:
    """How to evaluate, as one object from the config to every helper (``EvalConfig``, the
    config's ``evaluation`` section, holds the same fields).

    ``cache``: True/'auto', 'memory', 'disk' (decode each input once), or False (the naive
    loop: decode again on every pass). ``cache_dir``: where a memory-mapped cache goes
    (default: the temp dir); ``max_memory``: the in-memory budget of 'auto' (default: half
    the available memory). ``num_workers``: loader processes (default 0 for small sets, up
    to 8 above 512 inputs). ``fp32_check``: in bf16, inputs per set also run in fp32 to
    report the difference. ``alphas_per_pass``: how many alphas of a sweep share one read
    of each batch (``wiseft.merge.MultiAlpha``): 1, one at a time; N, up to N; 'auto', as many as
    half the free memory of a CUDA device holds (1 on CPU).

    Example:
        >>> settings = EvalSettings.from_config(cfg.evaluation, progress=False)
        >>> records = evaluate_records(model, sets, backbone, model_name="export", settings=settings)
    """

    batch_size: int = 256
    precision: str = "auto"
    cache: bool | CacheMode = True
    cache_dir: str | Path | None = None
    num_workers: int | None = None
    fp32_check: int = 512
    max_memory: int | None = None
    progress: bool = True
    alphas_per_pass: int | Literal["auto"] = 1

    @classmethod
    def from_config(cls, cfg: EvalConfig, *, progress: bool = True) -> EvalSettings:
        """The settings a config's ``evaluation`` section describes."""
        return cls(**cfg.model_dump(), progress=progress)

    @property
    def cache_mode(self) -> CacheMode:
        """The input cache's mode where one is built (``cache`` True or False: 'auto')."""
        return "auto" if self.cache in (True, False) else self.cache

    def resolved(self: _Settings, device: torch.device) -> _Settings:
        """These settings with the precision this device runs (``auto`` resolved: ``resolve_precision``)."""
        return replace(self, precision=resolve_precision(self.precision, device))


@dataclass(frozen=True)
class SweepSettings(EvalSettings):
    """A sweep's settings: how to evaluate, plus how to mix and name its records.
    ``linear``: score every alpha from features computed once, when the two encoders are
    equal; ``allow_extrapolation``: alphas outside [0, 1]; ``provenance``: added to every
    record.

    Example:
        >>> sweep(model, theta_0, theta_1, sets, alphas, backbone,
        ...       settings=SweepSettings(model_name="lp", linear=True, precision="bf16"))
    """

    model_name: str = "finetuned"
    linear: bool = False
    allow_extrapolation: bool = False
    provenance: Mapping[str, Any] | None = None

    @classmethod
    def from_config(cls, cfg: EvalConfig, *, progress: bool = True, model_name: str = "finetuned",
                    linear: bool = False, allow_extrapolation: bool = False,
                    provenance: Mapping[str, Any] | None = None) -> SweepSettings:
        """The settings of one sweep of a run: the config's ``evaluation`` section and these."""
        return cls(**cfg.model_dump(), progress=progress, model_name=model_name, linear=linear,
                   allow_extrapolation=allow_extrapolation, provenance=provenance)

    @classmethod
    def of(cls, settings: EvalSettings | None) -> SweepSettings:
        """``settings`` as sweep settings (the sweep's own fields at their defaults)."""
        if isinstance(settings, SweepSettings):
            return settings
        return cls(**{f.name: getattr(settings, f.name) for f in fields(settings)}) if settings else cls()
