"""The alpha sweep over pair sets and labelled sets together: retrieval records (r@k, both
directions) for pair sets, top-1 for labelled ones, at every alpha, with tiny open_clip,
HF CLIP and sentence-transformer models between theta_0 and a perturbed theta_1."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import run_config, write_image_folder
from pair_fixtures import png_bytes, square, write_pair_manifest, write_pair_shard, write_text_pairs

from wiseft.backbones import load_backbone
from wiseft.config import parse_config
from wiseft.core import COSINE_TIE, recall_at_k
from wiseft.data import PairDataset, build_dataset, load_image
from wiseft.evaluation import EvalSet, EvalSettings, SweepSettings, evaluate, search_merge, sweep
from wiseft.heads import Classifier, zeroshot_head
from wiseft.merge import Interpolator
from wiseft.report import select_alpha
from wiseft.train import flyp_model

CLASSES = ["blue", "green", "red"]
TEMPLATES = ["a {} square.", "a photo of {}."]
SETTINGS = SweepSettings(batch_size=4, progress=False, precision="fp32", fp32_check=0)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    test_pairs = build_dataset({"kind": "pair_manifest", "path": str(write_pair_manifest(root / "t", 2, 1,
                                                                                          captions_per_image=2))})
    val_pairs = build_dataset({"kind": "pair_manifest", "path": str(write_pair_manifest(root / "v", 1, 2))})
    labelled = build_dataset({"kind": "image_folder", "root": str(write_image_folder(root / "img", 2, seed=3))})
    return test_pairs, val_pairs, labelled


def evalsets(sets):
    test_pairs, val_pairs, labelled = sets
    return [EvalSet("colours", "reference", labelled), EvalSet("captions", "shift", test_pairs),
            EvalSet("captions-val", "validation", val_pairs)]


def perturbed(state: dict[str, torch.Tensor], seed: int = 0, scale: float = 0.05) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone()
            for k, v in state.items()}


def by_hand(model, backbone, pairs: PairDataset) -> dict[int, float]:
    """Recall@k image->text of ``pairs`` computed from scratch: every distinct image once."""
    refs = list(dict.fromkeys(r for r, _ in pairs.samples))
    caps = list(dict.fromkeys(c for _, c in pairs.samples))
    with torch.no_grad():
        x = backbone.collate([(backbone.transform_eval(load_image(r)), 0) for r in refs])[0]
        q = F.normalize(model.encoder(x).float(), dim=-1)
        d = F.normalize(model.encode_prompts(caps).float(), dim=-1)
    rel = torch.zeros(len(refs), len(caps), dtype=torch.bool)
    for r, c in pairs.samples:
        rel[refs.index(r), caps.index(c)] = True
    return {k: s.value for k, s in recall_at_k(q @ d.T, rel, tie=COSINE_TIE).items()}  # the sweep's tie rule


def run_sweep(backbone, sets):
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    theta_1 = perturbed(theta_0)
    records = sweep(model, theta_0, theta_1, evalsets(sets), [0.0, 0.5, 1.0], backbone, settings=SETTINGS)
    return model, theta_0, theta_1, records


@pytest.mark.parametrize("family", ["open_clip", "hf_clip"])
def test_sweep_scores_pairs_by_retrieval_and_labelled_sets_by_accuracy(family, sets, request):
    spec = (request.getfixturevalue("open_clip_spec") if family == "open_clip"
            else {"family": "hf_clip", "name": str(request.getfixturevalue("tiny_hf_clip_dir"))})
    backbone = load_backbone(spec)
    model, theta_0, theta_1, records = run_sweep(backbone, sets)
    pairs = {(r.alpha, r.dataset, r.metric): r for r in records if r.model == "finetuned"}
    for alpha in (0.0, 0.5, 1.0):
        assert pairs[(alpha, "colours", "top1")].total == 6
        for name in ("captions", "captions-val"):
            for m in ("r@1", "r@1_i2t", "r@5_i2t", "r@10_i2t", "r@1_t2i", "r@5_t2i", "r@10_t2i"):
                assert (alpha, name, m) in pairs
            assert pairs[(alpha, name, "r@1")].provenance["primary"] is True
            assert not any(k[1] == name and k[2] in ("top1", "ece") for k in pairs)
    # six images with two captions each, the two images of a colour sharing theirs: six distinct
    # captions, each correct for two images; as many queries both ways, so r@1 has pooled counts
    i2t, t2i, r1 = (pairs[(0.0, "captions", m)] for m in ("r@1_i2t", "r@1_t2i", "r@1"))
    assert i2t.total == 6 and t2i.total == 6
    assert (r1.correct, r1.total) == (i2t.correct + t2i.correct, 12)
    for alpha, theta in ((0.0, theta_0), (1.0, theta_1)):  # the sweep's numbers are the ones computed from scratch
        Interpolator(theta_0, theta).load_into(model, 1.0)
        want = by_hand(model, backbone, sets[0])
        for k in (1, 5, 10):
            assert pairs[(alpha, "captions", f"r@{k}_i2t")].value == pytest.approx(want[k])
    # the output-space ensemble covers the labelled sets only
    assert {r.dataset for r in records if r.model != "finetuned"} == {"colours"}


def test_alpha_is_chosen_on_the_held_out_pairs_only(open_clip_spec, sets):
    backbone = load_backbone(open_clip_spec)
    records = run_sweep(backbone, sets)[3]
    val = {r.alpha: r.value for r in records if r.dataset == "captions-val" and r.metric == "r@1"
           and r.model == "finetuned"}
    best = max(val.values())
    chosen = select_alpha(records, "finetuned")
    assert val[chosen] == best
    # test-set records say nothing: changing them all leaves the choice
    shuffled = [replace(r, value=1.0 - r.value) if r.role != "validation" else r for r in records]
    assert select_alpha(shuffled, "finetuned") == chosen


def test_text_pairs_with_a_sentence_transformer(tiny_bert_dir, tmp_path):
    backbone = load_backbone({"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16})
    pairs = build_dataset({"kind": "pair_manifest", "path": str(write_text_pairs(tmp_path / "t.jsonl"))})
    model = flyp_model(backbone, ["sports", "business"], ["{} news"])
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    records = sweep(model, theta_0, perturbed(theta_0), [EvalSet("news-pairs", "reference", pairs)], [0.0, 1.0],
                    backbone, settings=SETTINGS)
    metrics = {r.metric for r in records}
    assert {"r@1", "r@1_q2d", "r@5_d2q", "r@10_q2d"} <= metrics and not any("i2t" in m for m in metrics)
    assert all(r.total in (5, 10, None) for r in records)


def test_plain_classifier_captions_by_the_backbones_text_tower(open_clip_spec, sets):
    backbone = load_backbone(open_clip_spec)
    model = Classifier(backbone.encoder, zeroshot_head(backbone, CLASSES, TEMPLATES, cache=False))
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    records = sweep(model, theta_0, perturbed(theta_0), evalsets(sets), [0.0, 1.0], backbone, settings=SETTINGS)
    assert {r.metric for r in records if r.dataset == "captions"} >= {"r@1", "r@10_t2i"}


def test_linear_sweep_scores_pairs_once_for_every_alpha(open_clip_spec, sets):
    backbone = load_backbone(open_clip_spec)
    model = Classifier(backbone.encoder, zeroshot_head(backbone, CLASSES, TEMPLATES, cache=False))
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    theta_1 = {k: (v + 0.1 if k.startswith("head.") else v.clone()) for k, v in theta_0.items()}
    records = sweep(model, theta_0, theta_1, evalsets(sets), [0.0, 0.5, 1.0], backbone,
                    settings=replace(SETTINGS, linear=True))
    r1 = {r.alpha: r.value for r in records if r.dataset == "captions" and r.metric == "r@1"}
    assert len(r1) == 3 and len(set(r1.values())) == 1


def test_unreadable_queries_are_skipped_and_counted(open_clip_spec, sets, tmp_path):
    good = sets[1]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    pairs = PairDataset(good.samples + [(str(tmp_path / "bad.png"), "a broken square")], load=good.load,
                        name="with-bad")
    pairs.max_unreadable = 0.5
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    records = sweep(model, theta_0, theta_0, [EvalSet("with-bad", "reference", pairs)], [0.0], backbone,
                    settings=SETTINGS)
    i2t = next(r for r in records if r.metric == "r@1_i2t")
    t2i = next(r for r in records if r.metric == "r@1_t2i")
    assert i2t.total == 3 and t2i.total == 3  # the broken image and its caption left both sides
    assert i2t.provenance["skipped_inputs"] == 1


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_merge_search_chooses_on_held_out_pairs(open_clip_spec, image_data, sets, tmp_path):
    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path, variants={"b": {"lr": 1e-4}},
                                  merges=[{"method": "ties", "search": {"density": [0.2, 1.0]}}]))
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    finetuned = {"finetuned": perturbed(theta_0, 1), "b": perturbed(theta_0, 2)}
    records = search_merge(model, theta_0, finetuned, evalsets(sets), backbone, cfg.merge_runs()[0],
                           settings=EvalSettings(batch_size=4, progress=False, precision="fp32"))
    search = [r for r in records if r.provenance["merge"]["stage"] == "search"]
    assert {r.dataset for r in search} == {"captions-val"}
    val = {r.provenance["merge"]["point_index"]: r.value for r in search if r.metric == "r@1"}
    test = [r for r in records if r.provenance["merge"]["stage"] == "test"]
    chosen = test[0].provenance["merge"]["point_index"]
    assert val[chosen] == max(val.values())
    assert {(r.dataset, r.metric) for r in test} >= {("captions", "r@1_i2t"), ("colours", "top1")}


def test_webdataset_pairs_through_the_sweep(open_clip_spec, tmp_path):
    members = []
    for i, c in enumerate(["red", "green", "blue", "red"]):  # two red squares share their caption
        members += [(f"{i}.png", png_bytes(square(c, i))), (f"{i}.txt", f"a {c} square".encode())]
    pairs = build_dataset({"kind": "webdataset_pairs", "urls": str(write_pair_shard(tmp_path / "s.tar", members))})
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    records = sweep(model, theta_0, theta_0, [EvalSet("shards", "reference", pairs)], [0.0], backbone,
                    settings=SETTINGS)
    by = {r.metric: r for r in records}
    assert by["r@1_i2t"].total == 4 and by["r@1_t2i"].total == 3  # three distinct captions
    assert by["r@10_i2t"].value == 1.0 and by["r@10_t2i"].value == 1.0


def test_evaluate_counts_a_pair_sets_forward_r1(open_clip_spec, sets):
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    counts = evaluate(model, evalsets(sets), backbone, batch_size=4)
    records = sweep(model, *[{k: v.clone() for k, v in model.state_dict().items()}] * 2, evalsets(sets), [0.0],
                    backbone, settings=SETTINGS)
    want = next(r for r in records if r.dataset == "captions" and r.metric == "r@1_i2t")
    assert counts["captions"] == (want.correct, 6) and counts["colours"][1] == 6
