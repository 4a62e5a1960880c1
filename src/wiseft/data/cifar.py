"""CIFAR-10, CIFAR-10.1, CIFAR-10.2 and CIFAR-100 from their published files.

The CIFAR "python version" batches are pickles; they are read with an unpickler that
admits only the numpy types those files contain, never arbitrary objects.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from wiseft.data.base import DataError, LabeledDataset, TrainOrTest, find_root, register_dataset

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR batch file")


def read_batch(path: Path) -> dict[str, object]:
    """A CIFAR python batch as a dict with str keys."""
    if not path.is_file():
        raise DataError(f"CIFAR batch file {path} does not exist")
    try:
        with path.open("rb") as f:
            d = _NumpyOnly(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise DataError(f"cannot read CIFAR batch {path}: {e}") from None
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in d.items()}


class ArrayImages:
    """Loads image i of an (N, H, W, 3) uint8 array as a PIL image (picklable, so
    loader workers can use it)."""

    def __init__(self, images: np.ndarray):
        self.images = images

    def __call__(self, i: int) -> Image.Image:
        return Image.fromarray(self.images[i])


# The paper's zero-shot prompts for the CIFAR sets are the 80 ImageNet ones (Appendix D.1:
# every dataset but FMoW, iWildCam, Cars, DTD and Food-101); CLIP's 18 CIFAR prompts stay
# available as the set 'cifar' (data.templates: cifar).
def array_dataset(images: np.ndarray, labels, classnames, name: str,
                  templates: str = "openai_imagenet") -> LabeledDataset:
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = [int(y) for y in np.asarray(labels).reshape(-1)]
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
        raise DataError(f"{name}: expected (N, H, W, 3) images and N labels, got {images.shape} and {len(labels)}")
    bad = [y for y in labels if not 0 <= y < len(classnames)]
    if bad:
        raise DataError(f"{name}: label {bad[0]} is outside the {len(classnames)} classes")
    return LabeledDataset([(i, y) for i, y in enumerate(labels)], classnames, load=ArrayImages(images),
                          name=name, templates=templates)


def _from_batches(files: list[Path], label_key: str) -> tuple[np.ndarray, list[int]]:
    xs, ys = [], []
    for f in files:
        d = read_batch(f)
        xs.append(np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys += list(d[label_key])
    return np.concatenate(xs), ys


@register_dataset("cifar10")
def cifar10(root: str | Path, split: TrainOrTest = "test", *, base_dir=None) -> LabeledDataset:
    """``cifar-10-batches-py/{data_batch_1..5,test_batch}``."""
    path = find_root(root, base_dir, "cifar-10-batches-py", what="cifar10")
    files = {"train": [path / f"data_batch_{i}" for i in range(1, 6)], "test": [path / "test_batch"]}[split]
    x, y = _from_batches(files, "labels")
    return array_dataset(x, y, CIFAR10_CLASSES, "cifar10")


@register_dataset("cifar100")
def cifar100(root: str | Path, split: TrainOrTest = "test", *, base_dir=None) -> LabeledDataset:
    """``cifar-100-python/{train,test,meta}`` with the 100 fine labels, named as the
    reference implementation names them (torchvision's ``classes``: the meta file's
    names, underscores kept, e.g. ``aquarium_fish``)."""
    path = find_root(root, base_dir, "cifar-100-python", what="cifar100")
    names = [n.decode() if isinstance(n, bytes) else n for n in read_batch(path / "meta")["fine_label_names"]]
    x, y = _from_batches([path / split], "fine_labels")
    return array_dataset(x, y, names, "cifar100")


@register_dataset("cifar10.1")
def cifar10_1(root: str | Path, version: str = "v6", *, base_dir=None) -> LabeledDataset:
    """CIFAR-10.1: ``cifar10.1_<version>_data.npy`` and ``cifar10.1_<version>_labels.npy``."""
    path = find_root(root, base_dir, "CIFAR-10.1/datasets", "datasets", what="cifar10.1")
    x = _npy(path / f"cifar10.1_{version}_data.npy")
    y = _npy(path / f"cifar10.1_{version}_labels.npy")
    return array_dataset(x, y, CIFAR10_CLASSES, "cifar10.1")


@register_dataset("cifar10.2")
def cifar10_2(root: str | Path, split: TrainOrTest = "test", *, base_dir=None) -> LabeledDataset:
    """CIFAR-10.2: ``cifar102_<split>.npz`` with ``images`` and ``labels``."""
    path = find_root(root, base_dir, "cifar-10.2", what="cifar10.2")
    file = path / f"cifar102_{split}.npz"
    if not file.is_file():
        raise DataError(f"cifar10.2: {file} does not exist")
    with np.load(file, allow_pickle=False) as d:
        missing = {"images", "labels"} - set(d.files)
        if missing:
            raise DataError(f"cifar10.2: {file} lacks arrays {sorted(missing)}")
        return array_dataset(d["images"], d["labels"], CIFAR10_CLASSES, "cifar10.2")


def _npy(file: Path) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"{file} does not exist")
    return np.load(file, allow_pickle=False)
