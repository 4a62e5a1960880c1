"""Generated image-caption and text-text pairs for the pair-data and retrieval tests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from conftest import COLORS, write_shard

write_pair_shard = write_shard  # an uncompressed tar of (member, bytes): the pair kinds read the same shards
from PIL import Image

SHADES = {"red": "crimson", "green": "grassy", "blue": "navy"}


def square(color: str, seed: int, size: int = 24) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.array(COLORS[color], dtype=np.int16) + rng.integers(-30, 31, size=(size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def write_pair_manifest(root: Path, per_color: int, seed: int, *, captions_per_image: int = 1,
                        name: str = "pairs.jsonl") -> Path:
    """Coloured squares under ``root/img`` and a JSONL manifest of (path, caption) records:
    ``a red square``, and for more captions per image ``a crimson image`` too."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for c in COLORS:
        for i in range(per_color):
            file = f"img/{c}-{seed}-{i}.png"
            square(c, seed * 1000 + i).save(root / file)
            for caption in [f"a {c} square", f"a {SHADES[c]} image"][:captions_per_image]:
                rows.append({"path": file, "caption": caption})
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / name


def write_text_pairs(path: Path) -> Path:
    """Text-text pairs: a short query and its longer document."""
    topics = {"sports": "the team scored a goal in the match", "business": "shares and profit in the market",
              "politics": "the minister won the election vote", "technology": "the phone software",
              "entertainment": "the film and music"}
    rows = [{"text": f"{t} news", "caption": f"this article is about {body}"} for t, body in topics.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


