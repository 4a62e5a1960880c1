"""evaluate.search_merge: a ``merges:`` entry's grid scored on the validation split only,
then its best point on the test sets; choose_point's rule; reuse_sweep's relabelled copies."""

import importlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import run_config

from wiseft.backbones import load_backbone
from wiseft.config import parse_config
from wiseft.core import Record
from wiseft.evaluation import EvalSettings, predict_logits, reuse_sweep, search_merge
from wiseft.evaluation.search import choose_point
from wiseft.heads import build_zeroshot_model
from wiseft.merge import merge_states
from wiseft.pipeline import prepare_data

merge_search = importlib.import_module("wiseft.evaluation.search")  # the module that scores a merge search


def test_choose_point_takes_the_best_and_breaks_ties_by_the_grid_or_toward_alpha_half():
    assert choose_point([0.5, 0.7, 0.6], [{"density": d} for d in (0.1, 0.2, 0.5)]) == 1
    assert choose_point([0.7, 0.5, 0.7], [{"density": d} for d in (0.5, 0.2, 0.1)]) == 0  # the first in the grid
    alphas = [{"alpha": a} for a in (0.0, 0.3, 0.7, 1.0)]
    assert choose_point([0.9, 0.9, 0.9, 0.8], alphas) == 1  # 0.3 and 0.7 both 0.2 from 0.5: the smaller
    assert choose_point([0.9, 0.8, 0.9, 0.9], alphas) == 2  # select_alpha's rule: closest to 0.5
    assert choose_point([0.8 + 1e-15, 0.8], [{"t": 0.1}, {"t": 0.2}]) == 0  # float noise is a tie
    with pytest.raises(ValueError, match="no grid point"):
        choose_point([], [])


@pytest.fixture(scope="module")
def tiny(open_clip_spec, image_data, tmp_path_factory):
    """The tiny model's zero-shot weights, two made-up fine-tunes and the run's sets."""
    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path_factory.mktemp("unused"),
                                  variants={"b": {"lr": 1e-4}},
                                  merges=[{"method": "ties", "search": {"density": [0.1, 0.5, 1.0]}},
                                          {"method": "soup"}]))
    data = prepare_data(cfg)
    backbone = load_backbone(cfg.backbone)
    model = build_zeroshot_model(backbone, data.classnames, data.templates)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    finetuned = {name: {k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v.clone()
                        for k, v in theta_0.items()} for name in ("finetuned", "b")}
    return cfg, data, backbone, model, theta_0, finetuned


def test_the_search_reads_only_validation_before_the_choice(tiny, monkeypatch):
    cfg, data, backbone, model, theta_0, finetuned = tiny
    seen = []
    real = merge_search.evaluate_set

    def spy(model, es, backbone, settings):
        seen.append(es.name)
        return real(model, es, backbone, settings)

    monkeypatch.setattr(merge_search, "evaluate_set", spy)
    ties = cfg.merge_runs()[0]
    records = search_merge(model, theta_0, finetuned, data.evalsets, backbone, ties,
                           settings=EvalSettings(batch_size=16, progress=False))
    assert seen == ["colors-val"] * 3 + ["colors", "noise", "subset"]
    search = [r for r in records if r.provenance["merge"]["stage"] == "search"]
    assert {r.role for r in search} == {"validation"} and len({r.provenance["merge"]["point_index"]
                                                                for r in search}) == 3
    val = {r.provenance["merge"]["point_index"]: r.value for r in search if r.metric == "top1"}
    best = [i for i in range(3) if val[i] == max(val.values())][0]
    test = [r for r in records if r.provenance["merge"]["stage"] == "test"]
    assert {r.provenance["merge"]["point"]["density"] for r in test} == {(0.1, 0.5, 1.0)[best]}
    # each point fits its own temperature on validation; the test sets' ECE uses the chosen one's
    assert len([r for r in search if r.metric == "temperature"]) == 3
    # the test records score the merged weights of the chosen point
    model.load_state_dict(merge_states("ties", theta_0, list(finetuned.values()), {"density": (0.1, 0.5, 1.0)[best]}))
    noise = next(es for es in data.evalsets if es.name == "noise")
    logits, labels = predict_logits(model, noise.batches(backbone, 16))
    assert next(r.correct for r in test if r.dataset == "noise" and r.metric == "top1") == \
        noise.scores(logits, labels)["top1"].correct


