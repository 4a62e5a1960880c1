"""The ``webdataset`` kind (issue 17.3): WebDataset tar shards read map-style, with the
image folders' decoding and unreadable-file policy, a cached shard index, and a run
on shards that gives the records of the same images in folders."""

import io
import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import COLORS, run_config, write_image_folder, write_shard
from PIL import Image

from wiseft import run
from wiseft.config import parse_config
from wiseft.data import DataError, build_dataset, load_image
from wiseft.data.folders import TooManyUnreadable, UnreadableImage, image_folder
from wiseft.data.webdataset import (
    TarMember,
    expand_braces,
    index_cache_dir,
    index_shard,
    load_member,
    shard_paths,
    webdataset,
)
from wiseft.evaluation import build_input_cache
from wiseft.train import Stage, Trainer
from wiseft.train.engine import FinetuneConfig

SORTED = sorted(COLORS)  # an image folder's classes: its sorted folder names


def png(color=(200, 30, 30), size=(6, 5)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def shards_of_folder(folder: Path, out: Path, label_key: str = "cls") -> str:
    """The images of an image folder as shards ``out/<folder name>-00000N.tar``, one per
    class folder in sorted order (so the samples come in the folder's order); labels are
    sorted-class indices (``cls``) or class names (``txt``). Returns the brace pattern."""
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    for i, c in enumerate(classes):
        members = []
        for img in sorted((folder / c).iterdir()):
            key = f"{c}/{img.stem}"
            label = str(i) if label_key == "cls" else c
            members += [(f"{key}{img.suffix}", img.read_bytes()), (f"{key}.{label_key}", label.encode())]
        write_shard(out / f"{folder.name}-{i:06d}.tar", members)
    return str(out / f"{folder.name}-{{000000..{len(classes) - 1:06d}}}.tar")


# --- samples, labels, class names --------------------------------------------------------

def test_samples_labels_and_classnames_come_from_several_shards_in_order(tmp_path):
    folder = write_image_folder(tmp_path / "train", 2, seed=0)
    pattern = shards_of_folder(folder, tmp_path / "shards")
    ds = webdataset(pattern, SORTED)
    shard = [str(tmp_path / "shards" / f"train-00000{i}.tar") for i in range(3)]
    assert [str(r) for r, _ in ds.samples] == [f"{shard[i]}[{c}/{n:03d}.png]" for i, c in enumerate(SORTED)
                                               for n in range(2)]
    assert ds.labels == [0, 0, 1, 1, 2, 2] and ds.classnames == SORTED and ds.name == "train"
    folder_ds = image_folder(str(folder))
    assert ds.labels == folder_ds.labels and ds.classnames == folder_ds.classnames
    for (ref, _), (path, _) in zip(ds.samples, folder_ds.samples):
        assert np.array_equal(np.asarray(ds.load(ref)), np.asarray(load_image(path)))
    assert ds[0][0].mode == "RGB" and ds[5][1] == 2
    again = pickle.loads(pickle.dumps(ds))  # as DataLoader workers receive it
    assert np.array_equal(np.asarray(again[5][0]), np.asarray(ds[5][0])) and again.samples == ds.samples


def test_txt_labels_are_class_names_sorted_without_classnames(tmp_path):
    pattern = shards_of_folder(write_image_folder(tmp_path / "train", 1, seed=0), tmp_path / "s", label_key="txt")
    ds = webdataset(pattern, label_key="txt")
    assert ds.classnames == SORTED and ds.labels == [0, 1, 2]
    given = webdataset(pattern, ["red", "green", "blue"], label_key="txt")
    assert given.classnames == ["red", "green", "blue"] and given.labels == [2, 1, 0]


def test_json_labels_read_a_field_holding_a_name_or_an_index(tmp_path):
    write_shard(tmp_path / "s.tar", [("a.jpg", png()), ("a.json", b'{"label": "cat", "y": 1}'),
                                     ("b.jpg", png()), ("b.json", b'{"label": "dog", "y": 0}')])
    assert webdataset(str(tmp_path / "s.tar"), label_key="json").labels == [0, 1]
    by_index = webdataset(str(tmp_path / "s.tar"), ["dog", "cat"], label_key="json", label_field="y")
    assert by_index.labels == [1, 0] and by_index.classnames == ["dog", "cat"]
    with pytest.raises(DataError, match=r"s.tar, key 'a': labels \(json\) are class indices; give classnames"):
        webdataset(str(tmp_path / "s.tar"), label_key="json", label_field="y")


def test_classnames_from_a_file_and_image_keys_in_order_of_preference(tmp_path):
    write_shard(tmp_path / "s.tar", [("k.webp", png((9, 9, 9))), ("k.png", png((1, 2, 3))), ("k.cls", b"1\n")])
    (tmp_path / "names.txt").write_text("a\nb\n")
    ds = webdataset("s.tar", "names.txt", image_keys=["WEBP", "png"], base_dir=tmp_path)
    assert ds.classnames == ["a", "b"] and ds.labels == [1]
    assert ds.samples[0][0].name == "k.webp" and ds.load(ds.samples[0][0]).getpixel((0, 0)) == (9, 9, 9)
    assert webdataset("s.tar", "names.txt", base_dir=tmp_path).samples[0][0].name == "k.png"  # jpg, jpeg, png, webp


def test_build_dataset_resolves_relative_shards_against_base_dir(tmp_path):
    pattern = shards_of_folder(write_image_folder(tmp_path / "test", 1, seed=0), tmp_path / "data")
    ds = build_dataset({"kind": "webdataset", "urls": "data/test-{000000..000002}.tar", "classnames": SORTED},
                       name="test", base_dir=tmp_path)
    assert ds.name == "test" and ds.labels == [0, 1, 2]
    assert [r.shard for r, _ in ds.samples] == expand_braces(pattern)


# --- naming shards -----------------------------------------------------------------------

def test_brace_expansion_as_webdataset_does_it():
    assert expand_braces("shards/train-{000000..000003}.tar") == [f"shards/train-00000{i}.tar" for i in range(4)]
    assert expand_braces("{a,b}-{1..2}") == ["a-1", "a-2", "b-1", "b-2"]
    assert expand_braces("x{0..10..5}") == ["x0", "x5", "x10"]
    assert expand_braces("{08..10}") == ["08", "09", "10"]
    assert expand_braces("{3..1}") == ["3", "2", "1"]
    assert expand_braces("{a,{b,c}}d") == ["ad", "bd", "cd"]
    assert expand_braces("plain{x}.tar") == ["plain{x}.tar"]
    assert expand_braces("no-braces.tar") == ["no-braces.tar"]


def test_urls_as_a_folder_a_list_a_glob_or_joined_patterns_name_the_same_shards(tmp_path):
    shards_of_folder(write_image_folder(tmp_path / "train", 1, seed=0), tmp_path / "shards")
    (tmp_path / "shards" / "notes.txt").write_text("not a shard")
    expected = [tmp_path / "shards" / f"train-00000{i}.tar" for i in range(3)]
    assert shard_paths("shards", tmp_path) == expected
    assert shard_paths("shards/train-{000000..000002}.tar", tmp_path) == expected
    assert shard_paths("shards/train-*.tar", tmp_path) == expected
    assert shard_paths("shards/train-000000.tar::shards/train-{000001..000002}.tar", tmp_path) == expected
    assert shard_paths(["shards/train-000002.tar", str(expected[0])], tmp_path) == [expected[2], expected[0]]


def test_shards_that_match_nothing_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    write_shard(tmp_path / "s-0.tar", [("a.png", png()), ("a.cls", b"0")])
    with pytest.raises(DataError, match=r"no shard matches 'empty': folder .*empty holds no .tar files"):
        shard_paths("empty", tmp_path)
    with pytest.raises(DataError, match=r"1 of the 2 shards urls names are not files .*first: .*s-1.tar$"):
        shard_paths("s-{0..1}.tar", tmp_path)
    with pytest.raises(DataError, match=r"no shard matches 'x-\*.tar'"):
        shard_paths("x-*.tar", tmp_path)
    with pytest.raises(DataError, match="urls is empty"):
        shard_paths([], tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, not a tar" * 64, None])
def test_a_shard_that_is_not_a_tar_is_named(tmp_path, content):
    import gzip

    bad = tmp_path / "bad.tar"
    if content is None:  # a gzipped tar: no random access
        write_shard(tmp_path / "ok.tar", [("a.png", png()), ("a.cls", b"0")])
        content = gzip.compress((tmp_path / "ok.tar").read_bytes())
    bad.write_bytes(content)
    with pytest.raises(DataError, match=rf"webdataset shard {bad} is not a readable uncompressed tar file"):
        webdataset(str(bad), ["a"])


# --- bad samples ---------------------------------------------------------------------

def _with_incomplete(tmp_path) -> str:
    """8 samples, a key without a label, one without an image, and names that are no sample (no key)."""
    members = [(f"k{i}.png", png()) for i in range(8)] + [(f"k{i}.cls", b"0") for i in range(8)]
    write_shard(tmp_path / "s-0.tar", members + [("nolabel.png", png()), ("noimage.cls", b"0"), ("README", b"x"),
                                                ("._k0.png", b"macOS metadata"), ("k0/.hidden.png", b"x")])
    return str(tmp_path / "s-0.tar")


def test_samples_without_an_image_or_a_label_are_skipped_counted_then_an_error(tmp_path, caplog):
    shard = _with_incomplete(tmp_path)
    with caplog.at_level(logging.WARNING, logger="wiseft"):
        ds = webdataset(shard, ["a"], max_incomplete=0.2)
    assert [r.name for r, _ in ds.samples] == [f"k{i}.png" for i in range(8)]
    assert "2 of 10 samples lack an image (jpg, jpeg, png, webp) and a label (cls)" in caplog.text
    with pytest.raises(DataError, match=rf"2 of 10 samples \(20.0%\) lack an image .*more than max_incomplete = 0.01 "
                                        rf"allows; first: webdataset shard {shard}, key 'nolabel' \(no label; members: "
                                        r"png\)"):
        webdataset(shard, ["a"])


def test_a_json_label_without_its_field_counts_as_no_label(tmp_path):
    write_shard(tmp_path / "s.tar", [("a.jpg", png()), ("a.json", b'{"label": "cat"}'),
                                     ("b.jpg", png()), ("b.json", b'{"caption": "a dog"}')])
    with pytest.raises(DataError, match=r"1 of 2 samples .*key 'b' \(no label; members: jpg, json\)"):
        webdataset(str(tmp_path / "s.tar"), label_key="json")
    assert webdataset(str(tmp_path / "s.tar"), label_key="json", max_incomplete=0.5).classnames == ["cat"]


@pytest.mark.parametrize("label, names, message", [
    (b"3", ["a", "b", "c"], r"key 'k': label 3 is out of range for the 3 class names \(0..2\)"),
    (b"-1", ["a"], r"key 'k': label -1 is out of range for the 1 class names"),
    (b"cat", ["a"], r"key 'k': the .cls member holds 'cat', not an integer class index"),
    (b"0", None, r"key 'k': labels \(cls\) are class indices; give classnames"),
])
def test_bad_cls_labels_are_named(tmp_path, label, names, message):
    write_shard(tmp_path / "s.tar", [("k.png", png()), ("k.cls", label)])
    with pytest.raises(DataError, match=rf"webdataset shard {tmp_path / 's.tar'}, {message}"):
        webdataset(str(tmp_path / "s.tar"), names)


def test_bad_txt_and_json_labels_and_options_are_named(tmp_path):
    write_shard(tmp_path / "s.tar", [("k.png", png()), ("k.txt", b"cat"), ("k.json", b"[1]")])
    with pytest.raises(DataError, match=r"key 'k': label 'cat' is not one of the 2 class names"):
        webdataset(str(tmp_path / "s.tar"), ["dog", "bird"], label_key="txt")
    with pytest.raises(DataError, match=r"key 'k': the .json member is not an object, got '\[1\]'"):
        webdataset(str(tmp_path / "s.tar"), label_key="json")
    with pytest.raises(DataError, match=r"label_field is read only with label_key: json \(label_key is 'txt'\)"):
        webdataset(str(tmp_path / "s.tar"), label_key="txt", label_field="y")
    with pytest.raises(DataError, match=r"image_keys must name image extensions"):
        webdataset(str(tmp_path / "s.tar"), label_key="txt", image_keys=[])
    with pytest.raises(DataError, match=r"dataset 'data.test' \(webdataset\): label_key: Input should be 'cls', "
                                        r"'txt' or 'json', got 'csv'"):
        build_dataset({"kind": "webdataset", "urls": "s.tar", "label_key": "csv"}, name="data.test")


def test_a_member_given_twice_is_named(tmp_path):
    write_shard(tmp_path / "s.tar", [("k.png", png()), ("k.cls", b"0"), ("k.png", png())])
    with pytest.raises(DataError, match=r"s.tar holds member 'k.png' twice"):
        webdataset(str(tmp_path / "s.tar"), ["a"])
    write_shard(tmp_path / "t.tar", [("k.png", png()), ("k.cls", b"0"), ("k.PNG", png())])
    with pytest.raises(DataError, match=r"t.tar: key 'k' has two 'png' members \('k.png' and 'k.PNG'\)"):
        webdataset(str(tmp_path / "t.tar"), ["a"])


# --- unreadable images: the image folders' policy ------------------------------------------

def _pixels(img):
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.uint8).copy()).permute(2, 0, 1)


