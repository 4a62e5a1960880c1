"""Mode linear's default probe: CLIP's L-BFGS logistic regression, C searched on held-out
training features (train/probe.py), against hand-checked optimality and the old SGD path."""

import pytest
import torch
import torch.nn.functional as F

from wiseft.config import FinetuneConfig
from wiseft.train import TrainRun
from wiseft.train.probe import COARSE_GRID, fit_logistic, holdout_indices, search_linear_probe


def _blobs(n_per_class=30, dim=8, classes=3, noise=0.8, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    x = torch.cat([c + noise * torch.randn(n_per_class, dim, generator=g) for c in centres])
    y = torch.arange(classes).repeat_interleave(n_per_class)
    return F.normalize(x, dim=-1), y


def test_fit_logistic_reaches_the_regularised_optimum():
    """At the optimum of mean CE + ||W||^2 / (2 C N) the gradient is zero (checked in float64
    by autograd, independently of the optimiser)."""
    x, y = _blobs()
    C = 3.0
    w, b = fit_logistic(x, y, 3, C)
    w64, b64 = w.double().requires_grad_(), b.double().requires_grad_()
    loss = F.cross_entropy(x.double() @ w64.T + b64, y) + (w64 * w64).sum() / (2 * C * len(y))
    loss.backward()
    assert w64.grad.abs().max() < 1e-4 and b64.grad.abs().max() < 1e-4
    # stronger regularisation, smaller weights
    assert fit_logistic(x, y, 3, 1e-3)[0].norm() < w.norm()


def test_holdout_keeps_every_class_on_both_sides_and_is_seeded():
    y = torch.tensor([0] * 10 + [1] * 5 + [2] * 1)
    fit, val = holdout_indices(y, 0.2, seed=0)
    assert not set(fit) & set(val) and sorted(fit + val) == list(range(16))
    assert {int(y[i]) for i in val} == {0, 1} and {int(y[i]) for i in fit} == {0, 1, 2}
    assert holdout_indices(y, 0.2, seed=0) == (fit, val) != holdout_indices(y, 0.2, seed=1)


def test_search_picks_the_best_validation_c_and_refits_on_everything():
    x, y = _blobs(noise=1.2)
    probe = search_linear_probe(x, y, 3, seed=0)
    assert set(COARSE_GRID) <= set(probe.tried) and len(probe.tried) > len(COARSE_GRID)  # coarse, then refined
    assert probe.val_accuracy == max(probe.tried.values()) == probe.tried[probe.C]
    # on a tie in accuracy, the lower validation cross-entropy: never the near-zero head of the smallest C
    assert probe.C > min(c for c, a in probe.tried.items() if a == probe.val_accuracy)
    torch.testing.assert_close(probe.weight, fit_logistic(x, y, 3, probe.C)[0])  # refitted on all rows
    assert probe.provenance() == {"method": "lbfgs", "C": probe.C, "val_accuracy": probe.val_accuracy,
                                  "grid_size": len(probe.tried)}
    # rows of unreadable inputs (label -100) play no part
    x2, y2 = torch.cat([x, torch.zeros(2, x.shape[1])]), torch.cat([y, torch.tensor([-100, -100])])
    assert search_linear_probe(x2, y2, 3, seed=0).C == probe.C


def test_mode_linear_defaults_to_lbfgs_and_other_modes_keep_their_dump():
    assert FinetuneConfig(mode="linear").linear_probe == "lbfgs"
    assert FinetuneConfig(mode="linear").model_dump()["linear_probe"] == "lbfgs"  # its train key names the probe
    assert FinetuneConfig(mode="linear", linear_probe="sgd").linear_probe == "sgd"
    for mode in ("e2e", "lp-ft", "lora"):  # unchanged dumps: config hashes and train keys as before
        assert "linear_probe" not in FinetuneConfig(mode=mode).model_dump()
        assert "linear_probe" not in FinetuneConfig(mode=mode, linear_probe="sgd").model_dump()


@pytest.fixture(scope="module")
def setup(zeroshot_setup):
    return zeroshot_setup


def test_finetune_mode_linear_installs_the_searched_probe(setup):
    from wiseft.train import compute_features, finetune

    model, train, backbone = setup
    cfg = dict(mode="linear", batch_size=8, epochs=2, lr=1e-2, warmup_steps=1, save_every_steps=None)
    tuned = finetune(model, train, backbone, FinetuneConfig(**cfg), TrainRun(progress=False))
    feats, labels = compute_features(model.encoder, train, backbone, 8, progress=False)
    expected = search_linear_probe(feats, labels, len(model.classnames) if hasattr(model, "classnames")
                                   else model.head.out_features, seed=0)
    torch.testing.assert_close(tuned.head.weight, expected.weight)
    assert tuned.linear_probe["C"] == expected.C
    enc = model.encoder.state_dict()
    assert all(torch.equal(v, enc[k]) for k, v in tuned.encoder.state_dict().items())  # frozen encoder
    sgd = finetune(model, train, backbone, FinetuneConfig(**cfg, linear_probe="sgd"), TrainRun(progress=False))
    assert not hasattr(sgd, "linear_probe") and not torch.equal(sgd.head.weight, tuned.head.weight)


def test_the_plan_names_the_probe_not_epochs_of_steps(open_clip_spec, image_data, tmp_path):
    from conftest import run_config

    from wiseft.config import parse_config
    from wiseft.pipeline import prepare_data
    from wiseft.pipeline.plan import plan_text

    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path / "run",
                                  finetune={"mode": "linear", "precision": "fp32"},
                                  variants={"sgd": {"linear_probe": "sgd"}}))
    text = plan_text(cfg, prepare_data(cfg), cfg.finetune_runs(), set(), False)
    assert ("1. finetuned: linear probe, L-BFGS logistic regression on frozen features (fp32), C searched on a "
            "held-out fifth of the training set; then 11 alphas") in text
    assert "2. sgd: fine-tune linear, 10 epochs x 1 steps = 10 steps of batch 512" in text
