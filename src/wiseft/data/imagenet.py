"""ImageNet and its distribution shifts, in their published layouts.

Every shift is scored with a 1000-class ImageNet head: ImageNet-R and ImageNet-A keep
the logits of their 200 classes, ObjectNet takes, for each of its 113 classes, the
max over the logits of the ImageNet classes that map to it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Literal

from PIL import Image

from wiseft.data.base import DataError, LabeledDataset, Projection, find_root, register_dataset, resource
from wiseft.data.folders import IMAGE_EXTENSIONS, load_image


@lru_cache(maxsize=None)
def imagenet_classnames() -> tuple[str, ...]:
    """The 1000 ImageNet class names used in prompts, in class-index order."""
    return tuple(_lines(resource("imagenet_classnames.txt")))


@lru_cache(maxsize=None)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet WordNet ids; class index i is ``imagenet_wnids()[i]``."""
    return tuple(_lines(resource("imagenet_wnids.txt")))


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def class_folder_samples(root: Path, label_of: dict[str, int], *, what: str,
                         skip: frozenset[str] = frozenset()) -> list[tuple[str, int]]:
    """Images under ``root/<folder>/`` labelled through ``label_of``; a folder that is
    neither in ``label_of`` nor in ``skip`` is an error naming it."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = [f for f in folders if f not in label_of and f not in skip]
    if unknown:
        raise DataError(f"{what}: {len(unknown)} class folders in {root} match no class of the dataset, "
                        f"e.g. {unknown[:5]}")
    samples = [(str(p), label_of[f]) for f in folders if f in label_of
               for p in sorted((root / f).iterdir()) if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise DataError(f"{what}: no images under {root}")
    return samples


def _wnid_subset(name: str, wnids: list[str], root: Path, templates: str = "openai_imagenet") -> LabeledDataset:
    index = {w: i for i, w in enumerate(imagenet_wnids())}
    names = imagenet_classnames()
    samples = class_folder_samples(root, {w: i for i, w in enumerate(wnids)}, what=name)
    projection = None if len(wnids) == 1000 else Projection(tuple((index[w],) for w in wnids))
    return LabeledDataset(samples, [names[index[w]] for w in wnids], load=load_image, name=name,
                          projection=projection, templates=templates)


@register_dataset("imagenet")
def imagenet(root: str | Path, split: Literal["train", "val"] = "val", *, base_dir=None) -> LabeledDataset:
    """ILSVRC-2012: ``root/{train,val}/<wnid>/*.JPEG`` (val sorted into wnid folders, as
    the usual ``valprep.sh`` leaves it)."""
    path = find_root(root, base_dir, what="imagenet")
    if (path / split).is_dir():
        path = path / split
    return _wnid_subset("imagenet", list(imagenet_wnids()), path)


@register_dataset("imagenet-v2")
def imagenet_v2(root: str | Path, variant: str = "matched-frequency", *, base_dir=None) -> LabeledDataset:
    """ImageNetV2: ``imagenetv2-<variant>-format-val/<class index>/*.jpeg``."""
    path = find_root(root, base_dir, f"imagenetv2-{variant}-format-val", f"imagenetv2-{variant}",
                     what="imagenet-v2")
    samples = class_folder_samples(path, {str(i): i for i in range(1000)}, what="imagenet-v2")
    return LabeledDataset(samples, imagenet_classnames(), load=load_image, name="imagenet-v2",
                          templates="openai_imagenet")


@register_dataset("imagenet-sketch")
def imagenet_sketch(root: str | Path, *, base_dir=None) -> LabeledDataset:
    """ImageNet-Sketch: ``sketch/<wnid>/*.JPEG``, 1000 classes."""
    path = find_root(root, base_dir, "sketch", "imagenet-sketch/sketch", what="imagenet-sketch")
    return _wnid_subset("imagenet-sketch", list(imagenet_wnids()), path)


@register_dataset("imagenet-r")
def imagenet_r(root: str | Path, *, base_dir=None) -> LabeledDataset:
    """ImageNet-R: ``imagenet-r/<wnid>/*.jpg``, 200 ImageNet classes."""
    path = find_root(root, base_dir, "imagenet-r", what="imagenet-r")
    return _wnid_subset("imagenet-r", _lines(resource("imagenet_r_wnids.txt")), path)


@register_dataset("imagenet-a")
def imagenet_a(root: str | Path, *, base_dir=None) -> LabeledDataset:
    """ImageNet-A: ``imagenet-a/<wnid>/*.jpg``, 200 ImageNet classes."""
    path = find_root(root, base_dir, "imagenet-a", what="imagenet-a")
    return _wnid_subset("imagenet-a", _lines(resource("imagenet_a_wnids.txt")), path)


@lru_cache(maxsize=None)
def objectnet_classes() -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """(ObjectNet class, image folder, ImageNet class indices) for the 113 classes that
    overlap ImageNet, from the maps shipped with the reference implementation."""
    d = resource("objectnet")
    folder_of = {v: k for k, v in json.loads((d / "folder_to_objectnet_label.json").read_text()).items()}
    to_imagenet = json.loads((d / "objectnet_to_imagenet_1k.json").read_text())
    pytorch_of = {v: int(k) for k, v in json.loads((d / "pytorch_to_imagenet_2012_id.json").read_text()).items()}
    index_of_text = {t: pytorch_of[i] for i, t in enumerate(_lines(d / "imagenet_to_label_2012_v2"))}
    return tuple((name, folder_of[name], tuple(index_of_text[t] for t in texts.split("; ")))
                 for name, texts in to_imagenet.items())


def crop_border(image: Image.Image, px: int = 2) -> Image.Image:
    """Remove ObjectNet's red border: ``px`` pixels off every side, as the reference
    implementation does."""
    w, h = image.size
    return image.crop((px, px, w - px, h - px))


def _load_objectnet(path: str) -> Image.Image:
    return crop_border(load_image(path))


@register_dataset("objectnet")
def objectnet(root: str | Path, *, base_dir=None) -> LabeledDataset:
    """ObjectNet 1.0: ``objectnet-1.0/images/<folder>/*.png``; the 113 classes that
    overlap ImageNet are kept (the other 200 folders are skipped), each scored by the
    max over the logits of its ImageNet classes. Classes are in folder order and named
    in lower case, as the reference implementation has them."""
    path = find_root(root, base_dir, "objectnet-1.0/images", "images", what="objectnet")
    classes = sorted(objectnet_classes(), key=lambda c: c[1])
    all_folders = frozenset(json.loads((resource("objectnet") / "folder_to_objectnet_label.json").read_text()))
    samples = class_folder_samples(path, {f: i for i, (_, f, _) in enumerate(classes)}, what="objectnet",
                                   skip=all_folders)
    return LabeledDataset(samples, [c.lower() for c, _, _ in classes], load=_load_objectnet, name="objectnet",
                          projection=Projection(tuple(g for _, _, g in classes)), templates="openai_imagenet")
