"""finetune.mode: lora (issue 16): peft adapters on every backbone family's encoder, the head
trained fully, and the alpha sweep scaling the adapter (theta_0 + alpha B A), which equals
the weight-space mix of theta_0 and the merged model."""

import copy
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from wiseft.backbones import load_backbone
from wiseft.config import FinetuneConfig, LoraConfig, parse_config
from wiseft.data import LabeledDataset
from wiseft.heads import build_zeroshot_model
from wiseft.merge import AdapterInterpolator, interpolate, interpolator_for, merged_adapter_state
from wiseft.merge.lora import is_adapter_state
from wiseft.train import TrainRun, finetune, finetuned_state
from wiseft.train.lora import DEFAULT_TARGETS, LoraError, lora_layers, merged_state

pytest.importorskip("peft")

CLASSES = ["red", "green", "blue"]
TEXTS = [("the shares market profit", 0), ("the match goal team", 1), ("the election vote minister", 2)]
# fp32 rounding: theta_0 + alpha (B A) and lerp(theta_0, theta_0 + B A, alpha) differ by a few ulps
TOL = dict(atol=1e-6, rtol=1e-5)


def _images() -> LabeledDataset:
    rng = np.random.default_rng(0)
    colours = [(220, 30, 30), (30, 200, 40), (30, 40, 220)]
    samples = [(Image.fromarray(np.clip(np.array(c) + rng.integers(-30, 31, (32, 32, 3)), 0, 255).astype(np.uint8)),
                y) for _ in range(3) for y, c in enumerate(colours)]
    return LabeledDataset(samples, CLASSES, name="colours")


@pytest.fixture(params=["open_clip", "hf_clip", "hf_siglip", "sentence_transformer"])
def family(request, open_clip_spec, tiny_hf_clip_dir, tiny_hf_siglip_dir, tiny_bert_dir):
    """(backbone, zero-shot model, training set) of one family's tiny model."""
    spec = {"open_clip": open_clip_spec, "hf_clip": {"family": "hf_clip", "name": str(tiny_hf_clip_dir)},
            "hf_siglip": {"family": "hf_clip", "name": str(tiny_hf_siglip_dir)},
            "sentence_transformer": {"family": "sentence_transformer", "name": str(tiny_bert_dir),
                                     "max_length": 16}}[request.param]
    backbone = load_backbone(spec)
    text = backbone.modality == "text"
    train = LabeledDataset(TEXTS * 3, ["business", "sports", "politics"], name="news") if text else _images()
    model = build_zeroshot_model(backbone, train.classnames, ["a photo of {}."], cache=False)
    return backbone, model, train


def _lora(family, **lora) -> tuple[torch.nn.Module, dict, dict]:
    """(the LoRA-tuned classifier, theta_0, theta_1) after a few large steps."""
    backbone, model, train = family
    cfg = FinetuneConfig(mode="lora", lr=5e-2, batch_size=3, epochs=1, warmup_steps=1, lora={"rank": 4, **lora})
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    tuned = finetune(model, train, backbone, cfg, TrainRun(progress=False))
    return tuned, theta_0, finetuned_state(tuned)


def test_lora_trains_only_the_adapters_and_the_head(family):
    tuned, theta_0, theta_1 = _lora(family)
    trainable = {n for n, p in tuned.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if ".lora_A." in n or ".lora_B." in n} | {"head.weight", "head.bias"}
    assert {"head.weight", "head.bias"} <= trainable and len(trainable) > 2
    merged = merged_state(tuned)
    assert set(merged) == set(theta_0)
    frozen = {k for k in theta_0 if not k.startswith("head.")}
    adapted = {k[:-len(".lora_A")] for k in theta_1 if k.endswith(".lora_A")}
    for k in frozen - adapted:  # every weight without an adapter is theta_0's, bit for bit
        assert torch.equal(merged[k], theta_0[k]), k
    assert all(not torch.equal(merged[k], theta_0[k]) for k in adapted)  # the adapters trained
    assert not torch.equal(merged["head.weight"], theta_0["head.weight"])  # and the head


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_scaling_the_adapter_equals_mixing_the_merged_weights(family, alpha):
    tuned, theta_0, theta_1 = _lora(family)
    assert is_adapter_state(theta_1) and all(not k.startswith("encoder.") or ".lora_" in k for k in theta_1)
    merged = merged_state(tuned)  # peft's own merge: the independent reference
    expected = interpolate(theta_0, merged, alpha)
    got = AdapterInterpolator(theta_0, theta_1).merge(alpha)
    for k in theta_0:
        torch.testing.assert_close(got[k], expected[k], **TOL, msg=lambda m, k=k: f"{k}: {m}")
    # the update is large enough that the comparison means something
    assert max((merged[k] - theta_0[k]).abs().max().item() for k in theta_0) > 1e-3
    if alpha == 1.0:  # the plain model at alpha 1 computes what the adapted model does
        _, model, train = family
        plain = copy.deepcopy(model)
        interpolator_for(theta_0, theta_1).load_into(plain, 1.0)
        inputs, _ = family[0].collate([train.with_transform(family[0].transform_eval)[i] for i in range(3)])
        with torch.no_grad():
            torch.testing.assert_close(plain.eval()(inputs), tuned.eval()(inputs), atol=1e-4, rtol=1e-4)


