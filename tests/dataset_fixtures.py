"""Writers for tiny dataset trees in each published layout (no downloads)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, color=(30, 40, 220), size=(12, 10), seed: int = 0) -> Path:
    """A small noisy image of ``color``; the format follows the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(color)[None, None] + rng.integers(-20, 21, (size[1], size[0], 3)), 0, 255)
    Image.fromarray(arr.astype(np.uint8)).save(path)
    return path


def write_tree(root: Path, files: dict[str, int], suffix: str = ".jpg") -> Path:
    """``{folder: count}`` -> root/folder/000.<suffix> ..."""
    for folder, n in files.items():
        for i in range(n):
            write_image(root / folder / f"{i:03d}{suffix}", seed=i)
    return root


def write_corrupt(root: Path) -> list[Path]:
    """A truncated JPEG and a text file with an image suffix."""
    good = write_image(root / "tmp_ok.jpg", size=(64, 64))
    data = good.read_bytes()
    good.unlink()
    bad1 = root / "truncated.jpg"
    bad1.write_bytes(data[: len(data) // 3])
    bad2 = root / "not_an_image.png"
    bad2.write_text("hello")
    return [bad1, bad2]


def write_csv(path: Path, rows: list[dict]) -> Path:
    """A CSV file with a header from the first row's keys (the WILDS metadata layouts)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path
