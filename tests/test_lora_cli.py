"""Adapters trained elsewhere (issue 16 item 3): ``wiseft interpolate BASE ADAPTER_DIR --alpha A
--out PATH`` takes a peft LoRA folder saved with peft's ``save_pretrained``; the merged export is
scored by ``wiseft evaluate``, and the ``--format peft`` export loads back with peft's own calls."""

import json

import pytest
import torch
import yaml
from conftest import run_config

from wiseft.backbones import load_backbone
from wiseft.cli import main
from wiseft.config import parse_config
from wiseft.heads import build_zeroshot_model, export_model, load_model
from wiseft.pipeline import prepare_data

peft = pytest.importorskip("peft")
Q = "vision_model.encoder.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def adapter(tiny_hf_clip_dir, tmp_path_factory):
    """A peft LoRA adapter on the whole tiny CLIPModel (both towers), its B set at random,
    saved with ``save_pretrained``; and the merged model peft itself makes of it."""
    from transformers import CLIPModel

    model = peft.get_peft_model(CLIPModel.from_pretrained(tiny_hf_clip_dir),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    path = tmp_path_factory.mktemp("adapter") / "lora"
    model.save_pretrained(path)
    return path, model.merge_and_unload().state_dict()


@pytest.fixture(scope="module")
def base(tiny_hf_clip_dir, image_data, tmp_path_factory):
    """(a wiseft zero-shot model dir of the tiny HF CLIP, the config whose sets score it)."""
    tmp = tmp_path_factory.mktemp("base")
    raw = run_config({"family": "hf_clip", "name": str(tiny_hf_clip_dir)}, image_data, tmp / "run")
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(raw))
    data = prepare_data(parse_config(raw))
    backbone = load_backbone(raw["backbone"])
    model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=False)
    export_model(model, backbone, {"classnames": data.classnames, "templates": list(data.templates), "alpha": 0.0},
                 tmp / "zeroshot")
    return tmp / "zeroshot", tmp / "cfg.yaml"


def test_interpolate_mixes_a_peft_adapter_and_evaluate_scores_it(adapter, base, tmp_path, tiny_hf_clip_dir):
    from transformers import CLIPModel

    adapter_dir, merged = adapter
    theta_0 = CLIPModel.from_pretrained(tiny_hf_clip_dir).state_dict()
    assert main(["interpolate", str(base[0]), str(adapter_dir), "--alpha", "0.3", "--out", str(tmp_path / "m")]) == 0
    model, _, meta = load_model(tmp_path / "m")
    assert meta["alpha"] == 0.3 and meta["parents"] == [str(base[0]), str(adapter_dir)]
    got = model.state_dict()
    # the vision tower's adapted weights are (1 - 0.3) theta_0 + 0.3 (peft's merge), to fp32 rounding
    for key in (Q, Q.replace("q_proj", "v_proj")):
        expected = torch.lerp(theta_0[key], merged[key], 0.3)
        torch.testing.assert_close(got["encoder." + key], expected, atol=1e-6, rtol=1e-5)
        assert (merged[key] - theta_0[key]).abs().max() > 0.1  # the adapter moves the weight
    k_proj = "encoder." + Q.replace("q_proj", "k_proj")
    assert torch.equal(got[k_proj], theta_0[k_proj[len("encoder."):]])  # not adapted: theta_0's
    assert main(["evaluate", str(tmp_path / "m"), str(base[1]), "--out", str(tmp_path / "r.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert {r["alpha"] for r in records} == {0.3}
    assert {r["dataset"] for r in records} >= {"colors", "noise", "subset"}


def test_the_peft_format_export_loads_back_with_peft_at_its_alpha(adapter, base, tmp_path, tiny_hf_clip_dir):
    from transformers import CLIPModel

    adapter_dir, merged = adapter
    out = tmp_path / "scaled"
    assert main(["interpolate", str(base[0]), str(adapter_dir), "--alpha", "0.3", "--format", "peft",
                 "--out", str(out)]) == 0
    assert json.loads((out / "wiseft.json").read_text())["alpha"] == 0.3
    base_model = CLIPModel.from_pretrained(tiny_hf_clip_dir)
    theta_0 = {k: v.clone() for k, v in base_model.state_dict().items()}
    loaded = peft.PeftModel.from_pretrained(base_model, out).merge_and_unload().state_dict()
    for key in (Q, Q.replace("vision_model", "text_model")):  # both towers, scaled alike
        torch.testing.assert_close(loaded[key], torch.lerp(theta_0[key], merged[key], 0.3), atol=1e-6, rtol=1e-5)


def test_an_adapter_with_no_module_of_the_base_is_refused(adapter, tmp_path, capsys):
    from safetensors.torch import save_file

    save_file({"unrelated.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    assert main(["interpolate", str(tmp_path / "other.safetensors"), str(adapter[0]), "--alpha", "0.5",
                 "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "does not fit the base model: adapted module 'text_model." in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("flag", [["--exclude", "head.*"], ["--dry-run"], ["--max-shard-size", "1GB"]])
def test_options_for_two_checkpoints_are_refused_with_an_adapter(adapter, base, tmp_path, capsys, flag):
    # they were silently ignored: an --exclude the user asked for did not happen
    assert main(["interpolate", str(base[1]), str(adapter[0]), "--alpha", "0.5", "--out", str(tmp_path / "x"),
                 *flag]) == 2
    assert f"is a peft LoRA adapter, scaled whole by alpha: {flag[0]} applies to two checkpoints" in \
        capsys.readouterr().err
    assert not (tmp_path / "x").exists()
