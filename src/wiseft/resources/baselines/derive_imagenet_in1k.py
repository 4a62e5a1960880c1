"""Derive ``imagenet_in1k.csv`` from the timm ``results/`` CSVs.

Run from the repository root:
    python src/wiseft/resources/baselines/derive_imagenet_in1k.py /path/to/timm/results

Keeps models whose weight tag (the part after the dot) names ImageNet-1k as their only
training data, joins the seven result files on (model, img_size), and writes one row
per model with accuracies in percent, as published. Not imported by wiseft.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

FILES = {
    "imagenet": "results-imagenet.csv",
    "imagenet-v2": "results-imagenetv2-matched-frequency.csv",
    "imagenet-sketch": "results-sketch.csv",
    "imagenet-r-clean": "results-imagenet-r-clean.csv",
    "imagenet-r": "results-imagenet-r.csv",
    "imagenet-a-clean": "results-imagenet-a-clean.csv",
    "imagenet-a": "results-imagenet-a.csv",
}

# Substrings of a weight tag that mean data beyond ImageNet-1k, or a teacher that saw it:
# larger label sets, web-scale or Instagram/JFT pretraining, and distillation.
EXCLUDE = (
    "in21k", "in22k", "in12k", "jft", "laion", "openai", "clip", "ig1b", "swag",
    "ssl", "swsl", "wsl", "webli", "dist", "yfcc", "m38m", "m30m", "seer", "teacher",
    "usi", "indomain",
)


def keep(model: str) -> bool:
    """True when the model's name and weight tag say it was trained on ImageNet-1k alone."""
    if "." not in model:
        return False
    tag = model.split(".", 1)[1]
    # The architecture name can say it too (hrnet_w18_ssld, deit_*_distilled_*).
    return "in1k" in tag and not any(word in model for word in EXCLUDE)


def read(path: Path) -> dict[tuple[str, str], str]:
    with path.open(newline="") as f:
        return {(r["model"], r["img_size"]): r["top1"] for r in csv.DictReader(f)}


def main(src: Path, out: Path) -> int:
    tables = {name: read(src / fname) for name, fname in FILES.items()}
    keys = sorted(k for k in tables["imagenet"] if keep(k[0]) and all(k in t for t in tables.values()))
    with out.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["model", "img_size", *FILES])
        for k in keys:
            w.writerow([*k, *(tables[name][k] for name in FILES)])
    print(f"wrote {len(keys)} models to {out}")
    return 0


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/work/shared/data/imagenet-baselines")
    sys.exit(main(src, Path(__file__).with_name("imagenet_in1k.csv")))
