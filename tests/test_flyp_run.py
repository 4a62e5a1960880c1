"""``wiseft.run`` with ``finetune: {objective: flyp}`` end to end (issue 16 item 4): the sweep
mixes both towers and scores each alpha with the head of the mixed text tower."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

import wiseft
from wiseft.config import parse_config
from wiseft.heads import load_model
from wiseft.io import load_state

pytestmark = pytest.mark.slow

FLYP = {"mode": "e2e", "objective": "flyp", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1}


def _check_run(result, alphas):
    """Records for every alpha, labelled objective flyp; the fine-tune's learned logit scale kept."""
    recs = [r for r in result.records if r.model == "finetuned" and r.metric == "top1"]
    assert sorted({r.alpha for r in recs}) == alphas
    assert all(r.provenance["objective"] == "flyp" and r.provenance["mode"] == "e2e" for r in recs)
    theta_1 = load_state(result.run_dir / "checkpoints" / "finetuned.safetensors")
    assert "logit_scale" in theta_1


def test_flyp_run_open_clip(open_clip_spec, image_data, tmp_path):
    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path / "run", finetune=FLYP,
                                  alphas=[0.0, 0.5, 1.0]))
    result = wiseft.run(cfg, progress=False)
    _check_run(result, [0.0, 0.5, 1.0])
    theta_1 = load_state(result.run_dir / "checkpoints" / "finetuned.safetensors")
    assert any(k.startswith("text.transformer.") for k in theta_1)
    model, backbone, meta = load_model(result.export_dir)  # the export loads back as a plain classifier
    assert set(model.state_dict()) == {k for k in theta_1 if k.startswith(("encoder.", "head."))}
    # its head is the zero-shot head of the exported (mixed) text tower
    head = wiseft.zeroshot_head(backbone, cfg.data.classnames, cfg.data.templates, cache=False)
    scale = model.head.weight.norm(dim=1).mean() / head.weight.norm(dim=1).mean()
    torch.testing.assert_close(model.head.weight, head.weight * scale, rtol=1e-4, atol=1e-5)


def test_flyp_run_text_backbone(tiny_bert_dir, tmp_path):
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"), ("the phone software", "technology")]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows * 4) + "\n")
    cfg = parse_config({
        "backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
        "data": {"name": "news", "templates": "news", "train": {"kind": "manifest", "path": str(tmp_path / "train.csv")},
                 "test": {"kind": "manifest", "path": str(tmp_path / "train.csv")}, "validation_fraction": 0.25},
        "finetune": FLYP, "alphas": [0.0, 1.0], "output_dir": str(tmp_path / "run"), "device": "cpu",
    })
    result = wiseft.run(cfg, progress=False)
    _check_run(result, [0.0, 1.0])
    theta_1 = load_state(result.run_dir / "checkpoints" / "finetuned.safetensors")
    assert not any(k.startswith("text.") for k in theta_1)  # the same encoder embeds both sides


def test_a_flyp_variant_leaves_the_ce_fine_tune_unchanged(open_clip_spec, image_data, tmp_path):
    """The two zero-shot models share the backbone's towers: the ce fine-tune's records and
    its export (text tower included) are those of a run without the variant."""
    from safetensors.torch import load_file

    ce = {"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1}
    alone = wiseft.run(parse_config(run_config(open_clip_spec, image_data, tmp_path / "alone", finetune=ce,
                                               alphas=[0.0, 0.5, 1.0])), progress=False)
    both = wiseft.run(parse_config(run_config(open_clip_spec, image_data, tmp_path / "both", finetune=ce,
                                              variants={"flyp": {"objective": "flyp"}}, alphas=[0.0, 0.5, 1.0])),
                      progress=False)
    main = [(r.alpha, r.dataset, r.metric, r.value) for r in both.records if r.model == "finetuned"]
    assert main == [(r.alpha, r.dataset, r.metric, r.value) for r in alone.records if r.model == "finetuned"]
    assert {r.provenance.get("objective") for r in both.records if r.model == "flyp"} == {"flyp"}
    native_alone = load_file(str(alone.export_dir / "open_clip_model.safetensors"))
    native_both = load_file(str(both.export_dir / "open_clip_model.safetensors"))
    assert all(torch.equal(native_alone[k], native_both[k]) for k in native_alone)
