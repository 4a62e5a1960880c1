"""Typed dataset specs (issue 14): a config's datasets are checked per kind against the
registered builder's signature, by the one check ``build_dataset`` uses too, and are
kept (and dumped) exactly as written."""

import copy
from pathlib import Path
from typing import Literal

import pytest
from conftest import run_config, write_image_folder

from wiseft.config import ConfigError, DatasetSpec, parse_config
from wiseft.data import DataError, build_dataset
from wiseft.data.base import DATASETS

SPEC = {"family": "open_clip", "name": "tiny", "pretrained": "/weights/tiny.safetensors"}


def _raw() -> dict:
    return run_config(SPEC, Path("/data/images"), Path("/runs/colors"))


def test_dataset_specs_are_typed_and_still_read_as_the_dicts_written():
    raw = _raw()
    before = copy.deepcopy(raw)
    data = parse_config(raw).data
    assert raw == before  # the input is not changed
    assert all(isinstance(s, DatasetSpec) for s in (data.train, data.test, *data.shifts.values()))
    subset = data.shifts["subset"]
    assert (subset.kind, subset.options, subset.subset, subset.class_map) == \
        ("image_folder", {"root": "/data/images/shift_subset"}, True, None)
    assert data.shifts["noise"].subset is False
    assert subset == raw["data"]["shifts"]["subset"] and dict(subset) == raw["data"]["shifts"]["subset"]
    assert (subset["kind"], subset.get("subset"), list(subset)) == ("image_folder", True, ["kind", "root", "subset"])


@pytest.fixture
def colours_kind(monkeypatch):
    """A user-registered kind with a constrained option and a typed one."""
    def colours(root: str, mode: Literal["light", "dark"] = "light", count: int = 3, *, base_dir=None):
        raise AssertionError("not built in these tests")

    DATASETS.names()  # the shipped kinds are loaded first
    monkeypatch.setitem(DATASETS._entries, "colours", colours)
    return "colours"


@pytest.mark.parametrize("options, message", [
    ({"mode": "dim"}, "data.shifts.noise.mode: Input should be 'light' or 'dark', got 'dim'"),
    ({"count": "3"}, "data.shifts.noise.count: Input should be a valid integer, got '3'"),
    ({"colour": "red"}, "data.shifts.noise.colour: unknown option 'colour' for dataset kind 'colours'; "
                        "allowed: root, mode, count"),
])
def test_a_user_registered_kind_is_checked_against_its_builder(colours_kind, options, message):
    raw = _raw()
    raw["data"]["shifts"]["noise"] = {"kind": "colours", "root": "c", **options}
    with pytest.raises(ConfigError, match=f"^config: {message}$"):
        parse_config(raw)
    with pytest.raises(DataError, match=f"^dataset 'noise' \\(colours\\): {message.split('noise.', 1)[1]}$"):
        build_dataset(raw["data"]["shifts"]["noise"], name="noise")
    raw["data"]["shifts"]["noise"] = {"kind": "colours", "root": "c", "mode": "dark", "count": 2}
    assert parse_config(raw).data.shifts["noise"].options == {"root": "c", "mode": "dark", "count": 2}


def test_build_dataset_checks_a_spec_as_a_config_does_before_reading_anything(tmp_path):
    with pytest.raises(DataError, match=r"^dataset 'cifar10': split: Input should be 'train' or 'test', got 'tran'$"):
        build_dataset({"kind": "cifar10", "root": str(tmp_path / "nowhere"), "split": "tran"})
    with pytest.raises(DataError, match=r"^dataset 'dtd': split: Input should be 'train', 'val' or 'test', "
                                        r"got 'tran'$"):
        build_dataset({"kind": "dtd", "root": str(tmp_path / "nowhere"), "split": "tran"})
    with pytest.raises(DataError, match=r"^dataset 'train' \(image_folder\): root: missing; dataset kind "
                                        r"'image_folder' needs option 'root'$"):
        build_dataset({"kind": "image_folder"}, name="train")
    with pytest.raises(DataError, match=r"^dataset: a dataset is a mapping with a 'kind' and its options, got 5$"):
        build_dataset(5)


def test_build_dataset_takes_paths_as_path_objects(tmp_path):
    write_image_folder(tmp_path / "imgs", 1, seed=0)
    (tmp_path / "names.txt").write_text("blue\ngreen\nred\n")
    ds = build_dataset({"kind": "image_folder", "root": tmp_path / "imgs", "classnames": tmp_path / "names.txt"})
    assert ds.classnames == ["blue", "green", "red"] and len(ds) == 3
