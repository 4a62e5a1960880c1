"""Transfer-learning sets in their published layouts: DTD, Food-101, SUN397, Stanford Cars."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from wiseft.data.base import DataError, LabeledDataset, TrainOrTest, find_root, register_dataset
from wiseft.data.folders import load_image


def _list_file(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{what}: split file {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _from_list(entries: list[str], classes: list[str], images: Path, what: str, suffix: str = "",
               class_of=lambda e: e.split("/")[0]) -> list[tuple[str, int]]:
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for e in entries:
        c = class_of(e)
        if c not in index:
            raise DataError(f"{what}: entry {e!r} names class {c!r}, which is not in the class list")
        samples.append((str(images / (e.lstrip("/") + suffix)), index[c]))
    return samples


@register_dataset("dtd")
def dtd(root: str | Path, split: Literal["train", "val", "test"] = "test", fold: int = 1, *,
        base_dir=None) -> LabeledDataset:
    """DTD: ``dtd/images/<class>/*.jpg`` and ``dtd/labels/<split><fold>.txt``."""
    path = find_root(root, base_dir, "dtd", what="dtd")
    classes = sorted(p.name for p in (path / "images").iterdir() if p.is_dir()) if (path / "images").is_dir() else []
    if not classes:
        raise DataError(f"dtd: no class folders under {path / 'images'}")
    entries = _list_file(path / "labels" / f"{split}{fold}.txt", "dtd")
    samples = _from_list(entries, classes, path / "images", "dtd")
    return LabeledDataset(samples, [c.replace("_", " ") for c in classes], load=load_image, name="dtd",
                          templates="dtd")


@register_dataset("food101")
def food101(root: str | Path, split: TrainOrTest = "test", *, base_dir=None) -> LabeledDataset:
    """Food-101: ``food-101/images/<class>/<id>.jpg``, ``meta/{classes,train,test}.txt``."""
    path = find_root(root, base_dir, "food-101", what="food101")
    classes = _list_file(path / "meta" / "classes.txt", "food101")
    entries = _list_file(path / "meta" / f"{split}.txt", "food101")
    samples = _from_list(entries, classes, path / "images", "food101", suffix=".jpg")
    return LabeledDataset(samples, [c.replace("_", " ") for c in classes], load=load_image, name="food101",
                          templates="food101")


def sun397_name(category: str) -> str:
    """``/b/badminton_court/indoor`` -> ``badminton court indoor``: CLIP's published
    SUN397 class names (the parts in order, underscores as spaces)."""
    parts = category.strip("/").split("/")[1:]
    return " ".join(parts).replace("_", " ")


@register_dataset("sun397")
def sun397(root: str | Path, split: TrainOrTest = "test", partition: int = 1, *, base_dir=None) -> LabeledDataset:
    """SUN397: ``SUN397/<letter>/<class>[/<sub>]/sun_*.jpg`` with ``ClassName.txt`` and the
    ``Training_NN.txt``/``Testing_NN.txt`` partitions (in the root or ``Partitions/``)."""
    path = find_root(root, base_dir, "SUN397", what="sun397")
    parts = path / "Partitions" if (path / "Partitions").is_dir() else path
    classes = _list_file(parts / "ClassName.txt", "sun397")
    name = {"train": "Training", "test": "Testing"}[split]
    entries = _list_file(parts / f"{name}_{partition:02d}.txt", "sun397")
    samples = _from_list(entries, classes, path, "sun397", class_of=lambda e: e.rsplit("/", 1)[0])
    # the paper's prompts for SUN397 are the 80 ImageNet ones (Appendix D.1); CLIP's two
    # SUN397 prompts stay available as the set 'sun397'
    return LabeledDataset(samples, [sun397_name(c) for c in classes], load=load_image, name="sun397",
                          templates="openai_imagenet")


@register_dataset("stanford-cars")
def stanford_cars(root: str | Path, split: TrainOrTest = "test", *, base_dir=None) -> LabeledDataset:
    """Stanford Cars: ``devkit/cars_meta.mat``, ``devkit/cars_train_annos.mat``,
    ``cars_test_annos_withlabels.mat`` (root or devkit) and ``cars_{train,test}/*.jpg``.
    Reading .mat files needs scipy."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError("stanford-cars: reading the devkit's .mat files needs scipy (pip install scipy)") from None
    path = find_root(root, base_dir, "stanford_cars", what="stanford-cars")
    names = [str(n) for n in loadmat(_first(path, "devkit/cars_meta.mat"), squeeze_me=True)["class_names"]]
    annos_file = ("devkit/cars_train_annos.mat",) if split == "train" else (
        "cars_test_annos_withlabels.mat", "devkit/cars_test_annos_withlabels.mat")
    annos = loadmat(_first(path, *annos_file), squeeze_me=True)["annotations"]
    images = path / f"cars_{split}"
    samples = [(str(images / str(a["fname"])), int(a["class"]) - 1) for a in annos.reshape(-1)]
    return LabeledDataset(samples, names, load=load_image, name="stanford-cars", templates="stanford_cars")


def _first(root: Path, *names: str) -> Path:
    for n in names:
        if (root / n).is_file():
            return root / n
    raise DataError(f"stanford-cars: none of {list(names)} under {root}")
