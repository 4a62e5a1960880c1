"""Transfer sets in their published layouts: DTD, Food-101, SUN397, Stanford Cars."""

import numpy as np
import pytest
from dataset_fixtures import write_image

from wiseft.data import DataError, build_dataset


def test_dtd(tmp_path):
    root = tmp_path / "dtd"
    for c, f in [("banded", "banded_0001.jpg"), ("zigzagged", "zigzagged_0002.jpg")]:
        write_image(root / "images" / c / f)
    (root / "labels").mkdir()
    (root / "labels" / "test1.txt").write_text("zigzagged/zigzagged_0002.jpg\nbanded/banded_0001.jpg\n")
    ds = build_dataset({"kind": "dtd", "root": str(tmp_path)})
    assert ds.classnames == ["banded", "zigzagged"] and ds.labels == [1, 0] and ds.templates == "dtd"
    (root / "labels" / "test2.txt").write_text("woven/woven_0001.jpg\n")
    with pytest.raises(DataError, match="woven"):
        build_dataset({"kind": "dtd", "root": str(tmp_path), "fold": 2})


def test_food101(tmp_path):
    root = tmp_path / "food-101"
    write_image(root / "images" / "apple_pie" / "1.jpg")
    write_image(root / "images" / "baby_back_ribs" / "2.jpg")
    (root / "meta").mkdir()
    (root / "meta" / "classes.txt").write_text("apple_pie\nbaby_back_ribs\n")
    (root / "meta" / "test.txt").write_text("baby_back_ribs/2\napple_pie/1\n")
    ds = build_dataset({"kind": "food101", "root": str(tmp_path)})
    assert ds.classnames == ["apple pie", "baby back ribs"] and ds.labels == [1, 0]
    assert ds[0][0].size == (12, 10)


def test_sun397(tmp_path):
    root = tmp_path / "SUN397"
    write_image(root / "a" / "abbey" / "sun_a.jpg")
    write_image(root / "b" / "badminton_court" / "indoor" / "sun_b.jpg")
    (root / "ClassName.txt").write_text("/a/abbey\n/b/badminton_court/indoor\n")
    (root / "Testing_01.txt").write_text("/b/badminton_court/indoor/sun_b.jpg\n/a/abbey/sun_a.jpg\n")
    ds = build_dataset({"kind": "sun397", "root": str(tmp_path)})
    assert ds.classnames == ["abbey", "badminton court indoor"] and ds.labels == [1, 0]  # CLIP's names
    assert ds[1][0].size == (12, 10)


def test_stanford_cars(tmp_path):
    from scipy.io import savemat

    root = tmp_path / "stanford_cars"
    (root / "devkit").mkdir(parents=True)
    savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array(["AM General Hummer SUV 2000",
                                                                         "Acura RL Sedan 2012"], dtype=object)})
    annos = np.array([("00001.jpg", 2), ("00002.jpg", 1)], dtype=[("fname", object), ("class", np.uint8)])
    savemat(root / "cars_test_annos_withlabels.mat", {"annotations": annos})
    write_image(root / "cars_test" / "00001.jpg")
    write_image(root / "cars_test" / "00002.jpg")
    ds = build_dataset({"kind": "stanford-cars", "root": str(tmp_path)})
    assert ds.classnames == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"] and ds.labels == [1, 0]
    assert ds[0][0].size == (12, 10)
