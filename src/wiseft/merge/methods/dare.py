"""``dare``: drop and rescale each task vector, then add them (mergekit's ``dare_linear``;
with ``sign_consensus``, ``dare_ties``)."""

from __future__ import annotations

import hashlib
import json

import torch
from pydantic import Field

from wiseft.core import MERGE_METHODS
from wiseft.merge.method import MergeMethod, MergeParams, TensorInputs
from wiseft.merge.methods.ops import add_scaled, combine, task_vectors


class DareParams(MergeParams):
    """``drop_rate``: the paper's p, the fraction of each task vector's elements set to 0
    (mergekit's ``density`` is 1 - p); the rest are scaled by 1 / (1 - p). ``scale``:
    lambda on the sum; ``sign_consensus``: TIES's sign election before the sum;
    ``normalize``: divide by the (agreeing) weights' sum; ``seed``: the masks' seed."""

    drop_rate: float = Field(0.9, ge=0, lt=1)
    scale: float = Field(1.0, ge=0)
    sign_consensus: bool = False
    normalize: bool = False
    seed: int = Field(0, ge=0)


def mask_seed(seed: int, key: str, index: int) -> int:
    """The generator seed of model ``index``'s mask for parameter ``key``: a hash of the
    three (blake2b, not Python's per-process ``hash``), the same in every process."""
    digest = hashlib.blake2b(json.dumps([seed, key, index]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def keep_mask(seed: int, key: str, index: int, shape: torch.Size | tuple[int, ...], drop_rate: float) -> torch.Tensor:
    """Which elements of model ``index``'s task vector for ``key`` survive: True with
    probability 1 - ``drop_rate``, drawn on the CPU from a generator seeded by ``mask_seed``
    (so the same on every device and in either engine)."""
    numel = 1
    for s in shape:
        numel *= s
    generator = torch.Generator().manual_seed(mask_seed(seed, key, index))
    return (torch.rand(numel, generator=generator, dtype=torch.float32) >= drop_rate).reshape(tuple(shape))


def merge_dare(inputs: TensorInputs, params: DareParams) -> torch.Tensor:
    """theta_0 + scale * sum_i w_i m_i (theta_i - theta_0) / (1 - p), m_i Bernoulli(1 - p)."""
    p = params.drop_rate
    dropped = []
    for i, delta in enumerate(task_vectors(inputs)):
        keep = keep_mask(params.seed, inputs.key, i, delta.shape, p).to(delta.device)
        dropped.append(torch.where(keep, delta, 0.0).div_(1.0 - p))
    mixed = combine(dropped, inputs.weights, consensus=params.sign_consensus, normalize=params.normalize)
    return add_scaled(inputs.base, mixed, params.scale)


MERGE_METHODS.add("dare", MergeMethod(
    name="dare", params=DareParams, merge_tensor=merge_dare, needs_base=True, min_models=1, elementwise=False,
    reference="Yu et al. 2024, Language Models are Super Mario: Absorbing Abilities from Homologous Models "
              "as a Free Lunch, arXiv:2311.03099",
    description="task vectors with a seeded random fraction drop_rate set to 0 and the rest scaled by "
                "1 / (1 - drop_rate), then added (optionally with TIES's sign consensus)"))
