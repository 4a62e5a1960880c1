"""FLYP (issue 16 item 4): contrastive fine-tuning against the class prompts, both towers
trained; the mixed model's head is re-derived from its mixed text tower."""

from __future__ import annotations

import copy

import pytest
import torch

from wiseft.backbones import load_backbone
from wiseft.config import FinetuneConfig
from wiseft.data import LabeledDataset
from wiseft.heads import Classifier, zeroshot_head, zeroshot_weights
from wiseft.merge import Interpolator
from wiseft.train import TrainRun, finetune, flyp_model
from wiseft.train.flyp import FlypError, FlypModel, PromptCollate, PromptPairs, flyp_loss

CLASSES = ["red", "green", "blue"]
TEMPLATES = ["a photo of a {}.", "a {} picture."]
RECIPE = dict(objective="flyp", lr=1e-3, batch_size=4, epochs=1, warmup_steps=0, save_every_steps=None)


@pytest.fixture(scope="module")
def oc_backbone(open_clip_spec):
    return load_backbone(open_clip_spec)


def _images(n: int = 6) -> LabeledDataset:
    from PIL import Image

    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
    return LabeledDataset([(Image.new("RGB", (40, 40), colours[i % 3]), i % 3) for i in range(n)], CLASSES)


def _head_of(text: torch.nn.Module, tokenize, scale: torch.Tensor) -> torch.Tensor:
    """The zero-shot head weight a text tower gives, computed here from scratch."""
    text = copy.deepcopy(text).eval()
    with torch.no_grad():
        return zeroshot_weights(lambda p: text(tokenize(list(p))), CLASSES, TEMPLATES) * scale.exp()


def test_loss_is_the_symmetric_infonce_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.2, 0.4, 3.0]])
    p_rows = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    p_cols = logits.exp() / logits.exp().sum(dim=0, keepdim=True)
    by_hand = (-p_rows.diagonal().log().sum() - p_cols.diagonal().log().sum()) / 2
    torch.testing.assert_close(flyp_loss(logits), by_hand, rtol=0, atol=1e-6)
    assert flyp_loss(logits).item() == pytest.approx(0.8157816, abs=1e-6)  # the same in float64 math


def test_zeroshot_flyp_head_equals_the_backbones_zeroshot_head(oc_backbone):
    model = flyp_model(oc_backbone, CLASSES, TEMPLATES)
    ref = zeroshot_head(oc_backbone, CLASSES, TEMPLATES, cache=False)
    torch.testing.assert_close(model.head.weight, ref.weight, rtol=1e-5, atol=1e-5)
    assert torch.equal(model.head.bias, torch.zeros(3))


def test_prompt_pairs_draw_a_template_per_sample_seeded():
    pairs = PromptPairs(LabeledDataset([(str(i), i % 3) for i in range(8)], CLASSES), CLASSES, TEMPLATES)
    torch.manual_seed(0)
    first = [pairs[i] for i in range(8)]
    torch.manual_seed(0)
    assert [pairs[i] for i in range(8)] == first
    assert all(p == TEMPLATES[0].format(CLASSES[y]) or p == TEMPLATES[1].format(CLASSES[y]) for (_, p), y in first)
    assert {p.startswith("a photo") for (_, p), _ in first} == {True, False}  # both templates drawn


def test_a_flyp_step_changes_both_towers_and_the_head_follows_the_text_tower(oc_backbone):
    model = flyp_model(oc_backbone, CLASSES, TEMPLATES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, _images(), oc_backbone, FinetuneConfig(**RECIPE), TrainRun(progress=False))
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.") for k in changed)
    assert any(k.startswith("text.") for k in changed)
    assert "logit_scale" in changed and "head.weight" in changed
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is untouched
    expected = _head_of(tuned.text, tuned.tokenize, tuned.logit_scale.detach())
    torch.testing.assert_close(tuned.head.weight, expected, rtol=0, atol=0)
    model.load_state_dict(after)  # model_0 shares the backbone's towers: the backbone now holds the fine-tune
    try:
        ref = zeroshot_head(oc_backbone, CLASSES, TEMPLATES, cache=False)  # at the backbone's own logit scale
    finally:
        model.load_state_dict(before)
    torch.testing.assert_close(tuned.head.weight / tuned.logit_scale.detach().exp(),
                               ref.weight / oc_backbone.logit_scale, rtol=1e-5, atol=1e-6)


def test_at_alpha_the_head_is_the_mixed_text_towers_head(oc_backbone):
    model = flyp_model(oc_backbone, CLASSES, TEMPLATES)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, _images(), oc_backbone, FinetuneConfig(**RECIPE), TrainRun(progress=False))
    theta_1 = {k: v.clone() for k, v in tuned.state_dict().items()}
    alpha = 0.3
    Interpolator(theta_0, theta_1).load_into(model, alpha)
    from wiseft.heads import rederive_head

    rederive_head(model)
    for k in theta_0:
        if k.startswith("text.") or k == "logit_scale":
            torch.testing.assert_close(model.state_dict()[k], torch.lerp(theta_0[k], theta_1[k], alpha))
    expected = _head_of(model.text, model.tokenize, model.logit_scale.detach())
    torch.testing.assert_close(model.head.weight, expected, rtol=0, atol=0)
    assert not torch.allclose(model.head.weight, theta_0["head.weight"], atol=1e-4)


