"""Frozen-encoder features for linear probing, skipping unreadable inputs as training
and evaluation do."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from wiseft.backbones import Backbone
from wiseft.core import progress_bar
from wiseft.data import LabeledDataset, check_unreadable
from wiseft.runtime import autocast, device_of, to_device

log = logging.getLogger("wiseft")


@torch.no_grad()
def compute_features(encoder: torch.nn.Module, dataset: LabeledDataset, backbone: Backbone,
                     batch_size: int = 256, *, precision: str = "fp32", num_workers: int = 0,
                     progress: bool = True, keep_rows: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised features (N, D) in fp32 and labels (N,), with eval preprocessing.
    Unreadable inputs are skipped and counted, as in training and evaluation: their rows
    are left out (with ``keep_rows``, kept as zeros labelled -100, which the loss ignores,
    so that rows line up across processes), and more than ``dataset.max_unreadable`` of
    them is a named error."""
    device = device_of(encoder)
    loader = DataLoader(_Readable(dataset.with_transform(backbone.transform_eval)), batch_size=batch_size,
                        collate_fn=_SkipNone(backbone.collate), num_workers=num_workers)
    was_training = encoder.training
    encoder.eval()
    feats, labels, kept, skipped = [], [], [], []
    for inputs, y, rows, bad in progress_bar(loader, desc=f"features {dataset.name}", disable=not progress,
                                             leave=False, unit="batch"):
        skipped += bad
        if inputs is None:
            continue
        with autocast(device, precision):
            f = encoder(to_device(inputs, device))
        feats.append(F.normalize(f.float(), dim=-1).cpu())
        labels.append(y)
        kept += rows
    encoder.train(was_training)
    if skipped:
        log.warning("%s: skipped %d unreadable inputs, e.g. %s", dataset.name, len(skipped), skipped[0])
        check_unreadable(len(skipped), len(dataset), getattr(dataset, "max_unreadable", None),
                         f"features of {dataset.name}", skipped[0])
    if not feats:
        raise ValueError(f"{dataset.name}: no readable inputs to compute features from")
    feats, labels = torch.cat(feats), torch.cat(labels)
    if keep_rows and skipped:
        full = torch.zeros(len(dataset), feats.shape[1])
        full_labels = torch.full((len(dataset),), -100, dtype=labels.dtype)
        full[kept], full_labels[kept] = feats, labels
        return full, full_labels
    return feats, labels


class _Readable(torch.utils.data.Dataset):
    """``(index, input, label)`` per sample, or ``(index, None, reason)`` for one that cannot be loaded."""

    def __init__(self, dataset: LabeledDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        try:
            return i, *self.dataset[i]
        except Exception as e:  # noqa: BLE001 - any decoder failure is a bad input, not a crash
            return i, None, f"{self.dataset.samples[i][0]}: {type(e).__name__}: {e}"


class _SkipNone:
    """Collate the readable samples: (inputs, labels, their indices, reasons of the unreadable ones)."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, batch):
        good = [(x, y) for _, x, y in batch if x is not None]
        rows = [i for i, x, _ in batch if x is not None]
        bad = [reason for _, x, reason in batch if x is None]
        return (*self.collate(good), rows, bad) if good else (None, None, rows, bad)
