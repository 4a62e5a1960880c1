"""``base_dir`` and ``source`` are set while a config is built, never written into it
afterwards, and stay out of its dump and hash (issue 14)."""

from pathlib import Path

import pytest
import yaml
from conftest import run_config

from wiseft.config import RunConfig, load_config, parse_config
from wiseft.pipeline.plan import quick_config

SPEC = {"family": "open_clip", "name": "tiny", "pretrained": "/weights/tiny.safetensors"}


def _raw() -> dict:
    return run_config(SPEC, Path("/data/images"), Path("/runs/colors"))


def test_base_dir_and_source_are_set_while_the_config_is_built():
    cfg = RunConfig.model_validate(_raw(), context={"base_dir": Path("/data"), "source": "x.yaml"})
    assert (cfg.base_dir, cfg.source) == ("/data", "x.yaml")
    assert parse_config(_raw(), base_dir="/data").base_dir == "/data" and parse_config(_raw()).base_dir is None
    with pytest.raises(AttributeError):
        cfg.base_dir = "/elsewhere"  # read-only: nothing is written into a built config
    assert quick_config(cfg).base_dir == "/data"  # copies keep it


def test_base_dir_stays_out_of_the_dump_and_the_hash():
    plain = parse_config(_raw())
    with_dir = RunConfig(**_raw(), base_dir="/data")  # the keyword of when it was a field still works
    assert with_dir.base_dir == "/data"
    assert with_dir.model_dump() == plain.model_dump() and "base_dir" not in with_dir.model_dump()
    assert (with_dir.config_hash(), with_dir.train_key()) == (plain.config_hash(), plain.train_key())


def test_load_config_resolves_against_the_files_folder(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_raw()))
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.base_dir, cfg.source) == (str(tmp_path.resolve()), str(tmp_path / "c.yaml"))
