"""Evaluation engine for alpha sweeps.

Each evaluation set is decoded and preprocessed once and every alpha runs over that
cache; with a linear head (frozen encoder) features are computed once and every
alpha is scored from them, which is exact because the mixed head's logits are the
mix of the two heads' logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from .backbones.base import Backbone
from .data.base import LabeledDataset, Projection
from .finetune import autocast, compute_features, device_of, to_device
from .heads import Classifier
from .merge import Interpolator, interpolate
from .results import Record


@dataclass
class EvalSet:
    """A dataset scored under a role (reference, shift, validation), with the
    projection from reference logits onto its classes when they differ."""

    name: str
    role: str
    dataset: LabeledDataset
    projection: Projection | None = None
    _batches: list | None = field(default=None, repr=False)

    def batches(self, backbone: Backbone, batch_size: int, cache: bool = True) -> Iterable:
        """Collated (inputs, labels) batches with eval preprocessing; decoded once and
        kept in memory when ``cache`` is set."""
        if self._batches is not None:
            return self._batches
        loader = DataLoader(self.dataset.with_transform(backbone.transform_eval), batch_size=batch_size,
                            collate_fn=backbone.collate)
        if not cache:
            return loader
        self._batches = list(loader)
        return self._batches

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> int:
        if self.projection is not None and not self.projection.is_identity:
            logits = self.projection(logits)
        return int((logits.argmax(dim=1) == labels).sum())


@torch.no_grad()
def predict_logits(model: Classifier, batches: Iterable, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) in fp32 and labels (N,) for every batch."""
    model.eval()
    device = device_of(model)
    out, labels = [], []
    for inputs, y in batches:
        with autocast(device, precision):
            out.append(model(to_device(inputs, device)).float().cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def evaluate(model: Classifier, evalsets: Sequence[EvalSet], backbone: Backbone, *, batch_size: int = 256,
             precision: str = "fp32", cache: bool = True) -> dict[str, tuple[int, int]]:
    """(correct, total) top-1 counts per evaluation set for one model."""
    counts = {}
    for es in evalsets:
        logits, labels = predict_logits(model, es.batches(backbone, batch_size, cache), precision)
        counts[es.name] = (es.score(logits, labels), len(labels))
    return counts


def sweep(model: Classifier, theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor],
          evalsets: Sequence[EvalSet], alphas: Sequence[float], backbone: Backbone, *,
          model_name: str = "finetuned", linear: bool = False, batch_size: int = 256,
          precision: str = "fp32", cache: bool = True, allow_extrapolation: bool = False,
          provenance: dict[str, Any] | None = None, progress: bool = True) -> list[Record]:
    """Top-1 records for every (alpha, evaluation set). ``model`` is used as the
    workspace: its weights are overwritten with each theta_alpha in turn.

    Example:
        >>> records = sweep(model, zs_state, ft_state, [test, sketch], [0, 0.5, 1], backbone)
    """
    provenance = dict(provenance or {})
    counts: dict[float, dict[str, tuple[int, int]]] = {}
    interp = Interpolator(theta_0, theta_1, allow_extrapolation=allow_extrapolation)
    if linear and _same_encoder(theta_0, theta_1):
        counts = _sweep_linear(model, theta_0, theta_1, evalsets, alphas, backbone, batch_size,
                               precision, allow_extrapolation, progress)
    else:
        for alpha in tqdm(alphas, desc=f"alpha sweep ({model_name})", disable=not progress):
            interp.load_into(model, alpha)
            counts[alpha] = evaluate(model, evalsets, backbone, batch_size=batch_size,
                                     precision=precision, cache=cache)
    roles = {es.name: es.role for es in evalsets}
    return [Record(model=model_name, alpha=float(a), dataset=name, role=roles[name], metric="top1",
                   value=c / t if t else 0.0, correct=c, total=t, provenance=provenance)
            for a in alphas for name, (c, t) in counts[a].items()]


def _same_encoder(theta_0, theta_1) -> bool:
    return all(torch.equal(theta_0[k], theta_1[k]) for k in theta_0 if not k.startswith("head."))


def _sweep_linear(model, theta_0, theta_1, evalsets, alphas, backbone, batch_size, precision,
                  allow_extrapolation, progress):
    """Features once per set, then every alpha from the mixed head."""
    head_0 = {k[5:]: v for k, v in theta_0.items() if k.startswith("head.")}
    head_1 = {k[5:]: v for k, v in theta_1.items() if k.startswith("head.")}
    counts: dict[float, dict[str, tuple[int, int]]] = {a: {} for a in alphas}
    Interpolator(theta_0, theta_1).load_into(model, 0.0)  # the shared encoder
    for es in evalsets:
        feats, labels = compute_features(model.encoder, es.dataset, backbone, batch_size,
                                         precision=precision, progress=progress)
        for a in alphas:
            head = interpolate(head_0, head_1, a, allow_extrapolation=allow_extrapolation)
            logits = feats @ head["weight"].float().T + head["bias"].float()
            counts[a][es.name] = (es.score(logits, labels), len(labels))
    return counts
