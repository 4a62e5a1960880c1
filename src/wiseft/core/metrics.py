"""Metrics over predictions: accuracy, macro-F1, worst-group accuracy, pm-k, calibration.

Each returns a ``Score``: the value and, where it is a proportion of inputs, the
(correct, total) counts behind it, so records can carry confidence intervals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Hashable, Mapping, Sequence

import torch

from wiseft.core.records import RETRIEVAL_PRIMARY


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


ROWS_AT_ONCE = 1024


def recall_at_k(scores: torch.Tensor, relevant: torch.Tensor, ks: Sequence[int] = (1, 5, 10), *,
                tie: float = 0.0) -> dict[int, Score]:
    """Recall@k of ranking every item (columns of ``scores``) for every query (rows),
    exact on ties: the expected hit rate under a uniformly random order among items with
    equal scores, so the value does not depend on the order items or queries come in.

    ``relevant`` (bool, the shape of ``scores``) marks each query's correct items; any one of
    them in the top k is a hit (an image listed with five captions, a caption text given
    twice). For a query whose best correct item scores s, with m items strictly above s and
    g items at s of which c are correct, the top k holds k - m of the g tied items (j,
    clamped to [0, g]) and the hit probability is 1 - C(g - c, j) / C(g, j): with one
    correct item, (k - m) / g clamped to [0, 1].

    The Score's counts are the hits over the queries; with ties the expected hit count can
    be fractional and ``correct`` is it rounded (its interval then approximate).

    ``tie``: scores within this of the best correct item's count as tied with it. Equal
    inputs embedded in different batches differ by float rounding (a caption padded to
    another length), so the sweep passes ``COSINE_TIE`` for cosine similarities: then the
    value does not depend on how the items were batched.
    """
    if scores.shape != relevant.shape or scores.dim() != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and relevant {tuple(relevant.shape)} must be one (queries, "
                         "items) matrix")
    relevant = relevant.bool()
    if not bool(relevant.any(dim=1).all()):
        raise ValueError("every query needs at least one correct item")
    counts = []  # per query: items above its best correct one, items tied with it, correct ones among those
    for lo in range(0, scores.shape[0], ROWS_AT_ONCE):  # in row blocks: a 5k x 25k matrix needs no copies of itself
        s, rel = scores[lo:lo + ROWS_AT_ONCE], relevant[lo:lo + ROWS_AT_ONCE]
        best = s.masked_fill(~rel, float("-inf")).amax(dim=1, keepdim=True)
        tied = (s - best).abs() <= tie
        counts.append(torch.stack([(s > best + tie).sum(dim=1), tied.sum(dim=1), (tied & rel).sum(dim=1)]))
    above, g, c = torch.cat(counts, dim=1).double() if counts else torch.zeros(3, 0, dtype=torch.float64)
    n = int(scores.shape[0])
    out = {}
    for k in ks:
        j = torch.clamp(k - above, min=0.0).minimum(g)
        # C(g - c, j) / C(g, j), zero where j > g - c (the j tied items must then hold a correct one)
        lg = torch.lgamma
        miss = torch.where(j <= g - c, torch.exp(lg(g - c + 1) - lg(g - c - j + 1) - lg(g + 1) + lg(g - j + 1)),
                           torch.zeros_like(g))
        hit = torch.where(j == 0, torch.zeros_like(g), 1.0 - miss)
        total = float(hit.sort().values.sum())  # summed in value order: the same float whatever the queries' order
        out[int(k)] = Score(total / n if n else 0.0, round(total), n)
    return out


RETRIEVAL_KS = (1, 5, 10)
# cosine similarities closer than this are ties: fp32 rounding of one text embedded in two
# batches (padded to different lengths) moves its cosine by about 1e-7
COSINE_TIE = 1e-6
# retrieval directions by query modality: image->text and text->image for image-caption
# pairs, query->document and document->query for text pairs (a query text and its caption)
DIRECTIONS = {"image": ("i2t", "t2i"), "text": ("q2d", "d2q")}


def retrieval_metrics(scores: torch.Tensor, relevant: torch.Tensor, modality: str = "image",
                      ks: Sequence[int] = RETRIEVAL_KS, *, tie: float = 0.0) -> dict[str, Score]:
    """Recall@k both ways of a (queries, captions) similarity matrix: ``r@k_i2t`` ranks the
    captions for each query, ``r@k_t2i`` the queries for each caption (``q2d``/``d2q`` for
    text queries), each by :func:`recall_at_k`. First, the primary ``r@1``: the mean of the
    two directions' R@1, so neither side of the pairing is favoured when their counts
    differ (five captions per image); it carries pooled counts only when both directions
    have as many queries (then the mean is the pooled proportion). ``tie``: as in
    :func:`recall_at_k`."""
    forward, backward = DIRECTIONS[modality]
    there = recall_at_k(scores, relevant, ks, tie=tie)
    back = recall_at_k(scores.t().contiguous(), relevant.t().contiguous(), ks, tie=tie)  # rows read in blocks: laid out so
    a, b = there[1], back[1]
    pooled = a.total == b.total
    out = {RETRIEVAL_PRIMARY: Score((a.value + b.value) / 2, (a.correct + b.correct) if pooled else None,
                                    (a.total + b.total) if pooled else None)}
    out.update({f"r@{k}_{forward}": there[k] for k in ks})
    out.update({f"r@{k}_{backward}": back[k] for k in ks})
    return out
