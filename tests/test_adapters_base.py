"""A peft adapter is checked against its base before it is used (issue 24 item 3): every
adapted module must be a weight of the base's architecture with B A's shape, mapped to the
very tensor the base mixes (never a text tower onto the image tower by a guessed prefix), no
two modules on one key; ``--format peft`` is checked the same way."""

import json

import pytest
import torch
from conftest import TINY_CONFIG
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

from wiseft.backbones import load_backbone
from wiseft.cli import main
from wiseft.heads import Classifier, export_model, load_model
from wiseft.merge import model_base, read_peft_adapter
from wiseft.merge.lora import AdapterError

peft = pytest.importorskip("peft")
open_clip = pytest.importorskip("open_clip")
ATTN = "transformer.resblocks.0.attn"


def _wide(name: str, tower: str, width: int) -> dict:
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg[tower]["width"] = width
    return cfg


@pytest.fixture(scope="module")
def other_models(tmp_path_factory, tiny_open_clip_name):
    """open_clip configs unlike the base: a wider image tower, and a wider text tower."""
    d = tmp_path_factory.mktemp("oc_cfgs")
    for name, tower in (("wiseft-wide-vision", "vision_cfg"), ("wiseft-wide-text", "text_cfg")):
        (d / f"{name}.json").write_text(json.dumps(_wide(name, tower, 48)))
    open_clip.add_model_config(d)
    return "wiseft-wide-vision", "wiseft-wide-text"


def make_adapter(model_name: str, targets: str, path):
    """A peft LoRA folder on ``targets`` of a random ``model_name``, B at random; and each
    weight's update (peft's merged weights minus the original)."""
    torch.manual_seed(2)
    original = open_clip.create_model(model_name, pretrained=None)
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model = peft.get_peft_model(original, peft.LoraConfig(r=2, lora_alpha=4, target_modules=targets))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    model.save_pretrained(path)
    return path, {k: v - before[k] for k, v in model.merge_and_unload().state_dict().items()}


@pytest.fixture(scope="module")
def base(open_clip_spec, tmp_path_factory):
    """A wiseft model directory of the tiny open_clip model (its image tower and a head)."""
    bb = load_backbone(open_clip_spec)
    model = Classifier(bb.encoder, torch.nn.Linear(16, 2))
    return export_model(model, bb, {"classnames": ["a", "b"], "templates": ["{}"], "alpha": 0.0},
                        tmp_path_factory.mktemp("base") / "zs")


TEXT_ONLY = r"transformer\.resblocks\.\d+\.attn"  # the text tower's blocks only (not visual.transformer...)


