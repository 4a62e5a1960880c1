"""Evaluation sets and scoring one model on them.

An ``EvalSet`` is a dataset scored under a role (reference, shift, validation), with its
input cache built on first use. ``predict_logits``, ``evaluate`` and ``evaluate_records``
score one model; ``evaluate_set``, ``score_more`` (calibration per alpha, the reference
set's accuracy on each subset shift's classes) and ``to_records`` are the per-set steps a
sweep or a merge search shares.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch.utils.data import DataLoader

from wiseft.backbones import Backbone
from wiseft.core import NOT_PRIMARY, Record, Score, expected_calibration_error, fit_temperature, is_restricted_metric
from wiseft.data import LabeledDataset, PairDataset, Projection
from wiseft.evaluation.cache import InputCache, Shard, build_input_cache, loader_workers
from wiseft.evaluation.ensemble import class_restricted_scores
from wiseft.evaluation.fingerprints import weights_fingerprint
from wiseft.evaluation.retrieval import PairIndex, retrieval_scores
from wiseft.evaluation.settings import CacheMode, EvalSettings
from wiseft.heads import Classifier
from wiseft.runtime import check_same, current, device_of, numerics, resolve_precision, to_device

log = logging.getLogger("wiseft")


@dataclass
class EvalSet:
    """A dataset scored under a role (reference, shift, validation), with the
    projection from reference logits onto its classes when they differ (default: the
    dataset's own, e.g. ImageNet-R's 200 classes of ImageNet). A ``PairDataset`` is a
    pair set, scored by retrieval (``wiseft.evaluation.retrieval``): its cache holds its
    distinct queries."""

    name: str
    role: str
    dataset: LabeledDataset | PairDataset
    projection: Projection | None = None
    _cache: InputCache | None = field(default=None, repr=False)
    _pairs: PairIndex | None = field(default=None, repr=False)

    @property
    def is_pairs(self) -> bool:
        """Whether the set is a pair set, scored by retrieval rather than accuracy."""
        return isinstance(self.dataset, PairDataset)

    @property
    def pairs(self) -> PairIndex:
        """A pair set's distinct queries and pairs (built on first use)."""
        if self._pairs is None:
            self._pairs = PairIndex.of(self.dataset)
        return self._pairs

    @property
    def skipped(self) -> list[str]:
        """Inputs skipped as unreadable (file and reason), once decoded."""
        return [] if self._cache is None else self._cache.skipped

    def inputs(self, backbone: Backbone, batch_size: int = 256, *, num_workers: int | None = None,
               mode: CacheMode = "auto", cache_dir: str | Path | None = None, max_memory: int | None = None,
               progress: bool = False) -> InputCache:
        """The set's input cache, built on first use."""
        if self._cache is None:
            inputs = self.pairs.queries if self.is_pairs else self.dataset
            self._cache = build_input_cache(inputs, backbone, batch_size=batch_size,
                                            num_workers=num_workers, mode=mode, cache_dir=cache_dir,
                                            max_memory=max_memory, progress=progress)
            if self._cache.skipped and current().main:
                log.warning("%s: skipped %d unreadable inputs, e.g. %s", self.name, len(self._cache.skipped),
                            self._cache.skipped[0])
        return self._cache

    def batches(self, backbone: Backbone, batch_size: int, cache: bool = True, *,
                num_workers: int | None = None) -> Iterable:
        """Collated (inputs, labels) batches with eval preprocessing (decoded once when
        ``cache`` is set; otherwise re-read on every pass), loaded by ``num_workers``
        processes either way."""
        if not cache:  # under torchrun, this process's chunks (Shard)
            return DataLoader(self.dataset.with_transform(backbone.transform_eval),
                              batch_sampler=Shard.current(batch_size).chunks(len(self.dataset)),
                              collate_fn=backbone.collate, num_workers=loader_workers(num_workers, len(self.dataset)))
        return list(self.inputs(backbone, batch_size, num_workers=num_workers).batches(batch_size))

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        if self.projection is not None:
            return logits if self.projection.is_identity and logits.shape[1] == len(self.projection.groups) \
                else self.projection(logits)
        return self.dataset.project_logits(logits)

    def scores(self, logits: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, Score]:
        """Every metric the dataset declares (its primary metric first) for reference-space logits."""
        if index is None:
            index = torch.arange(len(labels))
        return self.dataset.metrics(self.project(logits), self.dataset.project_labels(labels), index)


def cached_inputs(es: EvalSet, backbone: Backbone, settings: EvalSettings) -> InputCache:
    """``es``'s input cache, built as ``settings`` say on first use."""
    return es.inputs(backbone, settings.batch_size, num_workers=settings.num_workers, mode=settings.cache_mode,
                     cache_dir=settings.cache_dir, max_memory=settings.max_memory, progress=settings.progress)