def test_a_method_without_a_base_merges_the_fine_tunes_alone(tiny):
    cfg, data, backbone, model, theta_0, finetuned = tiny
    soup = cfg.merge_runs()[1]
    records = search_merge(model, theta_0, finetuned, data.evalsets[:1], backbone, soup,
                           settings=EvalSettings(batch_size=16, progress=False))
    # no validation set given: no search, the one point scored on the test set
    assert {(r.dataset, r.provenance["merge"]["stage"]) for r in records} == {("colors", "test")}
    assert all(r.provenance["merge"]["chosen"] and r.provenance["merge"]["models"] == ["finetuned", "b"]
               for r in records)
    mean = {k: (finetuned["finetuned"][k] + finetuned["b"][k]) / 2 for k in theta_0}
    assert all(torch.allclose(model.state_dict()[k].float(), mean[k].float(), atol=1e-6) for k in theta_0
               if theta_0[k].is_floating_point())


def _sweep_records() -> list[Record]:
    """A sweep's records of 'finetuned' at alphas 0, 0.5, 1 on a validation, a reference and a shift set."""
    values = {"val": (0.5, 0.9, 0.8), "ref": (0.6, 0.85, 0.9), "shift": (0.5, 0.6, 0.4)}
    roles = {"val": "validation", "ref": "reference", "shift": "shift"}
    return [Record("finetuned", a, d, roles[d], "top1", v[i], round(100 * v[i]), 100, {"primary": True, "mode": "e2e"})
            for i, a in enumerate((0.0, 0.5, 1.0)) for d, v in values.items()]


def _linear(raw_alphas=None):
    merges = [{"method": "linear", **({"search": {"alpha": raw_alphas}} if raw_alphas else {})}]
    cfg = parse_config(run_config({"family": "open_clip", "name": "tiny", "pretrained": "/w.safetensors"},
                                  Path("/data"), Path("/runs/x"), alphas=[0.0, 0.5, 1.0], merges=merges))
    return cfg.merge_runs()[0]


def test_reuse_sweep_relabels_the_sweeps_records_as_the_linear_search():
    out = reuse_sweep(_linear(), _sweep_records())
    assert [(r.model, r.alpha, r.dataset, r.value) for r in out] == [
        ("linear", None, "val", 0.5), ("linear", None, "val", 0.9), ("linear", None, "ref", 0.85),
        ("linear", None, "shift", 0.6), ("linear", None, "val", 0.8)]
    stages = [(r.provenance["merge"]["stage"], r.provenance["merge"]["point"], r.provenance["merge"]["chosen"])
              for r in out]
    assert stages == [("search", {"alpha": 0.0}, False), ("search", {"alpha": 0.5}, True),
                      ("test", {"alpha": 0.5}, True), ("test", {"alpha": 0.5}, True),
                      ("search", {"alpha": 1.0}, False)]
    assert all(r.provenance["merge"]["from_sweep"] == "finetuned" and r.provenance["mode"] == "e2e" for r in out)


def test_reuse_sweep_declines_what_the_sweep_did_not_score():
    assert reuse_sweep(_linear([0.25, 0.5]), _sweep_records()) is None  # 0.25 was not swept
    no_val = [r for r in _sweep_records() if r.role != "validation"]
    assert reuse_sweep(_linear(), no_val) is None
    ties = replace(_linear(), method="ties", search={"density": (0.1,)})
    assert reuse_sweep(ties, _sweep_records()) is None
