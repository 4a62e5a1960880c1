"""The output-space ensemble and the class-restricted reference accuracy, from logits
checked by hand; the records they become."""

from __future__ import annotations

import pytest
import torch

from wiseft.core import Score
from wiseft.data import LabeledDataset, Projection
from wiseft.evaluation import EvalSet
from wiseft.evaluation.ensemble import (
    OUTPUT_ENSEMBLE,
    class_restricted_score,
    class_restricted_scores,
    output_ensemble_name,
    output_ensemble_scores,
)
from wiseft.evaluation.sets import to_records


def _set(name, role, labels, n_classes=3, projection=None):
    ds = LabeledDataset([(i, y) for i, y in enumerate(labels)], [f"c{i}" for i in range(n_classes)], name=name,
                        projection=projection)
    return EvalSet(name, role, ds)


def test_output_ensemble_mixes_logits_by_hand():
    ref = _set("ref", "reference", [0, 1, 2, 2])
    # zero-shot gets samples 0 and 2 right, fine-tuned gets 1, 2 and 3 right.
    z0 = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    z1 = torch.tensor([[0.0, 1.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 4.0]])
    y = torch.tensor([0, 1, 2, 2])
    scores = output_ensemble_scores([ref], {"ref": z0}, {"ref": z1}, {"ref": y}, [0, 0.25, 0.5, 1])
    top1 = {a: scores[a]["ref"]["top1"] for a in scores}
    assert (top1[0.0].correct, top1[1.0].correct) == (2, 3)
    # alpha 0.25: rows [1.5, .25, 0], [.75, 1, 0], [0, 0, 2.5], [.75, 0, 1] -> 0, 1, 2, 2: all right.
    assert (top1[0.25].correct, top1[0.25].total) == (4, 4)
    # alpha 0.5: row 0 is [1, .5, 0] (right), row 1 [.5, 2, 0], row 2 [0, 0, 2], row 3 [.5, 0, 2]: 4 right.
    assert top1[0.5].value == 1.0
    assert set(scores) == {0.0, 0.25, 0.5, 1.0}