def test_dora_mixes_the_merged_weights_and_says_so(family, caplog):
    # peft has no DoRA for nn.MultiheadAttention: open_clip's MLP carries it here
    mlp = {"target_modules": ["c_fc", "c_proj"]} if family[0].spec.family == "open_clip" else {}
    with caplog.at_level(logging.INFO, logger="wiseft"):
        tuned, theta_0, theta_1 = _lora(family, use_dora=True, **mlp)
    assert not is_adapter_state(theta_1)
    assert "not linear in its scale" in caplog.text and "merged weights" in caplog.text
    assert set(theta_1) == set(theta_0)
    merged = merged_state(tuned)
    assert all(torch.equal(theta_1[k], merged[k]) for k in theta_0)
    assert type(interpolator_for(theta_0, theta_1)).__name__ == "Interpolator"


def test_default_targets_cover_every_family_and_a_wrong_target_is_named(family):
    backbone, model, _ = family
    assert backbone.spec.family in DEFAULT_TARGETS
    cfg = FinetuneConfig(mode="lora", lora={"target_modules": ["no_such_layer"]}, batch_size=3, epochs=1)
    with pytest.raises(LoraError, match=r"finetune.lora \(target_modules \['no_such_layer'\]\): Target modules"):
        finetune(model, family[2], backbone, cfg, TrainRun(progress=False))


def test_merged_adapter_state_is_theta_0_plus_b_a():
    theta_0 = {"encoder.w": torch.eye(2), "encoder.b": torch.ones(2), "head.weight": torch.zeros(1, 2)}
    theta_1 = {"encoder.w.lora_A": torch.tensor([[1.0, 2.0]]), "encoder.w.lora_B": torch.tensor([[3.0], [0.5]]),
               "head.weight": torch.ones(1, 2)}
    full = merged_adapter_state(theta_0, theta_1)
    assert full["encoder.w"].tolist() == [[4.0, 6.0], [0.5, 2.0]]
    assert full["encoder.b"].tolist() == [1.0, 1.0] and full["head.weight"].tolist() == [[1.0, 1.0]]
    assert AdapterInterpolator(theta_0, theta_1).merge(0.5)["encoder.w"].tolist() == [[2.5, 3.0], [0.25, 1.5]]


def test_lora_settings_need_mode_lora_and_stay_out_of_the_dump():
    assert "lora" not in FinetuneConfig(mode="lora").model_dump()
    assert FinetuneConfig(mode="lora", lora={"rank": 4}).model_dump()["lora"]["rank"] == 4
    with pytest.raises(ValueError, match="lora: adapter settings need mode lora, not 'e2e'"):
        FinetuneConfig(lora=LoraConfig(rank=4))


def test_a_lora_config_changes_the_train_key(open_clip_spec, image_data, tmp_path):
    from conftest import run_config

    e2e = parse_config(run_config(open_clip_spec, image_data, tmp_path))
    raw = run_config(open_clip_spec, image_data, tmp_path)
    raw["finetune"] = {**raw["finetune"], "mode": "lora"}
    lora = parse_config(raw)
    raw["finetune"]["lora"] = {"rank": 2}
    assert len({e2e.train_key(), lora.train_key(), parse_config(raw).train_key()}) == 3


def test_no_lora_layers_without_peft_adapters(family):
    assert lora_layers(family[1]) == []
    assert set(finetuned_state(family[1])) == set(family[1].state_dict())


@pytest.mark.slow
def test_a_run_with_mode_lora_sweeps_the_scaled_adapter_and_exports(open_clip_spec, image_data, tmp_path):
    from conftest import run_config

    import wiseft
    from wiseft.heads import load_model
    from wiseft.io import load_state

    raw = run_config(open_clip_spec, image_data, tmp_path / "run", alphas=[0.0, 0.5, 1.0], select_alpha=0.5)
    raw["finetune"] = {**raw["finetune"], "mode": "lora", "lr": 1e-2, "lora": {"rank": 4}}
    result = wiseft.run(parse_config(raw), progress=False)
    sweep = [r for r in result.records if r.model == "finetuned"]
    assert {r.alpha for r in sweep} == {0.0, 0.5, 1.0}
    assert {r.provenance["mode"] for r in sweep} == {"lora"}
    assert {r.provenance["lora_mix"] for r in sweep} == {"scaled adapter"}
    theta_1 = load_state(tmp_path / "run" / "checkpoints" / "finetuned.safetensors")
    assert is_adapter_state(theta_1)  # the checkpoint holds the head and the factors, no weight copy
    zeroshot = build_zeroshot_model(load_backbone(open_clip_spec), CLASSES, raw["data"]["templates"], cache=False)
    expected = AdapterInterpolator(zeroshot.state_dict(), theta_1).merge(0.5)
    exported = load_state(result.export_dir / "model.safetensors")
    assert load_model(result.export_dir)[2]["alpha"] == 0.5
    for k in expected:  # the export is theta_0 + 0.5 B A, with the head mixed halfway
        torch.testing.assert_close(exported[k], expected[k], **TOL)


@pytest.mark.slow
def test_a_dora_run_says_its_sweep_mixed_the_merged_weights(open_clip_spec, image_data, tmp_path):
    from conftest import run_config

    import wiseft
    from wiseft.io import load_state

    raw = run_config(open_clip_spec, image_data, tmp_path / "run", alphas=[0.0, 0.5, 1.0], export=False)
    raw["finetune"] = {**raw["finetune"], "mode": "lora", "epochs": 1,
                       "lora": {"rank": 4, "use_dora": True, "target_modules": ["c_fc", "c_proj"]}}
    result = wiseft.run(parse_config(raw), progress=False)
    assert {r.provenance["lora_mix"] for r in result.records if r.model == "finetuned"} == {"merged weights"}
    theta_1 = load_state(tmp_path / "run" / "checkpoints" / "finetuned.safetensors")
    assert not is_adapter_state(theta_1) and not any(".lora_" in k for k in theta_1)
