"""ImageNet and its shifts: layouts, class subsets and projections against hand values."""

import numpy as np
import pytest
import torch
from dataset_fixtures import write_image, write_tree
from PIL import Image

from wiseft.data import DataError, build_dataset, build_projection
from wiseft.data.imagenet import imagenet_classnames, imagenet_wnids, objectnet_classes

W = imagenet_wnids()


def test_packaged_class_lists():
    assert len(W) == len(imagenet_classnames()) == 1000
    assert W[0] == "n01440764" and imagenet_classnames()[0] == "tench"
    assert len(objectnet_classes()) == 113


def test_imagenet_val_layout_and_unknown_folder(tmp_path):
    write_tree(tmp_path / "val", {W[0]: 2, W[2]: 1, W[999]: 1}, ".JPEG")
    ds = build_dataset({"kind": "imagenet", "root": str(tmp_path)})
    assert ds.name == "imagenet" and len(ds.classnames) == 1000 and ds.projection is None
    assert ds.labels == [0, 0, 2, 999]
    write_tree(tmp_path / "val", {"n99999999": 1})
    with pytest.raises(DataError, match="n99999999"):
        build_dataset({"kind": "imagenet", "root": str(tmp_path)})


def test_imagenet_v2_folders_are_class_indices(tmp_path):
    root = tmp_path / "imagenetv2-matched-frequency-format-val"
    write_tree(root, {"0": 1, "10": 1, "2": 1}, ".jpeg")
    ds = build_dataset({"kind": "imagenet-v2", "root": str(tmp_path)})
    assert sorted(ds.labels) == [0, 2, 10]
    assert {ds.samples[i][0].split("/")[-2]: y for i, (_, y) in enumerate(ds.samples)} == {"0": 0, "10": 10, "2": 2}


def test_imagenet_sketch_layout(tmp_path):
    write_tree(tmp_path / "sketch", {W[5]: 1, W[7]: 2}, ".JPEG")
    assert build_dataset({"kind": "imagenet-sketch", "root": str(tmp_path)}).labels == [5, 7, 7]


@pytest.mark.parametrize("kind,first,first_index", [
    ("imagenet-r", "n01443537", 1),  # goldfish
    ("imagenet-a", "n01498041", 6),  # stingray
])
def test_200_class_subsets_project_onto_their_imagenet_logits(tmp_path, kind, first, first_index):
    ds0 = build_dataset({"kind": kind, "root": str(write_tree(tmp_path / "x" / kind, {first: 1}))})
    assert len(ds0.classnames) == 200 and ds0.labels == [0]
    assert ds0.classnames[0] == imagenet_classnames()[first_index]
    assert ds0.projection.groups[0] == (first_index,)
    logits = torch.zeros(2, 1000)
    logits[0, first_index] = 5.0  # class 0 of the subset
    logits[1, 0] = 9.0  # tench: outside both subsets, so it must not win
    logits[1, first_index] = 1.0
    projected = ds0.project_logits(logits)
    assert projected.shape == (2, 200)
    assert projected.argmax(1).tolist() == [0, 0]
    assert projected[0, 0] == 5.0


def test_imagenet_r_folder_outside_the_subset_is_an_error(tmp_path):
    write_tree(tmp_path / "imagenet-r", {"n01440764": 1})  # tench is not in ImageNet-R
    with pytest.raises(DataError, match="n01440764"):
        build_dataset({"kind": "imagenet-r", "root": str(tmp_path)})


def _bordered(path, w=20, h=16):
    img = Image.new("RGB", (w, h), (255, 0, 0))
    img.paste(Image.new("RGB", (w - 4, h - 4), (0, 0, 255)), (2, 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def test_objectnet_layout_crop_and_max_projection(tmp_path):
    images = tmp_path / "objectnet-1.0" / "images"
    _bordered(images / "alarm_clock" / "a.png")
    _bordered(images / "banana" / "b.png")
    write_image(images / "air_freshener" / "c.png")  # an ObjectNet class with no ImageNet match: skipped
    ds = build_dataset({"kind": "objectnet", "root": str(tmp_path)})
    assert len(ds.classnames) == 113
    alarm, banana = ds.classnames.index("alarm clock"), ds.classnames.index("banana")
    assert sorted(ds.labels) == sorted([alarm, banana])
    img, _ = ds[0]
    assert img.size == (16, 12)
    assert {tuple(p) for p in np.asarray(img).reshape(-1, 3)} == {(0, 0, 255)}  # the red border is gone
    # hand values: Alarm clock <- analog clock (409), digital clock (530); Banana <- banana (954)
    assert ds.projection.groups[alarm] == (409, 530) and ds.projection.groups[banana] == (954,)
    logits = torch.full((2, 1000), -1.0)
    logits[0, 409], logits[0, 530], logits[0, 954] = 2.0, 7.0, 3.0
    logits[1, 954] = 4.0
    projected = ds.project_logits(logits)
    assert projected.shape == (2, 113)
    assert projected[0, alarm] == 7.0 and projected[0, banana] == 3.0
    assert projected.argmax(1).tolist() == [alarm, banana]


def test_objectnet_unknown_folder_named(tmp_path):
    write_tree(tmp_path / "images", {"banana": 1, "not_a_class": 1})
    with pytest.raises(DataError, match="not_a_class"):
        build_dataset({"kind": "objectnet", "root": str(tmp_path)})


def test_user_class_map_accepts_reference_indices():
    names = list(imagenet_classnames())
    p = build_projection(names, ["kitty", "fish"], {"kitty": [281, 282], "fish": "tench"})
    assert p.groups == ((281, 282), (0,))
    with pytest.raises(DataError, match="not a reference class"):
        build_projection(names, ["x"], {"x": 1000})
