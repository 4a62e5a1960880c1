"""User datasets: an image folder (one folder per class) and a CSV/JSONL manifest."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

from PIL import Image

from .base import DataError, LabeledDataset, read_classnames, register_dataset, resolve

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB; an unreadable file is an error naming it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


@register_dataset("image_folder")
def image_folder(root: str, classnames: Sequence[str] | str | None = None, *,
                 base_dir=None) -> LabeledDataset:
    """``root/<class folder>/<image>``. Without ``classnames`` the sorted folder names
    are the classes. With them, folders named after classes map by name; otherwise
    the sorted folders map to ``classnames`` in order and the counts must agree."""
    root_path = resolve(root, base_dir)
    if not root_path.is_dir():
        raise DataError(f"image folder {root_path} does not exist")
    folders = sorted(p.name for p in root_path.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"image folder {root_path} has no class folders")
    names = read_classnames(classnames, base_dir)
    if names is None:
        names = folders
    if set(folders) <= set(names):
        label_of = {f: names.index(f) for f in folders}
    elif len(folders) == len(names):
        label_of = {f: i for i, f in enumerate(folders)}
    else:
        unknown = sorted(set(folders) - set(names))
        raise DataError(f"image folder {root_path} has {len(folders)} class folders but {len(names)} "
                        f"class names, and folders {unknown[:5]} match no class name")
    samples = [(str(p), label_of[f]) for f in folders for p in sorted((root_path / f).iterdir())
               if p.suffix.lower() in IMAGE_EXTENSIONS]
    if not samples:
        raise DataError(f"image folder {root_path} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return LabeledDataset(samples, names, load=load_image, name=root_path.name)


@register_dataset("manifest")
def manifest(path: str, classnames: Sequence[str] | str | None = None, *, base_dir=None) -> LabeledDataset:
    """A CSV (with a header) or JSONL file of records with ``label`` and either ``path``
    (an image, relative to the manifest) or ``text``. Labels are class names, or
    integer indices into ``classnames``."""
    file = resolve(path, base_dir)
    if not file.is_file():
        raise DataError(f"manifest {file} does not exist")
    rows = _read_rows(file)
    if not rows:
        raise DataError(f"manifest {file} has no records")
    field = "path" if "path" in rows[0] else "text" if "text" in rows[0] else None
    if field is None or "label" not in rows[0]:
        raise DataError(f"manifest {file}: records need 'label' and 'path' or 'text'; got {sorted(rows[0])}")
    names = read_classnames(classnames, base_dir)
    if names is None:
        names = sorted({str(r["label"]) for r in rows})
    index = {c: i for i, c in enumerate(names)}
    samples = []
    for n, r in enumerate(rows, 1):
        label = str(r["label"]).strip()
        if label in index:
            y = index[label]
        elif label.lstrip("-").isdigit() and 0 <= int(label) < len(names):
            y = int(label)
        else:
            raise DataError(f"manifest {file}, record {n}: label {label!r} is not one of the "
                            f"{len(names)} class names nor an index into them")
        ref = str(resolve(r[field], file.parent)) if field == "path" else str(r[field])
        samples.append((ref, y))
    return LabeledDataset(samples, names, load=load_image if field == "path" else None, name=file.stem)


def _read_rows(file: Path) -> list[dict]:
    if file.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"manifest {file}, line {n}: not JSON ({e})") from None
        return rows
    with file.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))