def _shards_with_a_corrupt_image(tmp_path) -> tuple[str, Path]:
    folder = write_image_folder(tmp_path / "imgs", 4, seed=0)
    (folder / "red" / "zz_bad0.png").write_bytes(b"broken")
    return shards_of_folder(folder, tmp_path / "shards"), folder


def test_an_unreadable_image_is_named_by_its_shard_and_member(tmp_path):
    pattern, _ = _shards_with_a_corrupt_image(tmp_path)
    ds = webdataset(pattern, SORTED)
    bad = next(r for r, _ in ds.samples if r.name == "red/zz_bad0.png")
    with pytest.raises(UnreadableImage, match=r"cannot read image .*imgs-000002.tar\[red/zz_bad0.png\]: "):
        ds.load(bad)
    truncated = TarMember(bad.shard, "red/000.png", (tmp_path / "shards" / "imgs-000002.tar").stat().st_size - 10, 50)
    with pytest.raises(UnreadableImage, match=r"the shard ends after 10 of its 50 bytes"):
        load_member(truncated)


def test_evaluation_skips_and_counts_unreadable_images_as_for_folders(tmp_path):
    pattern, folder = _shards_with_a_corrupt_image(tmp_path)
    ds, folder_ds = webdataset(pattern, SORTED), image_folder(str(folder))
    backbone = SimpleNamespace(transform_eval=_pixels, collate=None)
    ds.max_unreadable = folder_ds.max_unreadable = 0.5
    cache, folder_cache = (build_input_cache(d, backbone, progress=False) for d in (ds, folder_ds))
    assert len(cache.skipped) == 1 and "imgs-000002.tar[red/zz_bad0.png]: UnreadableImage" in cache.skipped[0]
    assert torch.equal(cache.data, folder_cache.data) and torch.equal(cache.labels, folder_cache.labels)
    assert torch.equal(cache.index, folder_cache.index)
    ds.max_unreadable = 0.01
    with pytest.raises(TooManyUnreadable, match=r"evaluation set .* 1 of 13 inputs .*max_unreadable.*zz_bad0"):
        build_input_cache(ds, backbone, progress=False)