@pytest.mark.parametrize("fmt", ["merged", "peft"])
def test_a_text_tower_adapter_is_refused_not_applied_to_the_image_tower(base, other_models, tmp_path, capsys, fmt):
    # before: exit 0; 'transformer.x' was guessed to be 'encoder.transformer.x', the image tower
    adapter, _ = make_adapter(other_models[0], TEXT_ONLY, tmp_path / "text_lora")
    out = tmp_path / "out"
    assert main(["interpolate", str(base), str(adapter), "--alpha", "0.5", "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wiseft: error: {adapter}: adapted module 'transformer.resblocks.0.attn")
    assert "is a weight of the pretrained model but not of the model being mixed" in err
    assert not out.exists()


def test_an_adapter_of_another_width_is_refused_naming_the_module_and_shapes(base, other_models, tmp_path, capsys):
    adapter, _ = make_adapter(other_models[1], TEXT_ONLY, tmp_path / "wide_lora")
    assert main(["interpolate", str(base), str(adapter), "--alpha", "0.5", "--format", "peft",
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"{adapter} does not fit the base model: adapted module 'transformer.resblocks.0.attn" in err
    assert "another architecture or width" in err and "of CLIP is (32, 32)" in err
    assert not (tmp_path / "out").exists()


def test_both_towers_adapted_changes_the_image_tower_by_its_own_update_only(base, tiny_open_clip_name, tmp_path):
    adapter, delta = make_adapter(tiny_open_clip_name, ["attn"], tmp_path / "both")
    assert main(["interpolate", str(base), str(adapter), "--alpha", "0.5", "--out", str(tmp_path / "m")]) == 0
    zs, _, _ = load_model(base)
    got, theta_0 = load_model(tmp_path / "m")[0].state_dict(), zs.state_dict()
    for leaf in ("in_proj_weight", "out_proj.weight"):
        key = f"{ATTN}.{leaf}"
        assert delta["visual." + key].abs().max() > 0.1 and delta[key].abs().max() > 0.1  # both towers move
        expected = theta_0["encoder." + key] + 0.5 * delta["visual." + key]
        torch.testing.assert_close(got["encoder." + key], expected, atol=1e-6, rtol=1e-5)


def test_two_modules_on_one_weight_are_refused(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
            self.b.weight = self.a.weight

    model = Tied()
    peft.get_peft_model(Tied(), peft.LoraConfig(r=2, target_modules=["a", "b"])).save_pretrained(tmp_path / "tied")
    with pytest.raises(AdapterError, match=r"adapted modules 'a' and 'b' both map to '[ab].weight'"):
        read_peft_adapter(tmp_path / "tied", model_base(model, model))


# --- property: any set of adapted modules maps to the image tower's own keys, or is refused ----

@pytest.fixture(scope="module")
def clip(open_clip_spec, tmp_path_factory):
    """(the full CLIP, the classifier mixed, its modules with a weight, an adapter config to copy)."""
    bb = load_backbone(open_clip_spec)
    full, mixed = bb.extras["model"], Classifier(bb.encoder, torch.nn.Linear(16, 2))
    shapes = {}
    for name, m in full.named_modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            shapes[name] = tuple(m.in_proj_weight.shape)
        elif isinstance(m, torch.nn.Linear):
            shapes[name] = tuple(m.weight.shape)
    config = tmp_path_factory.mktemp("cfg")
    peft.LoraConfig(r=2, lora_alpha=2, target_modules=["x"]).save_pretrained(config)
    return full, mixed, shapes, json.loads((config / "adapter_config.json").read_text())


def _write(folder, config, modules: dict[str, tuple[int, int]], rank: int):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({**config, "r": rank, "lora_alpha": rank}))
    weights = {}
    for module, (out, inp) in modules.items():
        weights[f"base_model.model.{module}.lora_A.weight"] = torch.randn(rank, inp)
        weights[f"base_model.model.{module}.lora_B.weight"] = torch.randn(out, rank)
    save_file(weights, str(folder / "adapter_model.safetensors"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), rank=st.integers(1, 3))
def test_any_adapter_maps_each_module_to_its_own_tensor_or_is_refused(clip, tmp_path_factory, data, rank):
    full, mixed, shapes, config = clip
    chosen = data.draw(st.lists(st.sampled_from(sorted(shapes)), min_size=1, unique=True))
    bent = data.draw(st.sets(st.sampled_from(chosen)))  # modules given another width
    stray = data.draw(st.lists(st.sampled_from(["visual.nope", "head", "transformer.resblocks.9.attn"]), unique=True))
    modules = {m: (shapes[m][0] + (8 if m in bent else 0), shapes[m][1]) for m in chosen}
    modules.update({m: (4, 4) for m in stray})
    folder = tmp_path_factory.mktemp("adapter") / "a"
    _write(folder, config, modules, rank)
    try:
        state = read_peft_adapter(folder, model_base(full, mixed))
    except AdapterError as e:
        assert str(e).startswith(str(folder))
        assert bent or stray or not any(m.startswith("visual.") for m in chosen), str(e)
        return
    assert not bent and not stray
    leaf = {m: "in_proj_weight" if isinstance(full.get_submodule(m), torch.nn.MultiheadAttention) else "weight"
            for m in chosen}
    expected = {f"encoder.{m.removeprefix('visual.')}.{leaf[m]}" for m in chosen if m.startswith("visual.")}
    assert {k.rsplit(".lora_", 1)[0] for k in state} == expected  # the image tower's own keys, nothing else
    mixed_state = mixed.state_dict()
    for key in expected:
        assert (state[key + ".lora_B"].shape[0], state[key + ".lora_A"].shape[1]) == tuple(mixed_state[key].shape)
