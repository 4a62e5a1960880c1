"""A run's identity does not move when the config code does: the config hash, the train
keys and the YAML dump of fixed configs are pinned to the values the code gave before
the typed config tree (issue 14), so records and checkpoints of earlier runs still match.

Moved once on purpose: issue 22 made ``precision: auto`` the default of fine-tuning and
evaluation (it was fp32), so configs that leave precision out now dump ``auto``; a run
resolves it and its written config, hash and train keys hold what ran
(tests/test_precision.py). Configs that write their precision out kept their pins."""

import hashlib
from pathlib import Path

import pytest
from conftest import run_config

from wiseft.config import load_config, parse_config

ROOT = Path(__file__).resolve().parents[1]
SPEC = {"family": "open_clip", "name": "tiny", "pretrained": "/weights/tiny.safetensors"}


def _yaml_hash(cfg) -> str:
    return hashlib.sha256(cfg.to_yaml().encode()).hexdigest()[:16]


def _fixture_config() -> dict:
    """The tests' run config over fixed paths (validation reads no file)."""
    return run_config(SPEC, Path("/data/images"), Path("/runs/colors"))


def _every_kind_of_field() -> dict:
    """quick_gelu, a variant, alphas, a class_map and subset, max_unreadable and a
    dataset with every option written out."""
    raw = run_config({**SPEC, "quick_gelu": True}, Path("/data/images"), Path("/runs/colors"),
                     variants={"slow": {"lr": 1e-4}}, alphas=[0.0, 0.5, 1.0])
    raw["data"]["shifts"]["subset"]["class_map"] = {"green": "green", "blue": ["blue"]}
    raw["data"]["max_unreadable"] = 0.05
    raw["data"]["test"] = {"kind": "bbc_news", "split": "test", "view": "headline", "test_fraction": 0.25,
                           "seed": 3, "max_chars": 100}
    return raw


def test_the_fixture_config_keeps_its_hash_train_key_and_dump():
    cfg = parse_config(_fixture_config())
    assert (cfg.config_hash(), cfg.train_key(), _yaml_hash(cfg)) == \
        ("05bd2ec2af5643ad", "90099ede33c6d606", "d2be715f5087f83a")


def test_a_config_using_every_kind_of_field_keeps_its_hash_train_keys_and_dump():
    cfg = parse_config(_every_kind_of_field())
    assert (cfg.config_hash(), cfg.train_key(), cfg.train_key("slow"), _yaml_hash(cfg)) == \
        ("d4db7f227d47b1c8", "fa02bcee7da65b47", "5e55c280cce8b518", "de43a61189cea192")


def test_dataset_specs_dump_exactly_what_was_written():
    raw = _every_kind_of_field()
    data = parse_config(raw).model_dump(mode="json")["data"]
    assert (data["train"], data["test"], data["shifts"]) == \
        (raw["data"]["train"], raw["data"]["test"], raw["data"]["shifts"])
    assert [list(s) for s in data["shifts"].values()] == [["kind", "root"], ["kind", "root", "subset", "class_map"]]


@pytest.mark.parametrize("path, pinned", [
    ("examples/bbc_news.yaml", ("00d76f65c074db40", "16a422326b9784e1", "ed4a473204528d00")),  # issue 22
    ("examples/paper/vit_b16_paper.yaml", ("0c6d6d4b2d55dc24", "54b8c4e30a81bde4", "5265cab51305fb1f")),
    ("examples/paper/vit_b16_practical.yaml", ("8aad7252653a190f", "0bc330f2cb0f1064", "04815c14379d2469")),
    ("examples/paper/vit_b32_paper.yaml", ("bc7c1c6671f12e11", "98c38e910135a448", "8159e0c71bc98f43")),
    ("examples/paper/vit_b32_practical.yaml", ("90154ed5619f7ed4", "45cdf496aeba492e", "990aecb71fe30ac0")),
    ("examples/paper/vit_l14_336_paper.yaml", ("d287de2b6ad52265", "29a9d561332aa7d6", "06f168c719d4f362")),
    ("examples/paper/vit_l14_336_practical.yaml", ("9f5bf674ad58f84a", "1326533c643c8a18", "8c294bf6c3af0375")),
    ("examples/paper/vit_l14_paper.yaml", ("7acb0ea7710e1de2", "3138347e4b6b70e8", "c7f43886982f2061")),
    ("examples/paper/vit_l14_practical.yaml", ("3cf65cc159bcfbf6", "3a459b874bfecac2", "dc334f73d468828a")),
])
def test_the_shipped_configs_keep_their_hash_train_key_and_dump(path, pinned):
    cfg = load_config(ROOT / path)
    assert (cfg.config_hash(), cfg.train_key(), _yaml_hash(cfg)) == pinned


def test_alphas_per_pass_at_its_default_keeps_the_pins_and_otherwise_enters_the_hash_only():
    """``evaluation.alphas_per_pass`` changes how the sweep runs: at its default (1, written
    out or not) the pinned hash and dump stand; another value enters the config hash (its
    logits agree with one alpha at a time to float rounding, not bit for bit) and never
    the train key (training does not read it)."""
    pinned = ("05bd2ec2af5643ad", "90099ede33c6d606", "d2be715f5087f83a")
    raw = _fixture_config()
    cfg = parse_config({**raw, "evaluation": {**raw["evaluation"], "alphas_per_pass": 1}})
    assert (cfg.config_hash(), cfg.train_key(), _yaml_hash(cfg)) == pinned
    assert "alphas_per_pass" not in cfg.to_yaml()
    for value in (4, "auto"):
        other = parse_config({**raw, "evaluation": {**raw["evaluation"], "alphas_per_pass": value}})
        assert other.train_key() == pinned[1]
        assert other.config_hash() != pinned[0]
        assert other.model_dump(mode="json")["evaluation"]["alphas_per_pass"] == value
        assert parse_config(other.model_dump(mode="json")).config_hash() == other.config_hash()
