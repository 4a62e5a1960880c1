"""The run's time estimate, printed before the work starts: one real training step
(forward, backward, optimizer step) and one evaluation batch of each set are timed at
the precision each stage will run in, and scaled by the work the plan holds.

Stages are named as ``RunResult.timings`` names them (``fine-tune NAME``, ``sweep NAME``,
``merges``), so ``benchmarks/demo.py`` prints each estimate beside its wall time.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from wiseft.backbones import Backbone
from wiseft.config import MergeRun, RunConfig
from wiseft.core import duration
from wiseft.data import LabeledDataset, PairDataset
from wiseft.heads import Classifier
from wiseft.runtime import autocast, current, numerics, to_device
from wiseft.train import adamw, kshot_subset

log = logging.getLogger("wiseft")

# inputs timed per set and per training step (the per-input cost of a batch this size is
# within a few percent of a larger one's on a CPU; the probe must stay cheap)
PROBE = 32
# a bf16 sweep re-runs fp32_check inputs per set in fp32, which costs about twice a bf16 input
_FP32_OVER_BF16 = 2.0


def _spread(ds: LabeledDataset | PairDataset, k: int) -> list:
    """``k`` samples spread evenly over the set (its first ones may all be one class, or short)."""
    n = len(ds)
    return [ds.samples[i * n // k] for i in range(k)]


def _batch(ds: LabeledDataset | PairDataset, transform, backbone: Backbone, k: int,
           device: torch.device) -> tuple[list, Any, float]:
    """([inputs, ...], labels, seconds to decode one input) for ``k`` samples of ``ds``: one
    batch of inputs for a labelled set; for a pair set its queries and its captions (text
    queries: the captions themselves; image queries: the queries again, standing in for the
    text tower, which the classifier timed here does not hold), labels 0."""
    start = time.perf_counter()
    items = [(transform(ds.load(r) if ds.load else r), y) for r, y in _spread(ds, k)]
    decode = (time.perf_counter() - start) / k
    if not isinstance(ds, PairDataset):
        inputs, labels = backbone.collate(items)
        return [to_device(inputs, device)], labels.to(device), decode
    queries, labels = backbone.collate([(x, 0) for x, _ in items])
    captions = backbone.collate([(c, 0) for _, c in items])[0] if ds.modality == "text" else queries
    return [to_device(queries, device), to_device(captions, device)], labels.to(device), decode


@torch.no_grad()
def _eval_seconds(model: Classifier, ds: LabeledDataset | PairDataset, backbone: Backbone,
                  precision: str) -> tuple[float, float]:
    """(seconds per input at ``precision``, seconds to decode one input) for one set (a
    pair: its query and its caption)."""
    device = next(model.parameters()).device
    k = min(PROBE, len(ds))
    batches, _, decode = _batch(ds, backbone.transform_eval, backbone, k, device)
    model.eval()
    with numerics(precision, device):
        for inputs in batches:
            model(inputs)  # warm-up: kernels chosen for these shapes
        start = time.perf_counter()
        for inputs in batches:
            model(inputs)
    return (time.perf_counter() - start) / k, decode


def _train_seconds(model: Classifier, theta_0: dict[str, torch.Tensor], train: LabeledDataset | PairDataset,
                   backbone: Backbone, precision: str, batch: int) -> float:
    """Seconds per training example: the second of two real steps (forward, backward, AdamW)
    on a batch of at most ``PROBE`` (a pair set: its queries and captions both forward and
    backward); the model is put back to ``theta_0`` afterwards."""
    device = next(model.parameters()).device
    k = min(PROBE, batch, len(train))
    batches, labels, _ = _batch(train, backbone.transform_train, backbone, k, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw([{"params": params}], 1e-12, device)
    model.train()
    try:
        for _ in range(2):  # the first step allocates the optimizer's state
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast(device, precision):
                loss = sum(F.cross_entropy(model(inputs).float(), labels) for inputs in batches)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds = time.perf_counter() - start
    finally:
        opt.zero_grad(set_to_none=True)
        model.load_state_dict(theta_0)
        model.eval()
    return seconds / k


def estimate_stages(model: Classifier, theta_0: dict[str, torch.Tensor], backbone: Backbone, data,
                    cfg: RunConfig, runs: dict, reused: set[str]) -> dict[str, float]:
    """Seconds each stage of the run should take (fine-tunes, sweeps, merges), on this
    process's share under torchrun. ``cfg``'s precisions are resolved (no ``auto``)."""
    ev = cfg.evaluation
    one_pass, decode, check = {}, 0.0, 0.0  # seconds: each set's forward pass, decoding them all, the bf16 check
    for e in data.evalsets:
        ds = e.pairs.queries if e.is_pairs else e.dataset  # a pair set: its distinct queries (captions not timed)
        if len(ds):
            forward, decoding = _eval_seconds(model, ds, backbone, ev.precision)
            one_pass[e.name] = len(ds) * forward
            decode += len(ds) * decoding
            check += _FP32_OVER_BF16 * min(ev.fp32_check, len(ds)) * forward if ev.precision == "bf16" else 0.0
    stages: dict[str, float] = {}
    cost: dict[str, float] = {}  # per training example: a step at each precision, a forward pass ('features')
    for i, (name, ft) in enumerate(runs.items()):
        if name not in reused:
            stages[f"fine-tune {name}"] = _finetune_seconds(model, theta_0, data.train, backbone, ft, cost, ev.precision)
        alphas = len(cfg.alphas) - (1 if i > 0 and 0.0 in cfg.alphas else 0)
        passes = 1 if ft.mode == "linear" else alphas  # a linear head's sweep mixes features computed once
        stages[f"sweep {name}"] = passes * sum(one_pass.values()) + (decode if i == 0 else 0.0) + check
    merges = _merge_seconds(cfg.merge_runs(), cfg, data, one_pass)
    if merges:
        stages["merges"] = merges
    world = current().world  # under torchrun each process trains and scores its share
    return {k: v / world for k, v in stages.items()}


def _finetune_seconds(model, theta_0, train: LabeledDataset, backbone: Backbone, ft, cost: dict[str, float],
                      feature_precision: str) -> float:
    """A fine-tune's seconds: its epochs of timed training steps; a linear probe's one
    feature pass; LP-FT both. Each cost is timed once per run and kept in ``cost``."""
    if not len(train):
        return 0.0
    n = len(kshot_subset(train, ft.shots_per_class, ft.shots_seed)) if ft.shots_per_class else len(train)
    seconds = 0.0
    if ft.mode in ("linear", "lp-ft"):
        if "features" not in cost:
            cost["features"] = _eval_seconds(model, train, backbone, feature_precision)[0]
        seconds += n * cost["features"]
    if ft.mode != "linear":
        if ft.precision not in cost:
            cost[ft.precision] = _train_seconds(model, theta_0, train, backbone, ft.precision, ft.batch_size)
        seconds += ft.epochs * n * cost[ft.precision]
    return seconds


def _merge_seconds(merges: Sequence[MergeRun], cfg: RunConfig, data, one_pass: dict[str, float]) -> float:
    """Each searched merge: every grid point on validation, then the chosen one on the test sets."""
    val = sum(one_pass.get(e.name, 0.0) for e in data.evalsets if e.role == "validation")
    total = sum(one_pass.values())
    return sum(len(m.points()) * val + total - val for m in merges if not from_sweep(m, cfg))


def from_sweep(merge: MergeRun, cfg: RunConfig) -> bool:
    """Whether a merge is WiSE-FT over alphas the sweep scores (its records are the sweep's)."""
    return merge.alpha_search and set(merge.search["alpha"]) <= set(cfg.alphas) and cfg.data.validation_fraction > 0


def estimate_run(model: Classifier, theta_0: dict[str, torch.Tensor], backbone: Backbone, data, cfg: RunConfig,
                 runs: dict, reused: set[str]) -> dict[str, float]:
    """:func:`estimate_stages`, logged as the plan's estimate line; an estimate never stops a
    run (inputs that fail here are reported later, where they are read)."""
    try:
        stages = estimate_stages(model, theta_0, backbone, data, cfg, runs, reused)
    except Exception as e:  # noqa: BLE001
        log.info("  (no time estimate: %s: %s)", type(e).__name__, e)
        return {}
    log.info("%s", estimate_text(stages, next(model.parameters()).device))
    return stages


def estimate_text(stages: dict[str, float], device: torch.device) -> str:
    """The plan's estimate line: the total and each stage."""
    world = current().world
    where = f"{world} processes on {device.type}" if world > 1 else device.type
    parts = ", ".join(f"{k} {duration(v)}" for k, v in stages.items())
    timed = "one timed training step and one batch" if any(k.startswith("fine-tune") for k in stages) else "one batch"
    return f"  estimate: about {duration(sum(stages.values()))} on {where} ({parts}; from {timed} of each set)"
