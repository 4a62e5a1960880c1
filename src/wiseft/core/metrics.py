"""Metrics over predictions: accuracy, macro-F1, worst-group accuracy, pm-k, calibration.

Each returns a ``Score``: the value and, where it is a proportion of inputs, the
(correct, total) counts behind it, so records can carry confidence intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Hashable, Mapping, Sequence

import torch


@dataclass(frozen=True)
class Score:
    """One metric value; ``correct``/``total`` when it is a count ratio."""

    value: float
    correct: int | None = None
    total: int | None = None


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> Score:
    """Top-1 accuracy of predicted class indices."""
    total = int(labels.numel())
    correct = int((preds == labels).sum())
    return Score(correct / total if total else 0.0, correct, total)


def macro_f1(preds: torch.Tensor, labels: torch.Tensor, classes: Sequence[int] | None = None) -> Score:
    """F1 averaged over ``classes`` (default: the classes present in ``labels``, as
    WILDS scores iWildCam); a class never predicted nor present counts 0."""
    classes = torch.unique(labels).tolist() if classes is None else list(classes)
    if not classes:
        return Score(0.0)
    f1s = []
    for c in classes:
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return Score(sum(f1s) / len(f1s))


def group_accuracies(preds: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> dict[int, Score]:
    """Accuracy within each group id present in ``groups``."""
    return {int(g): accuracy(preds[groups == g], labels[groups == g]) for g in torch.unique(groups)}


def worst_group_accuracy(preds: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor,
                         exclude: Sequence[int] = ()) -> Score:
    """The lowest per-group accuracy over the groups present (minus ``exclude``), with
    that group's counts."""
    per = {g: s for g, s in group_accuracies(preds, labels, groups).items() if g not in set(exclude)}
    if not per:
        return Score(0.0)
    return min(per.values(), key=lambda s: s.value)


def pm_k_accuracy(pred_by_key: Mapping[Hashable, int],
                  anchors: Mapping[Hashable, tuple[Collection[int], Sequence[Hashable]]],
                  frame_labels: Mapping[Hashable, Collection[int]] | None = None) -> Score:
    """pm-k (Shankar et al. 2021): an anchor frame counts as correct only if it and every
    frame of its neighbourhood are predicted correctly, each frame against its own
    labels. ``anchors`` maps an anchor key to (its labels, neighbour keys), with no
    neighbours for pm-0; ``frame_labels`` gives a frame's own labels (ImageNet-Vid-Robust
    labels every frame); a frame without an entry is scored against its anchor's labels
    (YTBB-Robust labels only anchors, and its reference scores neighbours so). A frame
    with no prediction (unreadable) makes its anchor wrong."""
    own = frame_labels or {}
    correct = 0
    for a, (labels, nbrs) in anchors.items():
        keys = [a, *nbrs]
        correct += all(k in pred_by_key and pred_by_key[k] in own.get(k, labels) for k in keys)
    total = len(anchors)
    return Score(correct / total if total else 0.0, correct, total)


def expected_calibration_error(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                               bins: int = 15) -> Score:
    """ECE (Guo et al. 2017): inputs binned by confidence (the top softmax probability of
    ``logits / temperature``) into ``bins`` equal-width bins; the gap between accuracy
    and mean confidence in each bin, weighted by the bin's share of inputs."""
    n = int(labels.numel())
    if n == 0:
        return Score(0.0)
    conf, pred = (logits.float() / temperature).softmax(dim=1).max(dim=1)
    correct = (pred == labels).float()
    which = torch.clamp((conf * bins).ceil().long() - 1, 0, bins - 1)  # bin b holds (b/bins, (b+1)/bins]
    gap = torch.bincount(which, weights=correct - conf, minlength=bins).abs()  # n_bin * |acc - conf|
    return Score(float(gap.sum() / n))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature T that minimises the negative log-likelihood of ``softmax(logits / T)``
    on held-out data (temperature scaling, Guo et al. 2017): one scalar, so accuracy is
    unchanged and only the confidence moves."""
    import math

    from scipy.optimize import minimize_scalar

    if labels.numel() == 0:
        return 1.0
    logits, labels = logits.double(), labels.long()

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / math.exp(log_t), labels))

    best = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                           options={"xatol": 1e-5})
    return float(math.exp(best.x))
