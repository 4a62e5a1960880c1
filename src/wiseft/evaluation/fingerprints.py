"""What the processes of a torchrun launch compare before they gather rows: a digest of
a set's samples (``data_fingerprint``) and of the weights scored (``weights_fingerprint``),
so that rows gathered from different sets or different models stop with a named error."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    import torch

    from wiseft.data import LabeledDataset


def data_fingerprint(dataset: LabeledDataset) -> str:
    """A digest of a set's samples: paths, texts or archive members, and labels (inputs held
    as objects count by position only)."""
    plain = (str, int, Path, tuple)
    rows = "\n".join(f"{r if isinstance(r, plain) else ''}\t{y}" for r, y in dataset.samples)
    return hashlib.sha256(rows.encode()).hexdigest()


def weights_fingerprint(*states: Mapping[str, torch.Tensor]) -> list[float]:
    """The float64 sum of each floating tensor of ``states``: equal weights give equal lists."""
    return [float(v.detach().double().sum()) for state in states for v in state.values() if v.is_floating_point()]
