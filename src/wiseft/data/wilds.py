"""WILDS FMoW and iWildCam in the layout the ``wilds`` package downloads.

FMoW reports average and worst-region accuracy (worst-region first out of distribution,
average first in distribution, as the paper's tables); iWildCam macro-F1 and accuracy
over the classes present in the split (as WILDS scores them).
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Literal

import torch

from wiseft.core import Score, accuracy, macro_f1, worst_group_accuracy
from wiseft.data.base import DataError, LabeledDataset, find_root, register_dataset, resource
from wiseft.data.folders import load_image

FMOW_CATEGORIES = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture", "archaeological_site",
    "barn", "border_checkpoint", "burial_site", "car_dealership", "construction_site", "crop_field", "dam",
    "debris_or_rubble", "educational_institution", "electric_substation", "factory_or_powerplant",
    "fire_station", "flooded_road", "fountain", "gas_station", "golf_course", "ground_transportation_station",
    "helipad", "hospital", "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse",
    "military_facility", "multi-unit_residential", "nuclear_powerplant", "office_building",
    "oil_or_gas_facility", "park", "parking_lot_or_garage", "place_of_worship", "police_station", "port",
    "prison", "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility", "stadium",
    "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower", "tunnel_opening",
    "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)
FMOW_REGIONS = ("Africa", "Americas", "Oceania", "Asia", "Europe", "Other")
# WILDS splits: (rows of the metadata 'split' column, years kept), one per FmowSplit.
FmowSplit = Literal["train", "id_val", "id_test", "val", "test"]
FMOW_SPLITS = {"train": ("train", (0, 2013)), "id_val": ("val", (0, 2013)), "id_test": ("test", (0, 2013)),
               "val": ("val", (2013, 2016)), "test": ("test", (2016, 10000))}
# WILDS splits: values of the metadata 'split' column.
IWildCamSplit = Literal["train", "val", "test", "id_val", "id_test"]


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# The paper's FMoW headline per split (Table 6 and its appendix tables): plain accuracy in
# distribution (the ID column), worst-region accuracy out of distribution (the OOD column).
FMOW_OOD_SPLITS = ("val", "test")


class FMoW(LabeledDataset):
    """FMoW images with a region per image path; adds ``worst_region_acc``, the primary
    metric of the out-of-distribution splits (val, test); the in-distribution splits
    report plain accuracy (``top1``) first, as the paper's ID column does."""

    region_of: dict[str, int]
    split: str = "test"

    def metrics(self, logits, labels, index) -> dict[str, Score]:
        preds = logits.argmax(dim=1)
        groups = torch.as_tensor([self.region_of[self.samples[i][0]] for i in index.tolist()], dtype=torch.long)
        worst = worst_group_accuracy(preds, labels, groups, exclude=[FMOW_REGIONS.index("Other")])
        top1 = accuracy(preds, labels)
        # the first metric is the primary one, the paper's: tables, plots and alpha selection use it
        if self.split in FMOW_OOD_SPLITS:
            return {"worst_region_acc": worst, "top1": top1}
        return {"top1": top1, "worst_region_acc": worst}


@register_dataset("fmow")
def fmow(root: str | Path, split: FmowSplit = "test", *, base_dir=None) -> LabeledDataset:
    """``fmow_v1.1/{rgb_metadata.csv,country_code_mapping.csv,images/rgb_img_<row>.png}``;
    ``split`` is a WILDS split (train, id_val, id_test, val, test; val and test are
    the out-of-distribution years)."""
    path = find_root(root, base_dir, "fmow_v1.1", what="fmow")
    rows = _read_csv(path / "rgb_metadata.csv")
    region_of = {r["alpha-3"]: r["region"] for r in _read_csv(path / "country_code_mapping.csv")}
    column, (lo, hi) = FMOW_SPLITS[split]
    label = {c: i for i, c in enumerate(FMOW_CATEGORIES)}
    samples, regions = [], {}
    for n, r in enumerate(rows):  # image files are numbered by metadata row, 'seq' rows included
        if r["split"] != column or not lo <= int(r["timestamp"][:4]) < hi:
            continue
        if r["category"] not in label:
            raise DataError(f"fmow: {path / 'rgb_metadata.csv'} row {n + 2}: unknown category {r['category']!r}")
        file = str(path / "images" / f"rgb_img_{n}.png")
        samples.append((file, label[r["category"]]))
        region = region_of.get(r["country_code"], "Other")
        regions[file] = FMOW_REGIONS.index(region if region in FMOW_REGIONS else "Other")
    if not samples:
        raise DataError(f"fmow: no rows of split {split!r} in {path / 'rgb_metadata.csv'}")
    # the reference implementation's class names, underscores kept: its prompts use them as they are
    ds = FMoW(samples, list(FMOW_CATEGORIES), load=load_image, name="fmow", templates="fmow")
    ds.region_of, ds.split = regions, split
    return ds


def iwildcam_classnames() -> list[str]:
    """The 182 iWildCam class names in WILDS label order: the English names in lower
    case, as the reference implementation prompts with them (rows labelled 99999 are
    categories absent from the WILDS release)."""
    rows = [r for r in _read_csv(resource("iwildcam", "labels.csv")) if int(r["y"]) < 99999]
    return [r["english"].lower() for r in sorted(rows, key=lambda r: int(r["y"]))]


class IWildCam(LabeledDataset):
    """iWildCam; adds ``macro_f1`` over the classes present in the split."""

    def metrics(self, logits, labels, index) -> dict[str, Score]:
        preds = logits.argmax(dim=1)
        return {"macro_f1": macro_f1(preds, labels), "top1": accuracy(preds, labels)}  # macro-F1 is primary


@register_dataset("iwildcam")
def iwildcam(root: str | Path, split: IWildCamSplit = "test", *, base_dir=None) -> LabeledDataset:
    """``iwildcam_v2.0/{metadata.csv,train/<filename>}``; ``split`` is a WILDS split."""
    path = find_root(root, base_dir, "iwildcam_v2.0", what="iwildcam")
    names = iwildcam_classnames()
    samples = []
    for n, r in enumerate(_read_csv(path / "metadata.csv")):
        if r["split"] != split:
            continue
        y = int(r["y"])
        if not 0 <= y < len(names):
            raise DataError(f"iwildcam: {path / 'metadata.csv'} row {n + 2}: label {y} outside {len(names)} classes")
        samples.append((str(path / "train" / r["filename"]), y))
    if not samples:
        raise DataError(f"iwildcam: no rows of split {split!r} in {path / 'metadata.csv'}")
    return IWildCam(samples, names, load=load_image, name="iwildcam", templates="iwildcam")
