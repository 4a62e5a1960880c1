"""Image folders, manifests, held-out splits and class projection."""

import json

import pytest
import torch
from conftest import write_image_folder
from PIL import Image

from wiseft.data import DataError, build_dataset, build_projection, split_holdout


def test_image_folder_orders_classes_by_given_names(tmp_path):
    write_image_folder(tmp_path / "imgs", 2, seed=0)
    ds = build_dataset({"kind": "image_folder", "root": str(tmp_path / "imgs"),
                        "classnames": ["blue", "green", "red"]})
    assert ds.classnames == ["blue", "green", "red"]
    assert len(ds) == 6
    img, label = ds[0]
    assert img.mode == "RGB" and ds.classnames[label] == "blue"


def test_image_folder_maps_sorted_folders_to_names_in_order(tmp_path):
    write_image_folder(tmp_path / "imgs", 1, seed=0)
    (tmp_path / "names.txt").write_text("Blue things\nGreen things\nRed things\n")
    ds = build_dataset({"kind": "image_folder", "root": "imgs", "classnames": "names.txt"}, base_dir=tmp_path)
    assert ds.classnames == ["Blue things", "Green things", "Red things"]
    assert [ds.classnames[y] for _, y in ds.samples] == ["Blue things", "Green things", "Red things"]


def test_image_folder_errors_name_the_problem(tmp_path):
    write_image_folder(tmp_path / "imgs", 1, seed=0)
    with pytest.raises(DataError, match=r"3 class folders but 2 class names.*\['blue', 'green', 'red'\]"):
        build_dataset({"kind": "image_folder", "root": str(tmp_path / "imgs"), "classnames": ["cat", "dog"]})
    with pytest.raises(DataError, match="does not exist"):
        build_dataset({"kind": "image_folder", "root": str(tmp_path / "nope")})
    with pytest.raises(DataError, match=r"^dataset 'train' \(image_folder\): rooot: unknown option 'rooot' "
                                        r"for dataset kind 'image_folder'; did you mean 'root'\? "
                                        r"allowed: root, classnames$"):
        build_dataset({"kind": "image_folder", "rooot": "x"}, name="train")
    with pytest.raises(DataError, match=r"^dataset: kind: unknown dataset kind 'imagefolder'; did you mean "
                                        r"'image_folder'\? known: "):
        build_dataset({"kind": "imagefolder"})


def test_manifest_csv_and_jsonl(tmp_path):
    write_image_folder(tmp_path / "imgs", 2, seed=0)
    (tmp_path / "m.csv").write_text("path,label\nimgs/red/000.png,red\nimgs/blue/001.png,0\n")
    ds = build_dataset({"kind": "manifest", "path": str(tmp_path / "m.csv"), "classnames": ["blue", "red"]})
    assert [y for _, y in ds.samples] == [1, 0]
    assert ds[0][0].size == (40, 40)
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "hello", "label": "b"}) + "\n"
                                      + json.dumps({"text": "bye", "label": "a"}) + "\n")
    ds = build_dataset({"kind": "manifest", "path": str(tmp_path / "t.jsonl")})
    assert ds.classnames == ["a", "b"] and ds[0] == ("hello", 1)
    (tmp_path / "bad.csv").write_text("path,label\nimgs/red/000.png,purple\n")
    with pytest.raises(DataError, match="record 1: label 'purple'"):
        build_dataset({"kind": "manifest", "path": str(tmp_path / "bad.csv"), "classnames": ["blue", "red"]})
    (tmp_path / "nolabel.csv").write_text("file,y\na,b\n")
    with pytest.raises(DataError, match="need 'label'"):
        build_dataset({"kind": "manifest", "path": str(tmp_path / "nolabel.csv")})


def test_unreadable_image_names_the_file(tmp_path):
    write_image_folder(tmp_path / "imgs", 1, seed=0)
    bad = tmp_path / "imgs" / "red" / "broken.png"
    bad.write_bytes(b"not a png")
    ds = build_dataset({"kind": "image_folder", "root": str(tmp_path / "imgs")})
    i = next(i for i, (p, _) in enumerate(ds.samples) if p.endswith("broken.png"))
    with pytest.raises(DataError, match="broken.png"):
        ds[i]


def test_split_holdout_is_seeded_stratified_and_disjoint(tmp_path):
    write_image_folder(tmp_path / "imgs", 10, seed=0)
    ds = build_dataset({"kind": "image_folder", "root": str(tmp_path / "imgs")})
    train, val = split_holdout(ds, 0.2, seed=3)
    assert len(val) == 6 and len(train) == 24
    assert sorted(val.labels) == [0, 0, 1, 1, 2, 2]
    assert not {p for p, _ in train.samples} & {p for p, _ in val.samples}
    assert split_holdout(ds, 0.2, seed=3)[1].samples == val.samples
    assert split_holdout(ds, 0.2, seed=4)[1].samples != val.samples


def test_projection_subset_and_groups():
    ref = ["cat", "dog", "car", "truck", "bus"]
    p = build_projection(ref, ["car", "cat"])
    logits = torch.tensor([[0.0, 1.0, 5.0, 2.0, 3.0], [9.0, 0.0, 1.0, 0.0, 0.0]])
    assert p(logits).tolist() == [[5.0, 0.0], [1.0, 9.0]]
    g = build_projection(ref, ["animal", "vehicle"], {"animal": ["cat", "dog"], "vehicle": ["car", "truck", "bus"]})
    assert g(logits).tolist() == [[1.0, 5.0], [9.0, 1.0]]
    assert build_projection(ref, ref).is_identity
    with pytest.raises(DataError, match="'boat' maps to 'boat'"):
        build_projection(ref, ["boat"], name="shift")


def test_registries_list_every_kind():
    from wiseft import list_backbones, list_datasets

    assert {"image_folder", "manifest", "bbc_news", "imagenet", "objectnet", "cifar10", "fmow"} <= set(list_datasets())
    assert list_backbones() == ["hf_clip", "open_clip", "sentence_transformer"]


def test_class_names_given_as_a_tuple_are_a_list_as_given(tmp_path):
    # an image folder given its classes as a tuple (DatasetSpec lets a Sequence through)
    # read the tuple as a path before
    from wiseft.data import read_classnames
    from wiseft.data.folders import image_folder

    assert read_classnames(("b", "a")) == ["b", "a"]
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / c / "0.png")
    assert image_folder(tmp_path, ("b", "a")).classnames == ["b", "a"]
