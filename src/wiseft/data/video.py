"""ImageNet-Vid-Robust and YTBB-Robust (Shankar et al. 2021): video frames scored
with an ImageNet head projected onto the video classes (max over the mapped
ImageNet logits), reported as pm-0 (anchor frames; the primary metric, the one the
paper's Table 6 and Fig. 9 report and the reference prints first) and pm-10 (an anchor
counts only if it and every reviewed frame within 10 of it are right).
ImageNet-Vid-Robust labels every frame, and each frame is scored against its own labels;
YTBB-Robust labels the anchors, and a neighbour is scored against its anchor's labels
(as the reference implementation, mlfoundations/wise-ft ``src/datasets``, scores both).
The projection is the dataset's ``projection``, so a sweep also records the ImageNet
accuracy on the video classes (``top1_on_<set>_classes``, the x axis of Fig. 9, as the
reference's ``ImageNetVidRobustValClasses``/``YTBBRobustValClasses`` score it)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from wiseft.core import Score, pm_k_accuracy
from wiseft.data.base import DataError, LabeledDataset, Projection, find_root, register_dataset, resource
from wiseft.data.folders import load_image
from wiseft.data.imagenet import imagenet_wnids

PMK_PROBLEMS = {"dissimilar", "problematic", "incorrect", "dont know", "deformation", "background-change",
                "occlusion-increased", "blur-increase", "bad-anchor"}


def frame_key(path: str | Path) -> str:
    """``<folder>/<file>``: how annotations name a frame."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}"


class VideoRobust(LabeledDataset):
    """Frames with, per anchor frame, its label set and its pm-k neighbour frames, and
    each frame's own label set where the set labels every frame. A sample's label is
    the smallest of its labels (for display only: the metrics use the label sets)."""

    anchors: dict[str, tuple[frozenset[int], tuple[str, ...]]]
    frame_labels: dict[str, frozenset[int]]  # frame key -> its own labels ({} : anchors' labels)
    key_of: dict[str, str]  # image path -> frame key

    def project_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if logits.shape[1] == len(self.classnames):  # already in the video classes
            return logits
        return super().project_logits(logits)

    def metrics(self, logits, labels, index) -> dict[str, Score]:
        preds = logits.argmax(dim=1).tolist()
        pred_by_key = {self.key_of[self.samples[i][0]]: p for i, p in zip(index.tolist(), preds)}
        pm0 = pm_k_accuracy(pred_by_key, {a: (ls, ()) for a, (ls, _) in self.anchors.items()}, self.frame_labels)
        # pm-0 first: the primary metric, the paper's (Table 6, Fig. 9); top1 = pm-0
        return {"pm0": pm0, "top1": pm0, "pm10": pm_k_accuracy(pred_by_key, self.anchors, self.frame_labels)}


def _video_dataset(name: str, root: Path, anchors, classnames, groups,
                   frame_labels: dict[str, frozenset[int]] | None = None) -> VideoRobust:
    frame_labels = frame_labels or {}
    wanted = {a: min(frame_labels.get(a, ls)) for a, (ls, _) in anchors.items()}
    for a, (ls, nbrs) in anchors.items():
        for k in nbrs:
            wanted.setdefault(k, min(frame_labels.get(k, ls)))
    samples = [(str(root / k), y) for k, y in sorted(wanted.items())]
    missing = [s for s, _ in samples if not Path(s).is_file()]
    if len(missing) == len(samples):
        raise DataError(f"{name}: none of the {len(samples)} annotated frames are under {root} "
                        f"(e.g. {missing[0] if missing else '?'})")
    # groups: the ImageNet classes of each video class (empty for YTBB 'none': never predicted)
    ds = VideoRobust(samples, classnames, load=load_image, name=name, templates="openai_imagenet",
                     projection=Projection(groups))
    ds.anchors, ds.frame_labels = anchors, frame_labels
    ds.key_of = {str(root / k): k for k in wanted}
    return ds


def _labels_json(path: Path) -> tuple[list[dict], list[str]]:
    if not path.is_file():
        raise DataError(f"{path} does not exist")
    d = json.loads(path.read_text(encoding="utf-8"))
    return d["annotations"], d["labels"]


def _neighbour(anchor: str, offset: int) -> str:
    folder, name = anchor.split("/")
    return f"{folder}/frame-{int(name.split('-')[1].split('.')[0]) + offset}.jpg"


