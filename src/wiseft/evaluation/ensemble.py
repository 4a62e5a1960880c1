"""The paper's comparisons computed from logits alone: the output-space ensemble, and the
reference accuracy on a shift's classes (the x axis of its effective robustness).

Both are pure functions of logits already computed by a sweep, so they cost no extra
forward pass.

- **Output-space ensemble** (WiSE-FT, the weight- vs output-space figure): the logits of
  the zero-shot and the fine-tuned model mixed, ``(1 - alpha) * f_0(x) + alpha * f_1(x)``,
  over the same alpha grid as the weight-space curve. Its records are those of a model
  named ``output_ensemble_name(model)`` with ``provenance["method"] == "output_ensemble"``.
  For a linear head (frozen encoder) it equals WiSE-FT exactly.
- **Class-restricted reference accuracy** (Taori et al. 2020): for a shift scored on a
  subset or grouping of the reference classes (ImageNet-R, -A, ObjectNet, the video
  sets), the accuracy on the reference samples whose label is in that subset, scored in
  the shift's own classes (logits max-projected, labels mapped to their group);
  recorded on the reference set as metric ``top1_on_<shift>_classes``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Mapping, Protocol, Sequence

import torch

from wiseft.core import OUTPUT_ENSEMBLE, Score, output_ensemble_name, restricted_metric

if TYPE_CHECKING:
    from wiseft.data import LabeledDataset, Projection

__all__ = ["OUTPUT_ENSEMBLE", "ScoredSet", "class_restricted_score", "class_restricted_scores",
           "output_ensemble_name", "output_ensemble_scores"]

Scores = dict[float, dict[str, dict[str, Score]]]  # alpha -> set name -> metric -> score


class ScoredSet(Protocol):
    """What these functions read of an evaluation set (``wiseft.evaluation.sets.EvalSet`` is one;
    the sweep engine imports this module, never the other way round)."""

    name: str
    role: str
    dataset: LabeledDataset
    projection: Projection | None

    def scores(self, logits: torch.Tensor, labels: torch.Tensor,
               index: torch.Tensor | None = None) -> dict[str, Score]: ...


def output_ensemble_scores(
    evalsets: Sequence[ScoredSet],
    logits_0: Mapping[str, torch.Tensor],
    logits_1: Mapping[str, torch.Tensor],
    labels: Mapping[str, torch.Tensor],
    alphas: Iterable[float],
    index: Mapping[str, torch.Tensor] | None = None,
) -> Scores:
    """Every metric of every set at every alpha for ``(1 - alpha) * logits_0 + alpha * logits_1``.

    ``logits_0``/``logits_1`` hold, per set name, the reference-space logits of the
    zero-shot (alpha 0) and fine-tuned (alpha 1) models on the same inputs in the same
    order; ``labels`` and ``index`` (positions in ``dataset.samples``, as ``EvalSet.scores``
    takes them) line up with them. Each set scores with its own ``scores()``, so the
    metrics are the ones it declares; the reference set also gets its class-restricted
    accuracies (``class_restricted_scores``), the x axes of the ensemble's effective
    robustness. The result has the shape ``sets.to_records`` takes.

    Example:
        >>> scores = output_ensemble_scores(sets, {"test": z0}, {"test": z1}, {"test": y}, [0, 0.5, 1])
        >>> scores[0.5]["test"]["top1"].value
        0.83
    """
    out: Scores = {}
    for a in alphas:
        a = float(a)
        out[a] = {}
        for es in evalsets:
            z0, z1 = logits_0[es.name].float(), logits_1[es.name].float()
            if z0.shape != z1.shape:
                raise ValueError(f"{es.name}: zero-shot logits {tuple(z0.shape)} and fine-tuned logits "
                                 f"{tuple(z1.shape)} differ in shape")
            mixed = (1 - a) * z0 + a * z1
            out[a][es.name] = es.scores(mixed, labels[es.name], None if index is None else index.get(es.name))
            if es.role == "reference":
                out[a][es.name].update(class_restricted_scores(mixed, labels[es.name], evalsets))
    return out


def class_restricted_score(logits: torch.Tensor, labels: torch.Tensor, projection: Projection) -> Score:
    """Accuracy on the reference samples whose label is one of the reference classes
    ``projection`` maps onto, scored as the shift is: the logits projected onto the shift's
    classes (max over each class's group) and the label onto the class whose group holds
    it. A prediction is right when its group holds the sample's label, so for ObjectNet an
    image of 'analog clock' predicted as 'digital clock' is right ('Alarm clock'), a
    113-way score, as the reference's ``ObjectNetValClasses`` (mlfoundations/wise-ft
    src/datasets/objectnet.py: ``project_logits`` and ``project_labels``) and its video
    counterparts score it. For one-class groups (ImageNet-R, -A) it is top-1 among the
    subset's classes, the robustness testbed's ``val-on-<shift>-classes``."""
    members = [frozenset(g) for g in projection.groups]
    classes = sorted(set().union(*members))
    keep = torch.isin(labels, torch.as_tensor(classes, dtype=labels.dtype))
    preds = projection(logits[keep]).argmax(dim=1).tolist()
    kept = labels[keep].tolist()
    correct = sum(y in members[p] for p, y in zip(preds, kept))
    return Score(correct / len(kept) if kept else 0.0, correct, len(kept))


def class_restricted_scores(logits: torch.Tensor, labels: torch.Tensor,
                            evalsets: Iterable[ScoredSet]) -> dict[str, Score]:
    """``top1_on_<shift>_classes`` for every shift set scored on a proper subset of the
    reference classes, from the reference set's ``logits`` and ``labels``. Shifts over
    all reference classes (ImageNet-V2, -Sketch) and sets without a projection get none.

    Example:
        >>> class_restricted_scores(ref_logits, ref_labels, [imagenet_r, imagenet_v2])
        {'top1_on_imagenet-r_classes': Score(value=0.93, correct=9300, total=10000)}
    """
    out = {}
    for es in evalsets:
        proj = es.projection if es.projection is not None else getattr(es.dataset, "projection", None)
        if es.role != "shift" or proj is None:
            continue
        if len({c for g in proj.groups for c in g}) >= logits.shape[1]:
            continue
        out[restricted_metric(es.name)] = class_restricted_score(logits, labels, proj)
    return out
