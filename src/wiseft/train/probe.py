"""A linear probe as CLIP's were trained: L2-regularised logistic regression on frozen,
L2-normalised features, fitted with L-BFGS, its regularisation strength searched on a
validation split held out of the training features.

CLIP (Radford et al. 2021, Appendix A.3) swept the inverse regularisation C over
1e-6..1e6 on a log scale and refined around the best value; the WiSE-FT paper's linear
classifiers (Appendix D.3) come from such a search on held-out data. Here: one point per
decade, then ``refine`` points between the best decade's neighbours, the winner
(highest validation accuracy; on a tie, the lower validation cross-entropy, so an easy
task does not pick a C so small that every logit is near zero) refitted on every
training feature. The objective is scikit-learn's ``LogisticRegression(C)``: ``C`` times the
summed cross-entropy plus half the squared norm of the weights (the bias is not
regularised), divided here by ``C * N`` so that it is a mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from wiseft.data import per_class_permutations

COARSE_GRID = tuple(10.0 ** e for e in range(-6, 7))  # 1e-6 .. 1e6, one per decade


@dataclass(frozen=True)
class ProbeResult:
    """The searched probe: weights (K, D), bias (K,), the chosen C, its validation
    accuracy and every C tried (C -> validation accuracy)."""

    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    val_accuracy: float
    tried: dict[float, float] = field(default_factory=dict)

    def provenance(self) -> dict:
        return {"method": "lbfgs", "C": self.C, "val_accuracy": self.val_accuracy, "grid_size": len(self.tried)}


def fit_logistic(features: torch.Tensor, labels: torch.Tensor, num_classes: int, C: float, *,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 500
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) minimising mean cross-entropy + ||weight||^2 / (2 C N) with L-BFGS.

    Example:
        >>> w, b = fit_logistic(torch.randn(100, 8), torch.randint(0, 3, (100,)), 3, C=1.0)
    """
    x, y = features.double(), labels.long()
    w0, b0 = init if init is not None else (torch.zeros(num_classes, x.shape[1]), torch.zeros(num_classes))
    w = w0.detach().clone().double().requires_grad_(True)
    b = b0.detach().clone().double().requires_grad_(True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    decay = 1.0 / (2.0 * C * len(y))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + decay * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach().float(), b.detach().float()


def _score(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(accuracy, cross-entropy) on held-out features."""
    logits = x @ weight.T + bias
    return float((logits.argmax(dim=1) == y).float().mean()), float(F.cross_entropy(logits, y))


def holdout_indices(labels: torch.Tensor, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, validation) positions: ``fraction`` of each class held out (at least one
    sample of every class with two or more), in the seeded per-class order the run's own
    held-out split uses."""
    fit, val = [], []
    for perm in per_class_permutations(labels.tolist(), seed).values():
        k = min(max(1, round(fraction * len(perm))), len(perm) - 1) if len(perm) > 1 else 0
        val += perm[:k]
        fit += perm[k:]
    return sorted(fit), sorted(val)


def search_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int, *,
                        val_fraction: float = 0.2, seed: int = 0, grid=COARSE_GRID, refine: int = 4
                        ) -> ProbeResult:
    """The probe whose C does best on a held-out ``val_fraction`` of the training features,
    refitted on all of them. Rows labelled -100 (unreadable inputs) are left out.

    Example:
        >>> probe = search_linear_probe(feats, labels, num_classes=10)
        >>> probe.C, probe.val_accuracy
    """
    keep = labels >= 0
    features, labels = features[keep].float(), labels[keep]
    fit, val = holdout_indices(labels, val_fraction, seed)
    if not val:
        raise ValueError("linear probe: no class has two samples, so nothing can be held out to choose C")
    xf, yf, xv, yv = features[fit], labels[fit], features[val], labels[val]
    tried: dict[float, tuple[float, float]] = {}  # C -> (validation accuracy, validation cross-entropy)
    init = None
    for C in sorted(grid):  # weak to strong: each fit starts from the last one
        init = fit_logistic(xf, yf, num_classes, C, init=init)
        tried[C] = _score(*init, xv, yv)
    best = _best(tried)
    coarse = sorted(grid)
    i = coarse.index(best)
    lo, hi = coarse[max(i - 1, 0)], coarse[min(i + 1, len(coarse) - 1)]
    if refine and hi > lo:
        ratio = (hi / lo) ** (1.0 / (refine + 1))
        for j in range(1, refine + 1):
            C = lo * ratio ** j
            if all(abs(C / t - 1) > 1e-9 for t in tried):
                tried[C] = _score(*fit_logistic(xf, yf, num_classes, C), xv, yv)
    best = _best(tried)
    weight, bias = fit_logistic(features, labels, num_classes, best)
    return ProbeResult(weight, bias, best, tried[best][0], {C: acc for C, (acc, _) in sorted(tried.items())})


def _best(tried: dict[float, tuple[float, float]]) -> float:
    """The C with the highest validation accuracy; on a tie the lower validation
    cross-entropy, then the smaller C."""
    return min(tried, key=lambda C: (-tried[C][0], tried[C][1], C))