def test_flyp_needs_a_prompt_classifier(oc_backbone):
    plain = Classifier(oc_backbone.encoder, zeroshot_head(oc_backbone, CLASSES, TEMPLATES, cache=False))
    with pytest.raises(FlypError, match="PromptClassifier.*flyp_model"):
        finetune(plain, _images(), oc_backbone, FinetuneConfig(**RECIPE), TrainRun(progress=False))


def test_flyp_with_mode_linear_is_an_error_naming_both_fields():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="objective: flyp .*mode: e2e, not mode: 'linear'"):
        FinetuneConfig(objective="flyp", mode="linear")
    from wiseft.config import ConfigError, parse_config

    run = {"backbone": {"family": "open_clip", "name": "x"},
           "data": {"name": "d", "classnames": CLASSES, "templates": TEMPLATES,
                    "train": {"kind": "image_folder", "root": "."}, "test": {"kind": "image_folder", "root": "."}},
           "finetune": {"objective": "flyp", "mode": "lp-ft"}}
    with pytest.raises(ConfigError, match="finetune: objective: flyp .*mode: e2e, not mode: 'lp-ft'"):
        parse_config(run)
    assert "objective" not in FinetuneConfig().model_dump()  # the default leaves config hashes unchanged
    assert FinetuneConfig(objective="flyp").model_dump()["objective"] == "flyp"


@pytest.mark.parametrize("fixture", ["tiny_hf_clip_dir", "tiny_hf_siglip_dir"])
def test_hf_text_tower_gives_the_backbones_zeroshot_head_and_trains(fixture, request):
    backbone = load_backbone({"family": "hf_clip", "name": str(request.getfixturevalue(fixture))})
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    ref = zeroshot_head(backbone, CLASSES, TEMPLATES, cache=False)
    torch.testing.assert_close(model.head.weight, ref.weight, rtol=1e-5, atol=1e-5)
    batch, _ = PromptCollate(backbone.collate, model.tokenize)(
        [((backbone.transform_train(img), "a photo of a red."), y) for img, y in _images(2)])
    flyp_loss(FlypModel(model)(batch)).backward()
    assert model.text.text_model.embeddings.token_embedding.weight.grad.abs().sum() > 0
    assert next(p for p in model.encoder.parameters()).grad is not None


def test_text_backbone_embeds_both_sides_with_one_encoder(tiny_bert_dir):
    backbone = load_backbone({"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16})
    model = flyp_model(backbone, ["sports", "politics"], ["this news article is about {}."])
    assert model.text is None and model.text_tower() is backbone.encoder
    assert not any(m.training for m in backbone.encoder.modules())  # re-deriving the head leaves dropout off
    assert not any(k.startswith("text.") for k in model.state_dict())
    ref = zeroshot_head(backbone, ["sports", "politics"], ["this news article is about {}."], cache=False)
    torch.testing.assert_close(model.head.weight, ref.weight, rtol=1e-5, atol=1e-5)


def test_a_sweep_scores_each_alpha_with_the_head_of_the_mixed_text_tower(oc_backbone, monkeypatch):
    import importlib

    from wiseft.evaluation import EvalSet, SweepSettings, evaluate_records, sweep

    model = flyp_model(oc_backbone, CLASSES, TEMPLATES)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, _images(), oc_backbone, FinetuneConfig(**{**RECIPE, "lr": 1e-2}), TrainRun(progress=False))
    theta_1 = {k: v.clone() for k, v in tuned.state_dict().items()}
    heads_scored = []  # the head each set is scored with
    alpha_sweep = importlib.import_module("wiseft.evaluation.alpha_sweep")  # the module that scores each alpha
    score = alpha_sweep.evaluate_set
    monkeypatch.setattr(alpha_sweep, "evaluate_set", lambda m, *a: heads_scored.append(m.head.weight.clone()) or
                        score(m, *a))
    records = sweep(model, theta_0, theta_1, [EvalSet("colors", "reference", _images(9))], [0.5], oc_backbone,
                    settings=SweepSettings(progress=False))
    monkeypatch.undo()
    by_hand = flyp_model(oc_backbone, CLASSES, TEMPLATES)  # shares the backbone's towers: load the mix into it
    Interpolator(theta_0, theta_1).load_into(by_hand, 0.5)
    by_hand.rederive_head()
    assert len(heads_scored) == 1
    torch.testing.assert_close(heads_scored[0], by_hand.head.weight, rtol=0, atol=0)
    assert not torch.allclose(heads_scored[0], torch.lerp(theta_0["head.weight"], theta_1["head.weight"], 0.5),
                              atol=1e-3)  # not the mix of the two heads
    expected = evaluate_records(by_hand, [EvalSet("colors", "reference", _images(9))], oc_backbone,
                                model_name="finetuned", alpha=0.5)
    assert {(r.metric, r.value) for r in expected} <= {(r.metric, r.value) for r in records}
