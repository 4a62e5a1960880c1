"""Derive ``imagenet_testbed.csv`` from the robustness testbed's ``robustness_top1s.csv``.

Run from the repository root:
    python src/wiseft/resources/baselines/derive_imagenet_testbed.py /path/to/robustness_top1s.csv

Keeps every model, renames the columns to wiseft's dataset and metric names (table
below), and keeps the accuracies in percent as published. wiseft fits its default
baseline on the rows whose ``model_type`` is ``STANDARD``. Not imported by wiseft.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

# testbed column -> wiseft column. Shift columns are named by dataset; the class-restricted
# ImageNet accuracies by the reference-set metric the evaluation writes for them.
COLUMNS = {
    "model": "model",
    "val": "imagenet",
    "imagenetv2-matched-frequency-format-val": "imagenet-v2",
    "imagenet-sketch": "imagenet-sketch",
    "imagenet-r": "imagenet-r",
    "imagenet-a": "imagenet-a",
    "objectnet-1.0-beta": "objectnet",
    "val-on-imagenet-r-classes": "top1_on_imagenet-r_classes",
    "val-on-imagenet-a-classes": "top1_on_imagenet-a_classes",
    "val-on-objectnet-classes": "top1_on_objectnet_classes",
    "model_type": "model_type",
}


def main(src: str, out: str = str(Path(__file__).with_name("imagenet_testbed.csv"))) -> None:
    with open(src, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(COLUMNS.values())
        for r in rows:
            w.writerow([r[c] for c in COLUMNS])


if __name__ == "__main__":
    main(*sys.argv[1:])
