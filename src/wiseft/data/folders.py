"""User datasets: an image folder (one folder per class) and a CSV/JSONL manifest."""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import IO, Sequence

import numpy as np
from PIL import Image

from wiseft.data.base import DataError, LabeledDataset, read_classnames, register_dataset, resolve

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}


DEFAULT_MAX_UNREADABLE = 0.01  # data.max_unreadable: the fraction of a set that may be skipped


class UnreadableImage(DataError):
    """An image file that cannot be decoded (damaged, truncated, not an image, or a
    decompression bomb); training and evaluation skip and count it."""


class TooManyUnreadable(DataError):
    """More of a set is unreadable than ``data.max_unreadable`` allows."""


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as 8-bit RGB: the one decoding policy of training, evaluation
    and ``wiseft predict``.

    - 16- and 32-bit integer greyscale (``I;16*``, ``I``, e.g. 16-bit PNGs) is read as
      16-bit and scaled to 8 bits (``v * 255 / 65535``, clipped), not clipped to white;
      float greyscale (``F``) is scaled by 255 when it lies in [0, 1], else clipped.
    - Transparency (``RGBA``, ``LA``, ``PA``, a palette with a transparent colour) is
      dropped: the colour channels are kept as they are, as the reference
      implementation's ``convert('RGB')`` keeps them (not composited on white).
    - Every other mode (``L``, ``1``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``)
      goes through PIL's own conversion to RGB.

    Any decoder failure, and any image over ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a
    decompression bomb, refused before it is decoded), raises :class:`UnreadableImage`
    naming the file."""
    return _decode(path, path)


def decode_image(data: bytes, name: object) -> Image.Image:
    """Decode an encoded image held in memory (a tar member) under :func:`load_image`'s
    policy; an :class:`UnreadableImage` names ``name``."""
    return _decode(io.BytesIO(data), name)


def _decode(source: str | Path | IO[bytes], name: object) -> Image.Image:
    """The one decoding: ``source`` opened by PIL and converted to RGB; a failure names ``name``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                return _to_rgb(im)
    except Exception as e:  # noqa: BLE001 - decoders raise many types (OSError, SyntaxError, struct.error, ...)
        raise UnreadableImage(f"cannot read image {name}: {type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im, dtype=np.float64)
        if mode == "F":
            a = a * 255.0 if np.nanmin(a, initial=0.0) >= 0.0 and np.nanmax(a, initial=0.0) <= 1.0 else a
        else:
            a = a * (255.0 / 65535.0)
        grey = np.clip(np.nan_to_num(np.rint(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if mode == "P" and "transparency" in im.info or mode == "PA":
        return im.convert("RGBA").convert("RGB")  # PIL warns when a palette's transparency is dropped directly
    if mode in ("La", "RGBa"):  # premultiplied alpha: undo it, then drop alpha
        return im.convert("RGBA" if mode == "RGBa" else "LA").convert("RGB")
    return im.convert("RGB")


def check_unreadable(unreadable: int, total: int, max_fraction: float | None, what: str, example: str = "") -> None:
    """Raise :class:`TooManyUnreadable` when more than ``max_fraction`` of the ``total``
    inputs of ``what`` could not be read (``example``: the first one, and why). A run
    sets the fraction on each dataset (``dataset.max_unreadable``, from
    ``data.max_unreadable``); None, a dataset's default outside a run, sets no limit."""
    if max_fraction is not None and total and unreadable > max_fraction * total:
        raise TooManyUnreadable(f"{what}: {unreadable} of {total} inputs ({unreadable / total:.1%}) are unreadable, "
                                f"more than data.max_unreadable = {max_fraction:g} allows; first: {example}")


@register_dataset("image_folder", declared_classes=True)
def image_folder(root: str | Path, classnames: Sequence[str] | str | Path | None = None, *,
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


@register_dataset("manifest", declared_classes=True)
def manifest(path: str | Path, classnames: Sequence[str] | str | Path | None = None, *,
             base_dir=None) -> LabeledDataset:
    """A CSV (with a header) or JSONL file of records with ``label`` and either ``path``
    (an image, relative to the manifest) or ``text``. Labels are class names, or
    integer indices into ``classnames``."""
    file, rows, field = read_manifest(path, base_dir, "manifest", "label")
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


def read_manifest(path: str | Path, base_dir, what: str, needed: str) -> tuple[Path, list[dict], str]:
    """A manifest's records, each holding ``needed`` (``label``, ``caption``) and either
    ``path`` (an image, relative to the manifest) or ``text``: (the file, its records, the
    input field). A missing or empty file, or records without those fields, is a DataError
    naming the file (``what``: the kind, as the message says it)."""
    file = resolve(path, base_dir)
    if not file.is_file():
        raise DataError(f"{what} {file} does not exist")
    rows = read_rows(file)
    if not rows:
        raise DataError(f"{what} {file} has no records")
    field = "path" if "path" in rows[0] else "text" if "text" in rows[0] else None
    if field is None or needed not in rows[0]:
        raise DataError(f"{what} {file}: records need {needed!r} and 'path' (an image) or 'text'; "
                        f"got {sorted(rows[0])}")
    return file, rows, field


def read_rows(file: Path) -> list[dict]:
    """The records of a manifest: JSON lines (``.jsonl``/``.json``) or a CSV with a header."""
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
