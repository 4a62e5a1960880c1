"""A backbone family declares, where it is registered, the family-specific spec fields it
reads and the field an export's native model is loaded back through; nothing else
keeps a list of family names (issue 14)."""

from pathlib import Path

import pytest
from conftest import run_config

from wiseft.backbones import exported_spec, register_backbone
from wiseft.backbones.base import BACKBONES, BackboneSpec
from wiseft.config import ConfigError, parse_config

SPEC = {"family": "open_clip", "name": "tiny", "pretrained": "/weights/tiny.safetensors"}


def _raw() -> dict:
    return run_config(SPEC, Path("/data/images"), Path("/runs/colors"))


@pytest.fixture
def families(monkeypatch):
    """The backbone registry, with families registered by the test dropped afterwards."""
    BACKBONES.names()
    monkeypatch.setattr(BACKBONES, "_entries", dict(BACKBONES._entries))
    monkeypatch.setattr(BACKBONES, "_info", dict(BACKBONES._info))
    return BACKBONES


def test_a_family_reads_only_the_settings_it_declares(families):
    register_backbone("plain_clip", settings=())(lambda spec: None)
    register_backbone("gelu_clip", settings=("quick_gelu",))(lambda spec: None)
    register_backbone("any_clip")(lambda spec: None)  # declares nothing: reads every field, as before
    with pytest.raises(ValueError, match="quick_gelu is a gelu_clip or open_clip setting; family 'plain_clip' "
                                         "takes its activation from the model's own config"):
        BackboneSpec(family="plain_clip", name="m", quick_gelu=True)
    assert BackboneSpec(family="gelu_clip", name="m", quick_gelu=True).quick_gelu is True
    assert BackboneSpec(family="any_clip", name="m", quick_gelu=False).quick_gelu is False
    raw = _raw()
    raw["backbone"] = {"family": "plain_clip", "name": "m", "quick_gelu": False}
    with pytest.raises(ConfigError, match="^config: backbone: quick_gelu is a gelu_clip or open_clip setting"):
        parse_config(raw)


def test_an_export_is_loaded_back_through_the_field_its_family_declares(families):
    register_backbone("file_clip", export_field="pretrained")(lambda spec: None)
    meta = {"family": "file_clip", "name": "ViT-X", "pretrained": "tag"}
    assert exported_spec(meta, Path("/export/w.safetensors")) == \
        BackboneSpec(family="file_clip", name="ViT-X", pretrained="/export/w.safetensors")
    assert exported_spec({**SPEC}, "/export/open_clip_model.safetensors").pretrained == \
        "/export/open_clip_model.safetensors"
    assert exported_spec({"family": "hf_clip", "name": "org/model"}, "/export/hf_model").name == "/export/hf_model"
    with pytest.raises(ValueError, match="unknown backbone family 'gone'"):
        exported_spec({"family": "gone", "name": "m"}, "/export/x")


def test_registry_info_of_an_unknown_name_is_a_key_error():
    with pytest.raises(KeyError, match="unknown backbone family 'openclip'; did you mean 'open_clip'"):
        BACKBONES.info("openclip")
    info = BACKBONES.info("open_clip")
    assert {k: info[k] for k in ("settings", "export_field", "wraps")} == {
        "settings": ("quick_gelu",), "export_field": "pretrained", "wraps": "open_clip."}
    assert info["card"].library == "open_clip"  # what the model card of an export says (report.card)