@torch.no_grad()
def predict_logits(model: Classifier, batches: Iterable, precision: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) in fp32 and labels (N,) for every batch."""
    model.eval()
    device = device_of(model)
    precision = resolve_precision(precision, device)
    out, labels = [], []
    with numerics(precision, device):
        for inputs, y in batches:
            out.append(model(to_device(inputs, device)).float().cpu())
            labels.append(y)
    if not out:  # a process of a torchrun launch with no chunk of this set
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    return torch.cat(out), torch.cat(labels)


def evaluate(model: Classifier, evalsets: Sequence[EvalSet], backbone: Backbone, *, batch_size: int = 256,
             precision: str = "fp32", cache: bool | CacheMode = True, num_workers: int | None = None,
             progress: bool = False) -> dict[str, tuple[int, int]]:
    """(correct, total) top-1 counts per evaluation set for one model; of a pair set, its
    image-to-text (query-to-document) R@1 counts (``evaluate_records`` gives every metric,
    its options as one ``EvalSettings``)."""
    settings = EvalSettings(batch_size=batch_size, precision=precision, cache=cache, num_workers=num_workers,
                            progress=progress).resolved(device_of(model))
    counts = {}
    for es in evalsets:
        scores = evaluate_set(model, es, backbone, settings)[0]
        top1 = scores["top1"] if not es.is_pairs else next(s for m, s in scores.items() if m.startswith("r@1_"))
        counts[es.name] = (top1.correct, top1.total)
    return counts


def evaluate_records(model: Classifier, evalsets: Sequence[EvalSet], backbone: Backbone, *, model_name: str,
                     alpha: float | None = None, provenance: dict[str, Any] | None = None,
                     settings: EvalSettings | None = None) -> list[Record]:
    """Records of every metric each set declares, for one model (e.g. an exported one);
    ``settings`` default to ``EvalSettings(progress=False)``."""
    settings = (settings or EvalSettings(progress=False)).resolved(device_of(model))
    if current().enabled:
        check_same(f"the weights of {model_name}", weights_fingerprint(model.state_dict()))
    scores = {es.name: evaluate_set(model, es, backbone, settings)[0] for es in evalsets}
    return to_records({alpha: scores}, evalsets, [alpha], model_name, dict(provenance or {}), {})


def evaluate_set(model: Classifier, es: EvalSet, backbone: Backbone,
                 settings: EvalSettings) -> tuple[dict[str, Score], torch.Tensor, torch.Tensor]:
    """(scores, logits, labels) of one set, in ``settings.precision`` as resolved for the model's device;
    a pair set's retrieval scores with no logits nor labels (None), its queries always from the cache."""
    model.eval()
    if es.is_pairs:
        scores = retrieval_scores(model, cached_inputs(es, backbone, settings), es.pairs, backbone,
                                  batch_size=settings.batch_size, precision=settings.precision,
                                  modality=es.dataset.modality)
        return scores, None, None
    if settings.cache is False:  # the naive path: decode again, as the reference implementation does
        batches = es.batches(backbone, settings.batch_size, cache=False, num_workers=settings.num_workers)
        logits, labels = predict_logits(model, batches, settings.precision)
        shard = Shard.current(settings.batch_size)
        if shard.world > 1:  # every process's chunks, in order
            n, size = len(es.dataset), settings.batch_size
            sizes = [min(size, n - start) for start in range(0, n, size)]
            logits, labels = shard.gather(logits, sizes), shard.gather(labels, sizes)
        return es.scores(logits, labels), logits, labels
    c = cached_inputs(es, backbone, settings)
    logits = c.outputs(model, settings.batch_size, device_of(model), settings.precision)
    return es.scores(logits, c.labels, c.index), logits, c.labels


def validation_first(evalsets: Sequence[EvalSet]) -> list[EvalSet]:
    """The sets in the order calibration needs: the held-out split that fits each alpha's
    temperature before the sets scored with it."""
    return sorted(evalsets, key=lambda es: es.role != "validation")


def score_more(es: EvalSet, scores: dict[str, Score], logits: torch.Tensor, labels: torch.Tensor,
               temperatures: dict[float, float], alpha: float, evalsets: Sequence[EvalSet]) -> None:
    """What a sweep adds to a set's own metrics: calibration, and on the reference set its
    accuracy restricted to each subset shift's classes (the x axis of that shift's
    effective robustness, as the robustness testbed scores it). Nothing for a pair set
    (``logits`` None): its retrieval scores are all it has."""
    if logits is None:
        return
    _calibrate(es, scores, logits, labels, temperatures, alpha)
    if es.role == "reference":
        scores.update(class_restricted_scores(logits, labels, evalsets))


def _calibrate(es: EvalSet, scores: dict[str, Score], logits: torch.Tensor, labels: torch.Tensor,
               temperatures: dict[float, float], alpha: float) -> None:
    """Temperature scaling per alpha: the first validation set fits alpha's temperature
    (recorded as metric ``temperature``); every set gets its ``ece`` under that temperature
    (1, uncalibrated, when the run holds out no validation data)."""
    logits, labels = es.project(logits), es.dataset.project_labels(labels)
    if es.role == "validation" and alpha not in temperatures:
        temperatures[alpha] = fit_temperature(logits, labels)
        scores["temperature"] = Score(temperatures[alpha])
    scores["ece"] = expected_calibration_error(logits, labels, temperatures.get(alpha, 1.0))


def to_records(scores, evalsets, alphas, model_name, provenance, checks) -> list[Record]:
    """One record per (alpha, set, metric). The first metric a set's dataset declares,
    calibration aside (``ece``, ``temperature``), is its primary one: that record's
    provenance says ``"primary": true`` (docs/results-format.md)."""
    records = []
    for a in alphas:
        for es in evalsets:
            prov = dict(provenance)
            if es.skipped:
                prov["skipped_inputs"] = len(es.skipped)
            if es.name in checks:
                prov["bf16_check"] = checks[es.name]
            primary = primary_metric(scores[a][es.name])
            for metric, s in scores[a][es.name].items():
                records.append(Record(model=model_name, alpha=None if a is None else float(a),
                                      dataset=es.name, role=es.role,
                                      metric=metric, value=s.value, correct=s.correct, total=s.total,
                                      provenance={**prov, "primary": True} if metric == primary else prov))
    return records


def primary_metric(scores: Mapping[str, Score]) -> str | None:
    """A set's primary metric: the first it declares, calibration and x axes aside."""
    return next((m for m in scores if m not in NOT_PRIMARY and not is_restricted_metric(m)), None)
