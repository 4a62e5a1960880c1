"""Pair dataset kinds: pair_manifest (images or texts with captions) and webdataset_pairs."""

from __future__ import annotations

import json

import pytest
from pair_fixtures import png_bytes, square, write_pair_manifest, write_pair_shard, write_text_pairs
from PIL import Image

from wiseft.config import ConfigError, load_config
from wiseft.data import DataError, PairDataset, build_dataset
from wiseft.data.folders import UnreadableImage


def test_pair_manifest_images_relative_to_the_manifest(tmp_path):
    path = write_pair_manifest(tmp_path / "d", 2, seed=0)
    ds = build_dataset({"kind": "pair_manifest", "path": "d/pairs.jsonl"}, base_dir=tmp_path)
    assert isinstance(ds, PairDataset) and ds.modality == "image" and len(ds) == 6
    img, caption = ds[0]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and caption == "a red square"
    assert ds.samples[0][0] == str(path.parent / "img" / "red-0-0.png")


def test_pair_manifest_csv_text_queries(tmp_path):
    (tmp_path / "p.csv").write_text('text,caption\nsports news,"a match, a goal"\nfilm news,the film\n')
    ds = build_dataset({"kind": "pair_manifest", "path": "p.csv"}, base_dir=tmp_path)
    assert ds.modality == "text" and ds[0] == ("sports news", "a match, a goal")
    assert len(build_dataset({"kind": "pair_manifest", "path": str(write_text_pairs(tmp_path / "t.jsonl"))})) == 5


@pytest.mark.parametrize("rows, match", [
    ([{"path": "a.png", "label": "x"}], "need 'caption' and 'path'"),
    ([{"text": "q", "caption": "c"}, {"text": "q2", "caption": " "}], "record 2: no caption"),
    ([{"text": "q", "caption": "c"}, {"text": "", "caption": "d"}], "record 2: no 'text'"),
    ([], "has no records"),
])
def test_pair_manifest_errors_name_the_record(tmp_path, rows, match):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=match):
        build_dataset({"kind": "pair_manifest", "path": str(tmp_path / "m.jsonl")})
    with pytest.raises(DataError, match="does not exist"):
        build_dataset({"kind": "pair_manifest", "path": str(tmp_path / "none.jsonl")})


def test_pair_manifest_bad_images_decode_under_the_policy(tmp_path, monkeypatch):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    square("red", 0, size=64).save(tmp_path / "big.png")
    (tmp_path / "m.jsonl").write_text('{"path": "bad.png", "caption": "x"}\n{"path": "big.png", "caption": "y"}\n')
    ds = build_dataset({"kind": "pair_manifest", "path": str(tmp_path / "m.jsonl")})
    with pytest.raises(UnreadableImage, match="bad.png"):
        ds[0]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # a decompression bomb: refused, not decoded
    with pytest.raises(UnreadableImage, match="big.png"):
        ds[1]


def test_webdataset_pairs_txt_and_json_captions(tmp_path):
    members = [("s/0.png", png_bytes(square("red", 0))), ("s/0.txt", b"a red square"),
               ("s/1.png", png_bytes(square("blue", 1))), ("s/1.txt", b"a blue square"),
               ("s/2.png", png_bytes(square("green", 2)))]  # no caption: incomplete
    write_pair_shard(tmp_path / "cc-000000.tar", members)
    with pytest.raises(DataError, match="1 of 3 samples lack .*first: .*key 's/2' .no caption"):
        build_dataset({"kind": "webdataset_pairs", "urls": "cc-000000.tar"}, base_dir=tmp_path)
    ds = build_dataset({"kind": "webdataset_pairs", "urls": "cc-{000000..000000}.tar", "max_incomplete": 0.5},
                       base_dir=tmp_path)
    assert isinstance(ds, PairDataset) and ds.captions == ["a red square", "a blue square"]
    img, caption = ds[1]
    assert img.getpixel((0, 0))[2] > 150 and caption == "a blue square"
    write_pair_shard(tmp_path / "j.tar", [("0.jpg", png_bytes(square("red", 0))),
                                          ("0.json", json.dumps({"text": "a red one"}).encode())])
    ds = build_dataset({"kind": "webdataset_pairs", "urls": str(tmp_path / "j.tar"), "caption_key": "json",
                        "caption_field": "text"})
    assert ds.captions == ["a red one"]


def test_webdataset_pairs_damaged_member_is_unreadable(tmp_path):
    write_pair_shard(tmp_path / "d.tar", [("0.png", b"garbage"), ("0.txt", b"a caption")])
    ds = build_dataset({"kind": "webdataset_pairs", "urls": str(tmp_path / "d.tar")})
    with pytest.raises(UnreadableImage, match=r"d.tar\[0.png\]"):
        ds[0]


def test_config_checks_pair_kind_options(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "backbone: {family: open_clip, name: x}\n"
        "data: {train: {kind: pair_manifest, path: p.jsonl, captoin: x},\n"
        "       test: {kind: pair_manifest, path: p.jsonl}}\n")
    with pytest.raises(ConfigError, match="data.train.captoin: unknown option 'captoin' for dataset kind 'pair_manifest'"):
        load_config(tmp_path / "c.yaml")
