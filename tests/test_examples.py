"""The shipped example configs: every one validates; the paper's configs follow its protocol."""

from pathlib import Path

import pytest

from wiseft.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "examples" / "paper").glob("*.yaml"))


def test_there_is_a_paper_and_a_practical_config_per_model():
    names = {p.stem for p in PAPER}
    for model in ("vit_b32", "vit_b16", "vit_l14", "vit_l14_336"):
        assert {f"{model}_paper", f"{model}_practical"} <= names


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.stem)
def test_paper_configs_follow_the_protocol(path):
    open_clip = pytest.importorskip("open_clip")
    cfg = load_config(path)
    assert (cfg.backbone.family, cfg.backbone.pretrained) == ("open_clip", "openai")
    assert (cfg.backbone.name, "openai") in open_clip.list_pretrained()
    assert cfg.data.name == "imagenet" and cfg.data.templates == "openai_imagenet"
    assert list(cfg.data.shifts) == ["imagenet-v2", "imagenet-r", "imagenet-sketch", "objectnet", "imagenet-a"]
    assert [s["kind"] for s in cfg.data.shifts.values()] == list(cfg.data.shifts)
    ft = cfg.finetune
    assert (ft.mode, ft.lr, ft.weight_decay, ft.batch_size, ft.epochs, ft.warmup_steps, ft.grad_clip) == \
        ("e2e", 3e-5, 0.1, 512, 10, 500, 1.0)
    assert cfg.alphas == [round(0.1 * i, 1) for i in range(11)]
    if path.stem.endswith("_paper"):  # the full training split, alpha 0.5 reported
        assert cfg.data.validation_fraction == 0.0 and cfg.select_alpha == 0.5
    else:  # alpha chosen on held-out training data
        assert cfg.data.validation_fraction > 0 and cfg.select_alpha is None


def test_reproducing_doc_names_every_paper_config():
    doc = (ROOT / "docs" / "reproducing.md").read_text()
    for model in ("vit_b32", "vit_b16", "vit_l14", "vit_l14_336"):
        assert model in doc
    assert "| 86.8 | 76.9 |" in doc and "| 81.7 | 63.0 |" in doc  # every cell: tests/test_fidelity_paper.py
