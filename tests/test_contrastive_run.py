"""``wiseft.run`` with ``finetune: {objective: contrastive}`` on a pair training set, end to
end (issue 27 items 2 and 6): tiny open_clip and Hugging Face CLIP on generated image-caption
pairs, a tiny sentence encoder on text pairs; the sweep scores the pair sets by retrieval and
the labelled set by zero-shot accuracy with the head of the mixed text tower."""

from __future__ import annotations

import math

import pytest
from conftest import write_image_folder
from pair_fixtures import write_pair_manifest, write_text_pairs

import wiseft
from wiseft.config import parse_config
from wiseft.io import load_state

pytestmark = pytest.mark.slow  # whole runs

CONTRASTIVE = {"mode": "e2e", "objective": "contrastive", "lr": 1e-3, "batch_size": 6, "epochs": 2,
               "warmup_steps": 1, "precision": "fp32", "save_every_steps": None}


def _check(result, pair_sets: set[str], labelled: set[str], alphas: list[float], towers: bool) -> None:
    recs = [r for r in result.records if r.model == "finetuned"]
    assert {r.dataset for r in recs if r.metric == "r@1"} == pair_sets
    assert {r.dataset for r in recs if r.metric == "top1"} >= labelled
    assert sorted({r.alpha for r in recs if r.metric == "r@1"}) == alphas
    assert all(r.provenance["objective"] == "contrastive" for r in recs)
    theta_1 = load_state(result.run_dir / "checkpoints" / "finetuned.safetensors")
    assert 0.0 <= float(theta_1["logit_scale"]) <= math.log(100.0)
    assert any(k.startswith("text.") for k in theta_1) == towers
    train_log = (result.run_dir / "train_finetuned.jsonl").read_text().splitlines()
    assert train_log and '"stage": "contrastive"' in train_log[0]


@pytest.mark.parametrize("family", ["open_clip", "hf_clip"])
def test_image_caption_pairs(family, open_clip_spec, tiny_hf_clip_dir, tmp_path):
    write_pair_manifest(tmp_path / "tr", 4, 1, name="train.jsonl")
    write_pair_manifest(tmp_path / "te", 2, 2, name="test.jsonl")
    write_image_folder(tmp_path / "img", 2, seed=3)
    backbone = open_clip_spec if family == "open_clip" else {"family": "hf_clip", "name": str(tiny_hf_clip_dir)}
    cfg = parse_config({
        "backbone": backbone,
        "data": {"name": "caps", "templates": ["a photo of a {} square."],
                 "train": {"kind": "pair_manifest", "path": str(tmp_path / "tr" / "train.jsonl")},
                 "test": {"kind": "pair_manifest", "path": str(tmp_path / "te" / "test.jsonl")},
                 "shifts": {"colours": {"kind": "image_folder", "root": str(tmp_path / "img")}},
                 "validation_fraction": 0.25},
        "finetune": CONTRASTIVE, "alphas": [0.0, 0.5, 1.0], "output_dir": str(tmp_path / "run"), "device": "cpu",
    })
    result = wiseft.run(cfg, progress=False)
    _check(result, {"caps", "caps-val"}, {"colours"}, [0.0, 0.5, 1.0], towers=True)


def test_text_pairs_on_a_sentence_encoder(tiny_bert_dir, tmp_path):
    pairs = write_text_pairs(tmp_path / "pairs.jsonl")
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"), ("the phone software", "technology")]
    (tmp_path / "heads.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows) + "\n")
    cfg = parse_config({
        "backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
        "data": {"name": "news-pairs", "templates": "news",
                 "train": {"kind": "pair_manifest", "path": str(pairs)},
                 "test": {"kind": "pair_manifest", "path": str(pairs)},
                 "shifts": {"headlines": {"kind": "manifest", "path": str(tmp_path / "heads.csv")}}},
        "finetune": {**CONTRASTIVE, "batch_size": 4}, "alphas": [0.0, 1.0], "output_dir": str(tmp_path / "run"),
        "device": "cpu",
    })
    result = wiseft.run(cfg, progress=False)
    _check(result, {"news-pairs", "news-pairs-val"}, {"headlines"}, [0.0, 1.0], towers=False)
