"""CIFAR-10, -10.1, -10.2 and -100 from their published array and pickle files."""

import pickle

import numpy as np
import pytest

from wiseft.data import DataError, build_dataset
from wiseft.data.cifar import CIFAR10_CLASSES


def _images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def _batch(path, images, labels, key=b"labels"):
    flat = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
    with open(path, "wb") as f:
        pickle.dump({b"data": flat, key: list(labels), b"batch_label": b"x"}, f)


def test_cifar10_python_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    test = _images(3, 0)
    _batch(d / "test_batch", test, [1, 9, 0])
    for i in range(1, 6):
        _batch(d / f"data_batch_{i}", _images(2, i), [i, i])
    ds = build_dataset({"kind": "cifar10", "root": str(tmp_path)})
    assert ds.classnames == list(CIFAR10_CLASSES) and ds.labels == [1, 9, 0] and ds.templates == "openai_imagenet"
    img, y = ds[1]
    assert y == 9 and np.array_equal(np.asarray(img), test[1])
    train = build_dataset({"kind": "cifar10", "root": str(tmp_path), "split": "train"})
    assert train.labels == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]


def test_cifar100_fine_labels_and_names(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    _batch(d / "test", _images(2, 0), [3, 99], key=b"fine_labels")
    names = [f"class_{i}".encode() for i in range(100)]
    with open(d / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": names, b"coarse_label_names": []}, f)
    ds = build_dataset({"kind": "cifar100", "root": str(tmp_path)})
    # the reference implementation's names (torchvision's classes): the meta file's, underscores kept
    assert ds.labels == [3, 99] and ds.classnames[3] == "class_3" and len(ds.classnames) == 100


def test_cifar_pickle_with_objects_is_refused(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"data": DataError("not data"), b"labels": [0]}, f)
    with pytest.raises(DataError, match="not allowed"):
        build_dataset({"kind": "cifar10", "root": str(tmp_path)})


def test_cifar10_1_npy(tmp_path):
    d = tmp_path / "datasets"
    d.mkdir()
    x = _images(4, 1)
    np.save(d / "cifar10.1_v6_data.npy", x)
    np.save(d / "cifar10.1_v6_labels.npy", np.array([0, 1, 2, 3]))
    ds = build_dataset({"kind": "cifar10.1", "root": str(tmp_path)})
    assert ds.labels == [0, 1, 2, 3] and np.array_equal(np.asarray(ds[2][0]), x[2])


def test_cifar10_2_npz_and_bad_labels(tmp_path):
    x = _images(2, 2)
    np.savez(tmp_path / "cifar102_test.npz", images=x, labels=np.array([7, 4]))
    ds = build_dataset({"kind": "cifar10.2", "root": str(tmp_path)})
    assert ds.labels == [7, 4] and ds.name == "cifar10.2"
    np.savez(tmp_path / "cifar102_test.npz", images=x, labels=np.array([7, 10]))
    with pytest.raises(DataError, match="label 10"):
        build_dataset({"kind": "cifar10.2", "root": str(tmp_path)})
