"""``wiseft.run`` end to end with a pair set among the evaluation sets: a FLYP fine-tune on
labelled images, a pair shift scored by retrieval with the mixed towers at every alpha,
the summary, the export and the report with its retrieval part."""

from __future__ import annotations

import pytest
from conftest import run_config
from pair_fixtures import write_pair_manifest

import wiseft
from wiseft.config import parse_config
from wiseft.report import build_report

pytestmark = pytest.mark.slow

FLYP = {"mode": "e2e", "objective": "flyp", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1}


def test_run_scores_a_pair_shift_by_retrieval(open_clip_spec, image_data, tmp_path):
    manifest = write_pair_manifest(tmp_path / "pairs", 2, 5, captions_per_image=2)
    raw = run_config(open_clip_spec, image_data, tmp_path / "run", finetune=FLYP, alphas=[0.0, 0.5, 1.0])
    raw["data"]["shifts"]["captions"] = {"kind": "pair_manifest", "path": str(manifest)}
    result = wiseft.run(parse_config(raw), progress=False)
    got = {(r.alpha, r.dataset, r.metric) for r in result.records if r.model == "finetuned"}
    for a in (0.0, 0.5, 1.0):
        assert {(a, "captions", m) for m in ("r@1", "r@1_i2t", "r@10_t2i")} <= got
        assert (a, "colors", "top1") in got and (a, "noise", "top1") in got
    assert not any(d == "captions" and m in ("top1", "ece") for _, d, m in got)
    assert result.selected_alpha["finetuned"] in (0.0, 0.5, 1.0)  # chosen on colors-val (labelled training)
    page = build_report(result.run_dir).read_text()
    assert "<h2>Retrieval</h2>" in page and (result.run_dir / "report" / "retrieval.csv").exists()
    assert (result.run_dir / "report" / "tradeoff_finetuned.png").exists()
