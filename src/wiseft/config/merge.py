"""How to merge checkpoints: the settings of every merge, in memory or out of core."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

DEFAULT_CHUNK_BYTES = 16 << 20


def parse_size(text: str | int) -> int:
    """Bytes from ``"5GB"``, ``"500MiB"``, ``"1e9"`` or an int."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9.eE+]+)\s*([KMGT]?)(i?)B?\s*", text, flags=re.I)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size (e.g. 5GB, 500MiB)")
    base = 1024 if m.group(3) else 1000
    return int(float(m.group(1)) * base ** " KMGT".index((m.group(2) or " ").upper()))


class MergeConfig(BaseModel):
    """The settings of a merge (``wiseft interpolate`` and ``wiseft soup`` take the same).

    A tensor is mixed when its name matches an ``include`` glob (every name when None)
    and no ``exclude`` glob; any other comes unchanged from input ``keep`` (None: the
    operation's own default, the fine-tuned side 1 for an interpolation of two models,
    input 0 for an average). ``allow_extrapolation`` opts in to alphas outside [0, 1].
    The out-of-core engine reads ``chunk_bytes`` at a time and writes directory outputs
    as shards of at most ``max_shard_bytes`` (``"5GB"``, ``"500MiB"`` or bytes; default 5 GB).

    Example:
        >>> MergeConfig(exclude=["head.*"], max_shard_bytes="5GB")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    keep: int | None = None
    allow_extrapolation: bool = False
    max_shard_bytes: int | str | None = None  # read when a merge writes shards (parse_size)
    chunk_bytes: int = DEFAULT_CHUNK_BYTES

    @field_validator("exclude", mode="before")
    @classmethod
    def _no_exclude(cls, value: Any) -> Any:
        return () if value is None else value

    @property
    def shard_bytes(self) -> int | None:
        """``max_shard_bytes`` in bytes, or None when unset (ValueError when it is no size)."""
        return None if self.max_shard_bytes is None else parse_size(self.max_shard_bytes)