@register_dataset("ytbb-robust")
def ytbb_robust(root: str | Path, k: int = 10, *, base_dir=None) -> LabeledDataset:
    """``ytbb-robust/{ytbb_videos/<video>_<ms>/frame-<i>.jpg, metadata/pmk_labels.json}``;
    the anchor annotations and class maps ship with wiseft."""
    path = find_root(root, base_dir, "ytbb-robust", what="ytbb-robust")
    meta = resource("ytbb-robust")
    index = {int(i): n for i, n in json.loads((meta / "ytbb_class_index.json").read_text()).items()}
    classnames = [index[i] for i in range(len(index))]
    by_name = {n: i for i, n in index.items()}
    initial = {}
    with (meta / "ytbb_robustness_test_anchors_full.csv").open(newline="") as f:
        for r in csv.DictReader(f):
            y = {22: 23, 23: 22}.get(int(r["label"]), int(r["label"]))  # the csv swaps 'none' and 'car'
            initial[f"{r['ytid']}_{r['time_ms']}"] = y
    anns, names = _labels_json(meta / "anchor_labels.json")
    pmk_file = path / "metadata" / "pmk_labels.json"
    pmk_anns, pmk_names = _labels_json(pmk_file)
    valid_pairs, bad = set(), set()
    for a in pmk_anns:
        tags = {pmk_names[i] for i in a["labels"]}
        anchor, frame = (frame_key(x) for x in a["key"].split(","))
        if "bad-anchor" in tags:
            bad.add(anchor)
        elif "similar" in tags and not tags & PMK_PROBLEMS:
            valid_pairs.add((anchor, frame))
    anchors = {}
    for a in anns:
        tags = {names[i] for i in a["labels"]}
        key = frame_key(a["key"])
        if "good" not in tags or tags & {"bad", "unsure"} or key in bad:
            continue
        labels = {by_name[t] for t in tags if t in by_name} | {initial[key.split("/")[0]]}
        nbrs = tuple(n for o in range(-k, k + 1) if o and (key, n := _neighbour(key, o)) in valid_pairs)
        anchors[key] = (frozenset(labels), nbrs)
    rev = {int(c): v for c, v in json.loads((meta / "rev_class_idx_map.json").read_text()).items()}
    groups = tuple(tuple(rev.get(j, ())) for j in range(len(classnames)))
    return _video_dataset("ytbb-robust", path / "ytbb_videos", anchors, classnames, groups)


@register_dataset("imagenet-vid-robust")
def imagenet_vid_robust(root: str | Path, *, base_dir=None) -> LabeledDataset:
    """``imagenet-vid-robust/`` as released: ``metadata/labels.json`` (frame -> VID class
    indices), ``metadata/pmsets.json`` (anchor -> its reviewed pm-10 frames),
    ``misc/imagenet_vid_class_index.json`` (index -> [wnid, name]),
    ``misc/rev_wnid_map.json`` (VID wnid -> ImageNet wnids) and the frames under
    ``frames/`` (or the set's root)."""
    path = find_root(root, base_dir, "imagenet-vid-robust", what="imagenet-vid-robust")
    read = lambda p: json.loads(_must(path / p).read_text(encoding="utf-8"))  # noqa: E731
    labels, pmsets = read("metadata/labels.json"), read("metadata/pmsets.json")
    vid = {int(i): v for i, v in read("misc/imagenet_vid_class_index.json").items()}
    rev = read("misc/rev_wnid_map.json")
    inet = {w: i for i, w in enumerate(imagenet_wnids())}
    classnames = [vid[i][1] for i in range(len(vid))]
    groups = tuple(tuple(inet[w] for w in rev.get(vid[i][0], [])) for i in range(len(vid)))
    unlabelled = sorted({f for a, frames in pmsets.items() for f in (a, *frames)} - set(labels))
    if unlabelled:
        raise DataError(f"imagenet-vid-robust: {len(unlabelled)} frames of {path / 'metadata/pmsets.json'} have no "
                        f"labels in {path / 'metadata/labels.json'}, e.g. {unlabelled[0]!r}")
    anchors = {a: (frozenset(labels[a]), tuple(f for f in frames if f != a)) for a, frames in pmsets.items()}
    frame_labels = {f: frozenset(labels[f]) for a, frames in pmsets.items() for f in (a, *frames)}
    frames = path / "frames" if (path / "frames").is_dir() else path
    return _video_dataset("imagenet-vid-robust", frames, anchors, classnames, groups, frame_labels)


def _must(p: Path) -> Path:
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    return p
