"""Merge methods scored as a search: a ``merges:`` entry's grid scored on the validation
split (``search_merge``), the point chosen there (``choose_point``) scored on the test
sets, and the provenance its records carry (``merge_provenance``). A linear entry
searching a global alpha reuses its fine-tune's sweep records (``reuse_sweep``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from wiseft.backbones import Backbone
from wiseft.core import MERGE, PRIMARY, SEARCH, TEST, Record, Score, alpha_rank, progress_bar, select_metric
from wiseft.evaluation.fingerprints import weights_fingerprint
from wiseft.evaluation.sets import EvalSet, evaluate_set, primary_metric, score_more, to_records, validation_first
from wiseft.evaluation.settings import EvalSettings, SweepSettings
from wiseft.heads import Classifier, rederive_head
from wiseft.runtime import check_same, current, device_of

if TYPE_CHECKING:
    from wiseft.config import MergeRun


def search_merge(model: Classifier, theta_0: dict[str, torch.Tensor], finetuned: Mapping[str, dict[str, torch.Tensor]],
                 evalsets: Sequence[EvalSet], backbone: Backbone, merge: MergeRun, *,
                 settings: EvalSettings | None = None) -> list[Record]:
    """Records of one ``merges:`` entry (``MergeRun``): each grid point's weights, merged by
    ``wiseft.merge.merge_states`` from ``theta_0`` and the fine-tunes ``finetuned[name]`` it
    names, scored on the validation sets only (stage ``search``); the point with the best
    mean primary metric there (``choose_point``) scored on the reference and shift sets
    (stage ``test``), under the temperature its validation scores fitted. Shift sets are
    never read before the choice. Without a validation set the entry's one point is
    scored on the test sets. ``model`` is the workspace, its weights overwritten; records
    carry ``settings.provenance`` and ``provenance["merge"]`` (docs/results-format.md).

    Example:
        >>> merge = parse_config(raw).merge_runs()[0]
        >>> records = search_merge(model, zs_state, {"finetuned": ft_state}, sets, backbone, merge)
    """
    s = SweepSettings.of(settings).resolved(device_of(model))
    if current().enabled:
        check_same(f"the weights merged ({merge.name})", weights_fingerprint(theta_0, *finetuned.values()))
    validation = [es for es in evalsets if es.role == "validation"]
    points = merge.points() if validation else merge.points()[:1]
    temperatures: dict[int, float] = {}
    found: list[dict[str, dict[str, Score]]] = []
    for i, point in enumerate(progress_bar(points if validation else [], desc=f"search ({merge.name})",
                                           disable=not s.progress, unit="point")):
        _load_merge(model, theta_0, finetuned, merge, point)
        found.append(_score_sets(model, validation, evalsets, backbone, s, temperatures, i))
    chosen = choose_point([_mean_primary(scores) for scores in found], points) if validation else 0
    _load_merge(model, theta_0, finetuned, merge, points[chosen])
    tests = [es for es in evalsets if es.role != "validation"]
    scores = _score_sets(model, tests, evalsets, backbone, s, temperatures, chosen)
    base = dict(s.provenance or {})
    records = [r for i in range(len(found)) for r in to_records(
        {None: found[i]}, validation, [None], merge.name, merge_provenance(base, merge, points, i, SEARCH, chosen),
        {})]
    return records + to_records({None: scores}, tests, [None], merge.name,
                                merge_provenance(base, merge, points, chosen, TEST, chosen), {})


def _load_merge(model: Classifier, theta_0, finetuned, merge: MergeRun, point: dict[str, Any]) -> None:
    """Merge ``merge``'s weights at ``point`` (on the model's device) and load them into ``model``."""
    from wiseft.merge import get_method, merge_states

    method = get_method(merge.method)
    device = device_of(model)
    on = lambda state: {k: v.to(device) for k, v in state.items()}  # noqa: E731 - a no-op where they are already
    base = on(theta_0) if method.needs_base else None
    state = merge_states(method, base, [on(finetuned[n]) for n in merge.models], merge.params_at(point))
    model.load_state_dict(state)
    rederive_head(model)  # FLYP: the head of the merged text tower


def _score_sets(model: Classifier, sets: Sequence[EvalSet], evalsets: Sequence[EvalSet], backbone: Backbone,
                s: EvalSettings, temperatures: dict, key: int) -> dict[str, dict[str, Score]]:
    """Every metric of each of ``sets`` for the model as it is, as a sweep scores one alpha:
    calibration under ``temperatures[key]`` (fitted by a validation set), and on the
    reference set its accuracies on each subset shift's classes (``evalsets`` says which)."""
    scores = {}
    for es in validation_first(sets):
        scores[es.name], logits, labels = evaluate_set(model, es, backbone, s)
        score_more(es, scores[es.name], logits, labels, temperatures, key, evalsets)
    return scores