def test_training_skips_and_counts_unreadable_images_as_for_folders(tmp_path):
    class Pixels(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, len(COLORS))

        def forward(self, x):
            return self.fc(x.float().mean(dim=(2, 3)) / 255)

    def collate(batch):
        xs, ys = zip(*batch)
        return torch.stack(xs), torch.tensor(ys)

    pattern, _ = _shards_with_a_corrupt_image(tmp_path)
    ds = webdataset(pattern, SORTED).with_transform(_pixels)
    ds.max_unreadable = 0.5
    cfg = FinetuneConfig(lr=1e-2, batch_size=4, epochs=2, warmup_steps=0)
    trainer = Trainer(Pixels(), ds, collate, cfg, Stage("e2e", 2, 1e-2), progress=False)
    trainer.fit()
    assert len(trainer.unreadable) == 1 and "[red/zz_bad0.png]" in next(iter(trainer.unreadable.values()))


# --- the shard index -------------------------------------------------------------------

def test_the_index_is_cached_by_size_and_mtime_and_nothing_is_written_beside_the_data(tmp_path, monkeypatch):
    import wiseft.data.webdataset as wds

    shard = write_shard(tmp_path / "data" / "s.tar", [("a.png", png()), ("a.cls", b"0")])
    first = index_shard(shard)
    assert first.members == {"a.png": (512, len(png())), "a.cls": (first.members["a.cls"][0], 1)}
    assert first.texts == {"a.cls": "0"}
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["s.tar"]
    (cached,) = index_cache_dir().glob("s-*.json")
    assert json.loads(cached.read_text())["size"] == shard.stat().st_size

    scans = []
    real_scan = wds._scan
    monkeypatch.setattr(wds, "_scan", lambda p: scans.append(p) or real_scan(p))
    assert index_shard(shard) == first and scans == []  # read from the cache
    write_shard(shard, [("a.png", png()), ("a.cls", b"0"), ("b.png", png()), ("b.cls", b"0")])
    assert sorted(index_shard(shard).members) == ["a.cls", "a.png", "b.cls", "b.png"] and scans == [shard]


