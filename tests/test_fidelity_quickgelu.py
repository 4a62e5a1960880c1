"""open_clip weights get the activation they were trained with (issue 12.1).

OpenAI's CLIP weights were trained with QuickGELU; open_clip 3.x builds ``ViT-B-32``
with GELU whatever the tag and only warns. The backbone takes the activation from the
tag's own config, accepts ``-quickgelu`` names, takes an explicit ``quick_gelu`` for
local files, and records the choice in an export so a reload builds the same model.
Nothing here downloads: tags are checked against open_clip's registry, and built
models are tiny configs loaded from local files.
"""

import json
import warnings

import pytest
import torch

open_clip = pytest.importorskip("open_clip")

from wiseft import load_backbone, load_model  # noqa: E402
from wiseft.backbones.base import BackboneSpec  # noqa: E402
from wiseft.backbones.open_clip_backbone import quick_gelu_kwargs, resolve_quick_gelu  # noqa: E402
from wiseft.heads import (
    Classifier,  # noqa: E402
    export_model,
)

TINY_QG = "wiseft-tiny-ViT-quickgelu"


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Every test here runs with open_clip's download functions refusing: the hub tags
    named below ('openai', 'laion2b_s34b_b79k') are looked up in open_clip's table only."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download weights: {args}")

    for name in ("download_pretrained", "download_pretrained_from_hf", "download_pretrained_from_url",
                 "hf_hub_download"):
        monkeypatch.setattr(open_clip.pretrained, name, refuse)
        if hasattr(open_clip.factory, name):
            monkeypatch.setattr(open_clip.factory, name, refuse)


def activations(model: torch.nn.Module) -> set[str]:
    """Class names of the MLP activations in both towers."""
    return {type(m).__name__ for name, m in model.named_modules() if name.endswith("mlp.gelu")}


def built_quick_gelu(name: str, kwargs: dict) -> bool:
    """What open_clip's config would say after create_model applies ``kwargs`` (its own
    rule: force_quick_gelu sets the flag, model kwargs override the config last)."""
    cfg = dict(open_clip.get_model_config(name) or {})
    if kwargs.get("force_quick_gelu"):
        cfg["quick_gelu"] = True
    if "quick_gelu" in kwargs:
        cfg["quick_gelu"] = kwargs["quick_gelu"]
    return bool(cfg.get("quick_gelu", False))


PAIRS = open_clip.list_pretrained()


def test_every_listed_tag_is_covered():
    assert len(PAIRS) > 50 and ("ViT-B-32", "openai") in PAIRS


