"""Contrastive fine-tuning on (query, caption) pairs (``finetune.objective: contrastive``):
CLIP's own objective, the symmetric InfoNCE over the in-batch pairs, both towers and the
learned logit scale trained (Radford et al. 2021, arXiv 2103.00020, Figure 3; open_clip's
``ClipLoss``).

The model is the same :class:`~wiseft.heads.PromptClassifier` FLYP trains (``train.flyp``:
its input tower, its text tower, its log logit scale), so WiSE-FT mixes every weight of
both towers and the logit scale, and the classification head of the labelled sets is
re-derived from the (mixed) text tower. FLYP pairs an input with a prompt of its class;
this objective pairs it with its own caption (``wiseft.data.PairDataset``).

The logit scale is stored as its log (``logit_scale`` in the model's state dict, beside
``encoder.*`` and ``text.*``, mixed like every other weight), starts at the backbone's
own value, and is clamped to at most 100 after every optimizer step, as CLIP and
open_clip's trainer do (``logit_scale.clamp_(0, ln 100)``).

Under torchrun the negatives are the global batch: each process gathers every process's
embeddings (open_clip's ``gather_features`` with ``local_loss=False``: gathered copies
without gradient, the process's own slice replaced by its local tensors) and computes the
loss of the whole global micro-batch. Each of the k processes holding pairs counts 1/k of
that loss and sends k times the gradient into its own embeddings, so DDP's average of the
processes' gradients is one process's gradient on the same global batch, logit scale
included (open_clip without ``gather_with_grad`` leaves the towers' gradient 1/world of
it). With gradient accumulation the negatives are one accumulation step's micro-batches
of all processes (``micro_batch_size`` x processes), not the whole global batch.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.distributed as dist

from wiseft.core import WiseftError
from wiseft.runtime import current
from wiseft.train.data import IGNORE_LABEL
from wiseft.train.flyp import Tokenize, Towers, flyp_loss

MAX_LOGIT_SCALE = 100.0  # CLIP's cap on the learned temperature's inverse


class ContrastiveError(WiseftError):
    """Contrastive fine-tuning cannot run on this data or model: the message says why."""


class ContrastiveModel(Towers):
    """What contrastive fine-tuning trains (the towers and the log logit scale of a
    :class:`PromptClassifier`). ``forward`` maps ``{"inputs": ..., "prompts": tokens}`` (a
    micro-batch of pairs) to one fp32 tensor the loss unpacks, ``(n, 2 * dim + 1)``: the
    normalised query and caption embeddings and, in the last column, the log logit scale
    (the training loop hands a tensor from the model to the loss; the loss gathers across
    processes, which needs to know which rows are pairs, and only the loss sees the labels)."""

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        queries, captions = self.embed(batch)
        log_scale = self.logit_scale.float().reshape(1, 1).expand(len(queries), 1)
        return torch.cat([queries.float(), captions.float(), log_scale], dim=1)

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """The logit scale into [1, 100] (its log into [0, ln 100]), as open_clip's trainer
        does after every optimizer step."""
        self.logit_scale.clamp_(0.0, math.log(MAX_LOGIT_SCALE))


def unpack(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(queries, captions, log logit scale) of a :class:`ContrastiveModel` output."""
    dim = (out.shape[1] - 1) // 2
    return out[:, :dim], out[:, dim:2 * dim], out[0, 2 * dim]  # every row holds the same scale


def contrastive_loss(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """This process's share of the symmetric InfoNCE of the global micro-batch (all
    processes' pairs; one process: its own), summed over pairs (the loop weights it per
    sample). ``labels`` mark placeholders (``IGNORE_LABEL``: a sample standing in for an
    unreadable micro-batch, or a process with no share of a short last batch), which are
    neither pairs nor negatives."""
    queries, captions, log_scale = unpack(out)
    valid = labels.to(out.device) != IGNORE_LABEL
    all_q, all_c, holders = gather_pairs(queries[valid], captions[valid])
    if not bool(valid.any()):
        return out.sum() * 0.0  # in the graph (DDP expects every gradient), adding nothing
    return flyp_loss(log_scale.exp() * all_q @ all_c.t()) / holders  # CLIP's symmetric InfoNCE


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the gradient times ``k`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, k: float) -> torch.Tensor:
        ctx.k = k
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.k, None


def gather_pairs(queries: torch.Tensor, captions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(queries, captions, k) of the global micro-batch: every process's rows in rank order
    (their counts may differ; a process may hold none), gathered without gradient, this
    process's own slice its local tensors with their gradient times k, where k is the
    number of processes holding rows. One process: its own rows, k = 1."""
    info = current()
    if not info.enabled:
        return queries, captions, 1
    dim = queries.shape[1]
    local = torch.cat([queries, captions], dim=1)
    count = torch.tensor([len(local)], device=local.device)
    counts = [torch.zeros_like(count) for _ in range(info.world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]
    holders = sum(s > 0 for s in sizes)
    buf = local.new_zeros((max(sizes), local.shape[1]))
    buf[:len(local)] = local.detach()
    parts = [torch.empty_like(buf) for _ in range(info.world)]
    dist.all_gather(parts, buf)
    parts = [p[:s] for p, s in zip(parts, sizes)]
    parts[info.rank] = _ScaleGrad.apply(local, float(max(holders, 1)))
    everything = torch.cat(parts)
    return everything[:, :dim], everything[:, dim:], max(holders, 1)


class PairCollate:
    """Collate :class:`~wiseft.data.PairDataset` samples ``(query input, caption)``: the
    queries with the backbone's own collate, the captions with the model's tokenizer;
    labels 0 for a pair, ``IGNORE_LABEL`` for a placeholder (whose caption the loop set to
    ``IGNORE_LABEL``)."""

    def __init__(self, collate: Callable[[list], Any], tokenize: Tokenize):
        self.collate, self.tokenize = collate, tokenize

    def __call__(self, batch: list) -> tuple[dict[str, Any], torch.Tensor]:
        inputs, _ = self.collate([(x, 0) for x, _ in batch])
        is_pair = [isinstance(c, str) for _, c in batch]
        captions = [c if pair else "" for (_, c), pair in zip(batch, is_pair)]
        labels = torch.tensor([0 if pair else IGNORE_LABEL for pair in is_pair], dtype=torch.long)
        return {"inputs": inputs, "prompts": self.tokenize(captions)}, labels