def test_an_edited_index_is_rebuilt_not_trusted(tmp_path, caplog):
    """Issue 24.8: a cached index carries a checksum of its content; one whose stamp still
    matches but whose members were changed (or that has no checksum) is rebuilt."""
    shard = write_shard(tmp_path / "s.tar", [("a.png", png()), ("a.cls", b"0")])
    first = index_shard(shard)
    (cached,) = index_cache_dir().glob("s-*.json")
    index = json.loads(cached.read_text())
    assert len(index["sha256"]) == 64
    index["members"][0][1] += 7  # a wrong offset, well-formed
    cached.write_text(json.dumps(index))
    with caplog.at_level(logging.WARNING, logger="wiseft"):
        assert index_shard(shard) == first
    assert "does not match its checksum" in caplog.text
    assert index_shard(shard) == first


def test_an_unwritable_cache_folder_keeps_the_index_in_memory(tmp_path, monkeypatch, caplog):
    write_shard(tmp_path / "s.tar", [("a.png", png()), ("a.cls", b"0")])
    (tmp_path / "cache").write_text("a file where the cache folder would be")
    monkeypatch.setenv("WISEFT_CACHE", str(tmp_path / "cache"))
    with caplog.at_level(logging.WARNING, logger="wiseft"):
        assert webdataset(str(tmp_path / "s.tar"), ["a"]).labels == [0]
    assert "cannot cache the index of" in caplog.text and "it is rebuilt next time" in caplog.text


# --- end to end --------------------------------------------------------------------------

@pytest.mark.slow  # two tiny runs
def test_a_run_on_shards_gives_the_records_of_the_same_images_in_folders(open_clip_spec, image_data, tmp_path):
    train = shards_of_folder(image_data / "train", tmp_path / "shards", label_key="txt")
    test = shards_of_folder(image_data / "test", tmp_path / "shards")
    small = dict(export=False, alphas=[0.0, 0.5, 1.0],
                 finetune={"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1})
    folders = run_config(open_clip_spec, image_data, tmp_path / "folders", **small)
    shards = run_config(open_clip_spec, image_data, tmp_path / "shards_run", **small)
    shards["data"] = {**shards["data"], "train": {"kind": "webdataset", "urls": train, "label_key": "txt"},
                      "test": {"kind": "webdataset", "urls": test, "classnames": SORTED}}
    results = [run(parse_config(c), progress=False).records for c in (folders, shards)]
    scores = [{(r.model, r.alpha, r.dataset, r.metric): (r.value, r.correct, r.total) for r in rs} for rs in results]
    assert len(scores[0]) >= 12 and {k[2] for k in scores[0]} >= {"colors", "noise", "subset"}
    assert scores[1] == scores[0]