@pytest.mark.parametrize("arch,tag", PAIRS, ids=[f"{a}/{t}" for a, t in PAIRS])
def test_activation_follows_each_pretrained_tag(arch, tag):
    expected = bool(open_clip.get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    spec = BackboneSpec(family="open_clip", name=arch, pretrained=tag)
    assert resolve_quick_gelu(spec) is expected
    if open_clip.get_model_config(arch) is not None:  # the model open_clip would build with our arguments
        assert built_quick_gelu(arch, quick_gelu_kwargs(arch, expected)) is expected


def test_openai_tags_are_quick_gelu_and_laion_tags_are_not():
    """Specs only: resolve_quick_gelu reads open_clip's own tag table in the installed
    package; no weights are loaded and nothing is downloaded."""
    assert resolve_quick_gelu(BackboneSpec(family="open_clip", name="ViT-B-32", pretrained="openai")) is True
    laion = BackboneSpec(family="open_clip", name="ViT-B-32", pretrained="laion2b_s34b_b79k")
    assert resolve_quick_gelu(laion) is False
    # a -quickgelu architecture with a local file: the architecture's own config
    assert resolve_quick_gelu(BackboneSpec(family="open_clip", name="ViT-B-32-quickgelu",
                                           pretrained="/nowhere/w.safetensors")) is True
    assert resolve_quick_gelu(BackboneSpec(family="open_clip", name="ViT-B-32", pretrained="/nowhere/w.pt")) is False
    # open_clip reads 'ViT-B/32' as 'ViT-B-32'; so does the activation lookup
    assert resolve_quick_gelu(BackboneSpec(family="open_clip", name="ViT-B/32", pretrained="openai")) is True
    # the explicit setting wins over the tag
    assert resolve_quick_gelu(BackboneSpec(family="open_clip", name="ViT-B-32", pretrained="openai",
                                           quick_gelu=False)) is False


def test_quick_gelu_is_an_open_clip_setting_and_unset_is_not_dumped():
    with pytest.raises(ValueError, match="quick_gelu is an open_clip setting"):
        BackboneSpec(family="hf_clip", name="x", quick_gelu=True)
    assert "quick_gelu" not in BackboneSpec(family="open_clip", name="ViT-B-32").model_dump()
    assert BackboneSpec(family="open_clip", name="ViT-B-32", quick_gelu=True).model_dump()["quick_gelu"] is True


@pytest.fixture
def tiny_quickgelu_name(tiny_open_clip_name, tmp_path):
    """The tiny config again under a ``-quickgelu`` name (its config says QuickGELU)."""
    from conftest import TINY_CONFIG

    (tmp_path / f"{TINY_QG}.json").write_text(json.dumps({**TINY_CONFIG, "quick_gelu": True}))
    open_clip.add_model_config(tmp_path)
    return TINY_QG


@pytest.fixture
def fake_openai_tag(tiny_open_clip_name, tiny_open_clip_checkpoint, monkeypatch):
    """A pretrained tag of the tiny model trained with QuickGELU, as open_clip lists
    OpenAI's; its 'download' is the local checkpoint."""
    import open_clip.factory
    import open_clip.pretrained

    cfg = {"url": "", "hf_hub": "", "quick_gelu": True, "mean": (0.48145466, 0.4578275, 0.40821073),
           "std": (0.26862954, 0.26130258, 0.27577711)}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, tiny_open_clip_name, {"fakeopenai": cfg})
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(tiny_open_clip_checkpoint))
    return "fakeopenai"


def test_a_quick_gelu_tag_builds_quick_gelu_without_warning(tiny_open_clip_name, fake_openai_tag):
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="QuickGELU mismatch")
        bb = load_backbone({"family": "open_clip", "name": tiny_open_clip_name, "pretrained": fake_openai_tag})
    assert activations(bb.extras["model"]) == {"QuickGELU"}
    assert bb.extras["quick_gelu"] is True


def test_local_checkpoint_with_and_without_the_override(open_clip_spec):
    plain = load_backbone(open_clip_spec)
    assert activations(plain.extras["model"]) == {"GELU"}
    quick = load_backbone({**open_clip_spec, "quick_gelu": True})
    assert activations(quick.extras["model"]) == {"QuickGELU"}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(plain.encoder(x), quick.encoder(x))  # same weights, other features


def test_quickgelu_architecture_names_and_turning_it_off(tiny_quickgelu_name, tiny_open_clip_checkpoint):
    spec = {"family": "open_clip", "name": tiny_quickgelu_name, "pretrained": str(tiny_open_clip_checkpoint)}
    assert activations(load_backbone(spec).extras["model"]) == {"QuickGELU"}
    assert activations(load_backbone({**spec, "quick_gelu": False}).extras["model"]) == {"GELU"}


def test_export_records_the_activation_and_reload_builds_it(tiny_open_clip_name, fake_openai_tag, tmp_path):
    from safetensors import safe_open

    bb = load_backbone({"family": "open_clip", "name": tiny_open_clip_name, "pretrained": fake_openai_tag})
    torch.manual_seed(0)
    model = Classifier(bb.encoder, torch.nn.Linear(16, 3))
    out = export_model(model, bb, {"classnames": ["a", "b", "c"]}, tmp_path / "export")
    meta = json.loads((out / "wiseft.json").read_text())
    assert meta["backbone"]["quick_gelu"] is True
    with safe_open(str(out / meta["native"]), framework="pt") as f:
        assert f.metadata()["quick_gelu"] == "true"
    again, bb2, _ = load_model(out)  # the tag is gone (a local file now); the recorded choice is used
    assert activations(bb2.extras["model"]) == {"QuickGELU"}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x))