def test_output_ensemble_scores_through_each_sets_projection():
    # A shift scored on reference classes 2 and 0 (in that order): its label 0 is reference class 2.
    shift = _set("sub", "shift", [0, 1], n_classes=2, projection=Projection(((2,), (0,))))
    z0 = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0]])  # projected: [1, 0] -> class 0 both
    z1 = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0]])  # projected: [0, 3] -> class 1 both
    y = torch.tensor([0, 1])
    s = output_ensemble_scores([shift], {"sub": z0}, {"sub": z1}, {"sub": y}, [0.0, 1.0])
    assert s[0.0]["sub"]["top1"].correct == 1 and s[1.0]["sub"]["top1"].correct == 1
    # With a reference set, the reference also gets the shift's class-restricted accuracy.
    ref = _set("ref", "reference", [2, 0, 1], n_classes=3)
    zr0 = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])  # restricted to {0, 2}: 2, 2
    zr1 = torch.tensor([[3.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # restricted: 0, 0
    both = output_ensemble_scores([ref, shift], {"ref": zr0, "sub": z0}, {"ref": zr1, "sub": z1},
                                  {"ref": torch.tensor([2, 0, 1]), "sub": y}, [0.0, 1.0])
    assert both[0.0]["ref"]["top1_on_sub_classes"] == Score(0.5, 1, 2)
    assert both[1.0]["ref"]["top1_on_sub_classes"] == Score(0.5, 1, 2)
    assert both[0.0]["ref"]["top1"].correct == 2
    with pytest.raises(ValueError, match="differ in shape"):
        output_ensemble_scores([shift], {"sub": z0}, {"sub": z1[:1]}, {"sub": y}, [0.5])


def test_class_restricted_score_like_the_testbed():
    # Reference classes 0..4; the shift covers reference classes {0, 2} (one ObjectNet-like
    # group) and {4}. Samples of classes 1 and 3 are left out; predictions are among the
    # shift's two classes, max over each group, as the reference scores ObjectNet's x axis
    # (mlfoundations/wise-ft src/datasets/objectnet.py: ObjectNetValClasses, lines 143-157,
    # projects labels through class_idx_map, lines 90-95, and logits by max, lines 110-120).
    proj = Projection(((0, 2), (4,)))
    logits = torch.tensor([
        [5.0, 9.0, 1.0, 0.0, 0.0],  # label 0: class 1 is out of the subset -> group {0, 2}: right
        [1.0, 0.0, 2.0, 0.0, 0.0],  # label 0: predicts 2, same group: right (113-way, not 125-way)
        [0.0, 0.0, 0.0, 9.0, 1.0],  # label 3: not in the subset, not counted
        [0.0, 0.0, 1.0, 0.0, 3.0],  # label 4: right
        [0.0, 0.0, 4.0, 0.0, 5.0],  # label 2: predicts group {4}: wrong
    ])
    labels = torch.tensor([0, 0, 3, 4, 2])
    s = class_restricted_score(logits, labels, proj)
    assert (s.correct, s.total) == (3, 4)
    # one-class groups (ImageNet-R, -A): top-1 among the subset's classes, as before
    s = class_restricted_score(logits, labels, Projection(((0,), (2,), (4,))))
    assert (s.correct, s.total) == (2, 4)


def test_class_restricted_score_on_the_shipped_objectnet_groups():
    """ObjectNet's x axis is 113-way: an ImageNet val image of 'analog clock' (409) predicted
    as 'digital clock' (530) counts as 'Alarm clock' (objectnet_to_imagenet_1k.json) and is right."""
    from wiseft.data.imagenet import objectnet_classes

    groups = tuple(g for _, _, g in sorted(objectnet_classes(), key=lambda c: c[1]))
    assert len(groups) == 113 and len({c for g in groups for c in g}) == 125
    alarm = next(g for name, _, g in objectnet_classes() if name == "Alarm clock")
    assert sorted(alarm) == [409, 530]
    logits = torch.zeros(2, 1000)
    logits[:, 530] = 5.0
    labels = torch.tensor([409, 1])  # class 1 (goldfish) is no ObjectNet class: not counted
    s = class_restricted_score(logits, labels, Projection(groups))
    assert (s.correct, s.total) == (1, 1)


def test_class_restricted_scores_only_for_subset_shifts():
    r = _set("imagenet-r", "shift", [0], n_classes=2, projection=Projection(((1,), (3,))))
    v2 = _set("imagenet-v2", "shift", [0], n_classes=4)  # all reference classes, no projection
    full = _set("full", "shift", [0], n_classes=4, projection=Projection(((0,), (1,), (2,), (3,))))
    val = _set("val", "validation", [0], n_classes=2, projection=Projection(((1,), (3,))))
    logits = torch.tensor([[0.0, 2.0, 0.0, 1.0], [0.0, 2.0, 0.0, 1.0], [9.0, 0.0, 0.0, 0.0]])
    labels = torch.tensor([1, 3, 0])
    out = class_restricted_scores(logits, labels, [r, v2, full, val])
    assert list(out) == ["top1_on_imagenet-r_classes"]
    assert out["top1_on_imagenet-r_classes"] == Score(0.5, 1, 2)


def test_records_flag_the_primary_metric_and_name_the_ensemble():
    fmow = _set("fmow", "shift", [0, 1])
    scores = {0.5: {"fmow": {"ece": Score(0.1), "worst_region_acc": Score(0.4, 4, 10), "top1": Score(0.6, 6, 10)}}}
    recs = to_records(scores, [fmow], [0.5], output_ensemble_name("finetuned"), {"method": OUTPUT_ENSEMBLE}, {})
    primary = [r.metric for r in recs if r.provenance.get("primary")]
    assert primary == ["worst_region_acc"]  # the first declared, calibration aside
    assert {r.model for r in recs} == {"finetuned (output ensemble)"}
    assert all(r.provenance["method"] == OUTPUT_ENSEMBLE for r in recs)


def test_any_set_with_the_protocols_fields_is_scored():
    """The ensemble reads a set through ``ScoredSet`` only (evaluate imports it, not the other
    way round): a stand-in with name, role, dataset, projection and scores() is enough."""
    from dataclasses import dataclass

    @dataclass
    class StandIn:
        name: str
        role: str
        dataset: LabeledDataset
        projection: Projection | None = None

        def scores(self, logits, labels, index=None):
            return {"top1": Score(float((logits.argmax(1) == labels).float().mean()))}

    ds = LabeledDataset([(0, 0), (1, 0)], ["a", "b"], name="s")
    z0, z1 = torch.tensor([[2.0, 0.0], [1.0, 0.0]]), torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    s = output_ensemble_scores([StandIn("s", "shift", ds)], {"s": z0}, {"s": z1}, {"s": torch.tensor([0, 0])},
                               [0.0, 0.6, 1.0])
    # alpha 0.6: rows [0.8, 0.6] (right) and [0.4, 0.6] (wrong)
    assert [s[a]["s"]["top1"] for a in (0.0, 0.6, 1.0)] == [Score(1.0), Score(0.5), Score(0.0)]