def _mean_primary(scores: Mapping[str, Mapping[str, Score]]) -> float:
    """The mean over sets of each set's primary metric (several validation sets count equally)."""
    values = [s[primary_metric(s)].value for s in scores.values()]
    return sum(values) / len(values)


def choose_point(values: Sequence[float], points: Sequence[Mapping[str, Any]]) -> int:
    """The index of the best validation value. Ties go, for a search over alpha alone, to
    the alpha closest to 0.5 and then the smaller (``wiseft.core.alpha_rank``, ``select_alpha``'s rule),
    else to the first point of the grid.

    Example:
        >>> choose_point([0.8, 0.9, 0.9], [{"alpha": 0.0}, {"alpha": 0.4}, {"alpha": 0.5}])
        2
    """
    if not values:
        raise ValueError("no grid point was scored")
    alphas = all(list(p) == ["alpha"] for p in points)

    def key(i: int) -> tuple:
        return alpha_rank(values[i], float(points[i]["alpha"])) if alphas else (-round(values[i], 12), i)

    return min(range(len(values)), key=key)


def merge_provenance(base: Mapping[str, Any], merge: MergeRun, points: Sequence[dict[str, Any]], index: int,
                     stage: str, chosen: int) -> dict[str, Any]:
    """What the records of ``merge``'s grid point ``index`` carry: ``base`` (the run's
    provenance), ``method``, and ``merge``: the label, method, models, the point's full
    parameters (defaults included), the point, its index, the search space, the stage and
    whether it is the chosen point."""
    from wiseft.merge import get_method

    params = get_method(merge.method).make_params(merge.params_at(points[index])).model_dump(mode="json")
    info = {"name": merge.name, "method": merge.method, "models": list(merge.models), "params": params,
            "point": _jsonable(points[index]), "point_index": index,
            "search": {k: [_jsonable(v) for v in vs] for k, vs in merge.search.items()},
            "stage": stage, "chosen": index == chosen}
    return {**base, "method": merge.method, MERGE: info}


def _jsonable(value: Any) -> Any:
    """Tuples as lists, so a point reads back from JSON as it was recorded."""
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def reuse_sweep(merge: MergeRun, records: Sequence[Record]) -> list[Record] | None:
    """A linear entry searching a global alpha (``MergeRun.alpha_search``) is WiSE-FT
    itself: its records are copies of its fine-tune's sweep records, relabelled (the
    validation records of the searched alphas as the search, the chosen alpha's test
    records as the test), with ``merge.from_sweep`` naming the fine-tune. None when the
    sweep did not score every searched alpha on validation (then search it afresh).
    """
    if not merge.alpha_search:
        return None
    source = merge.models[0]
    points = merge.points()
    alphas = [float(p["alpha"]) for p in points]
    own = [r for r in records if r.model == source and r.alpha is not None and float(r.alpha) in alphas]
    val: dict[float, list[float]] = {}
    for r in select_metric(own, PRIMARY):
        if r.role == "validation":
            val.setdefault(float(r.alpha), []).append(r.value)
    if not val or set(val) != set(alphas):
        return None
    chosen = choose_point([sum(val[a]) / len(val[a]) for a in alphas], points)
    out = []
    for r in own:
        stage = SEARCH if r.role == "validation" else TEST
        if stage == TEST and float(r.alpha) != alphas[chosen]:
            continue
        prov = merge_provenance(r.provenance, merge, points, alphas.index(float(r.alpha)), stage, chosen)
        prov[MERGE]["from_sweep"] = source
        out.append(replace(r, model=merge.name, alpha=None, provenance=prov))
    return out
