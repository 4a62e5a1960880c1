"""Each backbone family: loads offline, embeds prompts, exports in its own format."""

import pytest
import torch
import yaml
from conftest import run_config

from wiseft import load_backbone, load_model, read_records, run, zeroshot_head
from wiseft.config import parse_config
from wiseft.heads import Classifier
from wiseft.io import load_state


def test_list_backbones():
    from wiseft import list_backbones

    assert list_backbones() == ["hf_clip", "open_clip", "sentence_transformer"]


def test_hf_clip_zeroshot_head_matches_get_text_features(tiny_hf_clip_dir):
    from transformers import CLIPModel, CLIPTokenizer

    bb = load_backbone({"family": "hf_clip", "name": str(tiny_hf_clip_dir)})
    assert bb.modality == "image"
    classes, templates = ["red", "blue"], ["a photo of a {}.", "{} art"]
    head = zeroshot_head(bb, classes, templates, cache=False)
    ref = CLIPModel.from_pretrained(tiny_hf_clip_dir).eval()
    tok = CLIPTokenizer.from_pretrained(tiny_hf_clip_dir)
    rows = []
    with torch.no_grad():
        for c in classes:
            out = ref.get_text_features(**tok([t.format(c) for t in templates], padding=True, return_tensors="pt"))
            e = out if isinstance(out, torch.Tensor) else out.pooler_output
            e = torch.nn.functional.normalize(e, dim=-1).mean(0)
            rows.append(e / e.norm())
    torch.testing.assert_close(head.weight, torch.stack(rows) * ref.logit_scale.exp(), atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = ref.get_image_features(pixel_values=x)
        ref_feats = out if isinstance(out, torch.Tensor) else out.pooler_output
        torch.testing.assert_close(bb.encoder(x), ref_feats)


def test_hf_siglip_head_encoder_and_export(tiny_hf_siglip_dir, tmp_path):
    from transformers import AutoTokenizer, SiglipModel

    bb = load_backbone({"family": "hf_clip", "name": str(tiny_hf_siglip_dir)})
    ref = SiglipModel.from_pretrained(tiny_hf_siglip_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_hf_siglip_dir)
    classes, templates = ["cat", "dog", "bird"], ["a photo of a {}."]
    head = zeroshot_head(bb, classes, templates, cache=False)
    with torch.no_grad():
        out = ref.get_text_features(**tok([templates[0].format(c) for c in classes], padding="max_length",
                                          max_length=16, return_tensors="pt"))
        e = torch.nn.functional.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1)
        torch.testing.assert_close(head.weight, e * ref.logit_scale.exp(), atol=1e-5, rtol=1e-5)
        x = torch.randn(2, 3, 32, 32)
        img = ref.get_image_features(pixel_values=x)
        torch.testing.assert_close(bb.encoder(x), img if isinstance(img, torch.Tensor) else img.pooler_output)
    assert bb.transform_eval(__import__("PIL.Image").Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    path = bb.export(tmp_path)
    again = SiglipModel.from_pretrained(path)
    assert torch.equal(again.vision_model.head.attention.in_proj_weight,
                       bb.encoder.vision_model.head.attention.in_proj_weight)


def test_hf_clip_run_and_export_loads_in_transformers(tiny_hf_clip_dir, image_data, tmp_path):
    from transformers import CLIPModel

    spec = {"family": "hf_clip", "name": str(tiny_hf_clip_dir)}
    cfg = parse_config(run_config(spec, image_data, tmp_path / "hf", alphas=[0.0, 0.5, 1.0], select_alpha=0.5,
                                  finetune={"batch_size": 12, "epochs": 1, "warmup_steps": 1, "lr": 1e-3}))
    result = run(cfg, progress=False)
    assert sorted({r.alpha for r in result.records}) == [0.0, 0.5, 1.0]
    model, bb, meta = load_model(result.export_dir)
    native = CLIPModel.from_pretrained(result.export_dir / meta["native"])
    for k, v in model.encoder.vision_model.state_dict().items():
        assert torch.equal(native.vision_model.state_dict()[k], v)
    # the export is the mix at the chosen alpha, 0.5: halfway between the zero-shot and the fine-tuned weights
    assert meta["alpha"] == 0.5
    zs = CLIPModel.from_pretrained(tiny_hf_clip_dir).vision_model.state_dict()
    tuned = load_state(result.run_dir / "checkpoints" / "finetuned.safetensors")
    k = "encoder.layers.0.mlp.fc1.weight"
    assert not torch.equal(tuned[f"encoder.vision_model.{k}"], zs[k])  # fine-tuning moved it
    torch.testing.assert_close(native.vision_model.state_dict()[k], (zs[k] + tuned[f"encoder.vision_model.{k}"]) / 2)
    # its model card: transformers' library, no Hub id for a local directory, the alpha the config fixed, and
    # transformers' own calls that load the folder (they do)
    from huggingface_hub import ModelCard
    from transformers import AutoProcessor

    card = ModelCard.load(result.export_dir / "README.md")
    assert (card.data.library_name, card.data.base_model) == ("transformers", None)
    assert "alpha = 0.5: fixed by the user." in card.text
    assert "Command: `wiseft.run(cfg)`" in card.text  # a RunConfig built in Python
    assert "transformers.AutoModel.from_pretrained('hf_model')" in card.text
    assert "transformers.AutoProcessor.from_pretrained('hf_model')" in card.text
    assert AutoProcessor.from_pretrained(result.export_dir / meta["native"]).image_processor is not None


def test_sentence_transformer_on_tiny_bert(tiny_bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    bb = load_backbone({"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16,
                        "logit_scale": 50.0})
    assert bb.modality == "text" and bb.logit_scale == 50.0
    head = zeroshot_head(bb, ["sports", "politics"], ["this news article is about {}."], cache=False)
    inputs, labels = bb.collate([("the match goal", 0), ("the election vote minister", 1)])
    clf = Classifier(bb.encoder, head).eval()
    with torch.no_grad():
        logits = clf(inputs)
    assert logits.shape == (2, 2) and labels.tolist() == [0, 1]
    ref = SentenceTransformer(str(tiny_bert_dir), device="cpu")
    emb = ref.encode(["the match goal"], convert_to_tensor=True)
    with torch.no_grad():
        torch.testing.assert_close(bb.encoder(bb.collate([("the match goal", 0)])[0]), emb, atol=1e-5, rtol=1e-4)
    path = bb.export(tmp_path)
    again = SentenceTransformer(str(path), device="cpu")
    torch.testing.assert_close(again.encode(["the match goal"], convert_to_tensor=True), emb, atol=1e-5, rtol=1e-4)


def test_text_pipeline_with_manifest(tiny_bert_dir, tmp_path):
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"), ("the phone software", "technology")]
    lines = ["text,label"] + [f"{t},{y}" for t, y in rows * 4]
    (tmp_path / "train.csv").write_text("\n".join(lines) + "\n")
    (tmp_path / "heads.csv").write_text("text,label\n" + "\n".join(f"{t.split()[-1]},{y}" for t, y in rows) + "\n")
    cfg = {
        "backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
        "data": {"name": "news", "templates": "news", "train": {"kind": "manifest", "path": "train.csv"},
                 "test": {"kind": "manifest", "path": "train.csv"},
                 "shifts": {"last-word": {"kind": "manifest", "path": "heads.csv"}},
                 "validation_fraction": 0.25},
        "finetune": {"batch_size": 8, "epochs": 2, "warmup_steps": 1, "lr": 1e-3},
        "alphas": [0.0, 0.5, 1.0],
        "output_dir": str(tmp_path / "run"),
        "device": "cpu",
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    from wiseft.cli import main

    assert main(["run", str(tmp_path / "cfg.yaml"), "--no-progress", "--no-report"]) == 0
    recs = read_records(tmp_path / "run")
    assert {r.dataset for r in recs} == {"news", "last-word", "news-val"}
    model, bb, meta = load_model(tmp_path / "run" / "export")
    assert bb.modality == "text" and meta["classnames"][0] == "business"
    from huggingface_hub import ModelCard

    card = ModelCard.load(tmp_path / "run" / "export" / "README.md")
    assert card.data.library_name == "sentence-transformers" and "text-classification" in card.data.tags
    assert "sentence_transformers.SentenceTransformer('sentence_transformer')" in card.text


def test_unknown_family_is_a_clear_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="family"):
        load_backbone({"family": "keras", "name": "x"})


def test_unloadable_models_are_clear_errors(tmp_path, capsys):
    from wiseft.backbones.base import BackboneError
    from wiseft.cli import main

    with pytest.raises(BackboneError, match="cannot load open_clip model 'ViT-Nope-99'"):
        load_backbone({"family": "open_clip", "name": "ViT-Nope-99"})
    with pytest.raises(BackboneError, match="cannot load hf_clip model"):
        load_backbone({"family": "hf_clip", "name": str(tmp_path / "no-such-dir")})
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "wiseft.json").write_text(
        '{"backbone": {"family": "open_clip", "name": "ViT-Nope-99"}, "native": "x.safetensors"}')
    assert main(["predict", str(tmp_path / "m"), "a.png"]) == 2
    assert "cannot load open_clip model 'ViT-Nope-99'" in capsys.readouterr().err
