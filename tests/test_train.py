"""Training engine: batch plan, k-shot, accumulation, precision, the paper's alternatives,
checkpoint files and metrics logs, on the tiny open_clip model."""

import copy
import json
import math

import pytest
import torch

from wiseft.config import FinetuneConfig
from wiseft.data import DataError
from wiseft.train import (
    BatchPlan,
    CheckpointDir,
    ResumeError,
    TrainRun,
    compute_features,
    finetune,
    kshot_subset,
    resolve_batch,
)
from wiseft.train.checkpoints import atomic_save
from wiseft.train.methods import decays, param_groups

BASE = dict(lr=1e-3, batch_size=4, epochs=1, warmup_steps=1)


@pytest.fixture(scope="module")
def setup(zeroshot_setup):
    return zeroshot_setup


def _tune(setup, **kw):
    model, train, backbone = setup
    opts = {k: kw.pop(k) for k in ("log_path", "checkpoint_dir", "resume") if k in kw}
    return finetune(model, train, backbone, FinetuneConfig(**{**BASE, **kw}), TrainRun(progress=False, **opts))


def _without_key_bias(k: str, v: torch.Tensor) -> torch.Tensor:
    # the attention key bias has zero true gradient (softmax is shift-invariant), so Adam turns
    # rounding noise into lr-sized steps there; compare the query and value biases only
    if k.endswith("attn.in_proj_bias"):
        third = v.numel() // 3
        return torch.cat([v[:third], v[2 * third:]])
    return v


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sb = b.state_dict()
    return max((_without_key_bias(k, v).float() - _without_key_bias(k, sb[k]).float()).abs().max().item()
               for k, v in a.state_dict().items())


def test_batch_plan_splits_each_global_batch_over_ranks_and_accumulation():
    for world, accum in [(1, 1), (1, 3), (2, 1), (2, 2)]:
        plans = [BatchPlan(10, 6, world * accum, r, accum, seed=3) for r in range(world)]
        assert plans[0].steps_per_epoch == 2
        for step in range(2):
            per_rank = [p.step(p.permutation(1), step) for p in plans]
            assert all(len(mbs) == accum for mbs in per_rank)
            real = [i for mbs in per_rank for mb in mbs if mb.weight for i in mb.indices]
            n = 6 if step == 0 else 4
            assert sorted(real) == sorted(plans[0].permutation(1)[6 * step:6 * step + n])
            # per-sample weights sum to the world size, so DDP's mean gives the global mean
            assert sum(mb.weight * len(mb.indices) for mbs in per_rank for mb in mbs) == pytest.approx(world)
    assert BatchPlan(10, 6, 1, 0, 1, 3).permutation(0) == BatchPlan(10, 6, 4, 2, 2, 3).permutation(0)


def test_micro_batches_are_the_chunks_tensor_split_makes():
    perm = list(range(100, 123))
    for n, micro in [(23, 1), (23, 4), (23, 5), (7, 3), (3, 8)]:
        expected = [tuple(c.tolist()) for c in torch.tensor_split(torch.tensor(perm[:n]), micro)]
        got = [mb.indices if mb.weight else () for r in range(micro)
               for mb in BatchPlan(n, n, micro, r, 1, 0).step(perm[:n], 0)]
        assert got == expected


def test_short_last_batch_keeps_every_rank_stepping():
    plan = BatchPlan(9, 8, 8, 3, 2, seed=0)  # last global batch has 1 sample for 8 micro-batches
    last = plan.step(plan.permutation(0), 1)
    assert len(last) == 2 and all(mb.weight == 0 and len(mb.indices) == 1 for mb in last)


def test_resolve_batch_keeps_the_global_batch():
    assert resolve_batch(512, None, 1) == (512, 1)
    assert resolve_batch(512, 64, 4) == (64, 2)
    with pytest.raises(ValueError, match="batch_size 512 is not micro_batch_size 48 x 2 devices"):
        resolve_batch(512, 48, 2)


def test_kshot_subset_is_seeded_and_balanced(setup):
    train = setup[1]
    a, b, c = kshot_subset(train, 3, seed=1), kshot_subset(train, 3, seed=1), kshot_subset(train, 3, seed=2)
    assert a.samples == b.samples and a.samples != c.samples
    assert sorted(a.labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    with pytest.raises(DataError, match="fewer than shots_per_class=50"):
        kshot_subset(train, 50)


def test_gradient_accumulation_matches_the_full_batch(setup):
    full = _tune(setup)
    accumulated = _tune(setup, micro_batch_size=1)
    assert _max_diff(full, accumulated) < 2e-5
    assert _max_diff(full, setup[0]) > 1e-4


def test_input_model_untouched_and_runs_repeat_exactly(setup):
    before = {k: v.clone() for k, v in setup[0].state_dict().items()}
    a, b = _tune(setup, deterministic=True), _tune(setup, deterministic=True)
    assert _max_diff(a, b) == 0.0
    assert all(torch.equal(v, before[k]) for k, v in setup[0].state_dict().items())


def test_bf16_and_fp16_autocast_train(setup):
    fp32 = _tune(setup)
    for precision in ("bf16", "fp16"):
        tuned = _tune(setup, precision=precision)
        assert all(torch.isfinite(v).all() for v in tuned.state_dict().values())
        assert 0 < _max_diff(tuned, fp32) < 0.05


def test_l2_to_zeroshot_pulls_towards_theta_0(setup):
    free = _tune(setup, epochs=2)
    pulled = _tune(setup, epochs=2, l2_to_zeroshot=100.0, grad_clip=None)
    assert _max_diff(pulled, setup[0]) < _max_diff(free, setup[0])


def test_ema_is_a_smoothed_copy(setup):
    last = _tune(setup, epochs=2)
    ema = _tune(setup, epochs=2, ema_decay=0.9)
    assert 0 < _max_diff(ema, setup[0]) < _max_diff(last, setup[0])


def test_weight_decay_exclusions(setup):
    model = setup[0]
    excluded = {n for n, p in model.named_parameters() if not decays(n, p)}
    assert "head.bias" in excluded and "encoder.ln_post.weight" in excluded
    assert "encoder.class_embedding" in excluded and "head.weight" not in excluded
    assert len(param_groups(model, 0.1, exclusions=False)) == 1
    groups = param_groups(model, 0.1, exclusions=True)
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    # their effect on training, exactly: test_train_options.py


def test_linear_and_lp_ft_modes(setup, tmp_path):
    lin = _tune(setup, mode="linear", linear_probe="sgd", epochs=2, lr=1e-2)  # the AdamW path
    enc = setup[0].encoder.state_dict()
    assert all(torch.equal(v, enc[k]) for k, v in lin.encoder.state_dict().items())
    assert not torch.equal(lin.head.weight, setup[0].head.weight)
    lpft = _tune(setup, mode="lp-ft", lp_epochs=2, lp_lr=1e-2, checkpoint_dir=tmp_path / "ck",
                 log_path=tmp_path / "log.jsonl")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [".wiseft.lock", "ft", "lp"]  # one stage folder each
    stages = [json.loads(line)["stage"] for line in (tmp_path / "log.jsonl").open()]
    assert stages == ["lp"] * 14 + ["ft"] * 7
    assert _max_diff(lpft.encoder, setup[0].encoder) > 0


def test_one_linear_step_is_the_adamw_update_computed_by_hand(setup, tmp_path):
    # one step over the whole training set: warmup's first lr, label-smoothed loss, clipping,
    # AdamW's first update (m_hat = g, v_hat = g^2) and decoupled weight decay, by hand
    model, train, backbone = setup
    n, lr, wd, eps = len(train), 1e-2, 0.1, 0.1
    tuned = _tune(setup, mode="linear", linear_probe="sgd", batch_size=n, lr=lr, warmup_steps=2, weight_decay=wd,
                  label_smoothing=eps,
                  log_path=tmp_path / "log.jsonl")
    feats, labels = compute_features(model.encoder, train, backbone, n, progress=False)
    w, b = (p.detach().clone().requires_grad_() for p in (model.head.weight, model.head.bias))
    logp = torch.log_softmax(feats @ w.T + b, dim=-1)
    loss = ((1 - eps) * -logp[torch.arange(n), labels] + eps * -logp.mean(dim=-1)).mean()
    loss.backward()
    norm = torch.cat([w.grad.flatten(), b.grad.flatten()]).norm()
    step_lr = lr / 2  # warmup_steps=2: step 0 runs at half the peak lr
    for p, tuned_p in ((w, tuned.head.weight), (b, tuned.head.bias)):
        g = p.grad * min(1.0, 1.0 / (norm.item() + 1e-6))
        expected = p.detach() * (1 - step_lr * wd) - step_lr * g / (g.abs() + 1e-8)
        torch.testing.assert_close(tuned_p.detach(), expected, rtol=1e-5, atol=1e-7)
    (row,) = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    assert row["step"] == 0 and row["lr"] == step_lr
    assert row["loss"] == pytest.approx(loss.item(), rel=1e-6)


def test_every_step_follows_warmup_then_cosine(setup, tmp_path):
    # 27 images, batch 4: 7 steps; lr 1e-3, warmup 2
    _tune(setup, warmup_steps=2, log_path=tmp_path / "log.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").open()]
    expected = [5e-4, 1e-3] + [0.5 * (1 + math.cos(math.pi * s / 5)) * 1e-3 for s in range(5)]
    assert [r["step"] for r in rows] == list(range(7))
    assert [r["lr"] for r in rows] == pytest.approx(expected, rel=1e-12)


def test_checkpoints_resume_and_logs(setup, tmp_path):
    log = tmp_path / "train.csv"
    kw = dict(checkpoint_dir=tmp_path / "ck", save_every_steps=2, keep_last=1, log_path=log)
    first = _tune(setup, **kw)
    names = sorted(p.name for p in (tmp_path / "ck" / "e2e").iterdir())
    assert names == ["epoch_001_step_00000007.pt", "step_00000006.pt"]
    state = torch.load(tmp_path / "ck" / "e2e" / names[0], weights_only=True)
    assert {"model", "optimizer", "ema", "scaler", "rng", "step", "config"} <= set(state)
    assert state["step"] == 7 and state["config"]["batch_size"] == 4
    header, *rows = log.read_text().splitlines()
    assert header == "stage,step,epoch,loss,lr,samples_per_s,elapsed_s" and len(rows) == 7
    with pytest.raises(ResumeError, match="already holds training checkpoints"):
        _tune(setup, **kw)
    again = _tune(setup, **kw, resume=True)  # already finished: loads the final state
    assert _max_diff(first, again) == 0.0
    with pytest.raises(ResumeError, match="finetune.lr was 0.001 there, now 0.002"):
        _tune(setup, **{**kw, "lr": 2e-3}, resume=True)


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    atomic_save({"a": torch.ones(2)}, tmp_path / "c.pt")
    with pytest.raises(RuntimeError):
        atomic_save({"a": Boom()}, tmp_path / "c.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["a"], torch.ones(2))
    assert CheckpointDir(tmp_path).latest() is None


def test_batched_fetch_seeds_torch_per_sample_and_python_once():
    import random

    from wiseft.train.data import SeededSamples

    class Draws(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return torch.rand(1).item(), random.random()

    data = SeededSamples(Draws(), seed=3)
    key = (1, (5, 2, 7))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    batch = data.__getitems__(key)
    assert torch.equal(torch.rand(1), before)  # the caller's torch RNG state is restored
    single = [data[1, i] for i in key[1]]
    assert [t for t, _ in batch] == [t for t, _ in single]  # torch draws: a function of the sample alone
    assert data.__getitems__(key) == batch  # python draws: a function of the micro-batch
    assert data.__getitems__((2, (5, 2, 7))) != batch
    assert [t for t, _ in data.__getitems__((1, (2,)))] == [batch[1][0]]
    assert SeededSamples(Draws(), seed=3, seeded=False).__getitems__(key) != batch


def test_probe_finds_random_transforms_and_leaves_every_rng_as_it_was(setup, caplog):
    import random

    import numpy as np

    from wiseft.train.data import TensorSamples, draws_random_numbers

    _, train, backbone = setup
    states = lambda: (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())  # noqa: E731
    before = states()
    assert draws_random_numbers(train.with_transform(backbone.transform_train))  # open_clip's RandomResizedCrop
    assert not draws_random_numbers(train.with_transform(backbone.transform_eval))
    assert not draws_random_numbers(TensorSamples(torch.zeros(5, 3), torch.zeros(5)))
    after = states()
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])

    class PythonDraws(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return random.random()

    class NumpyDraws(PythonDraws):
        def __getitem__(self, i):
            return np.random.rand()

    assert draws_random_numbers(PythonDraws())
    with caplog.at_level("WARNING", logger="wiseft"):
        assert not draws_random_numbers(NumpyDraws())
    assert "NumPy's global RNG" in caplog.text


def test_trainer_seeds_samples_only_when_the_data_draws_random_numbers(setup):
    from wiseft.backbones.base import image_collate
    from wiseft.train import Stage, Trainer

    model, train, backbone = setup
    cfg = FinetuneConfig(**BASE)
    seeded = {name: Trainer(model.head, train.with_transform(t), image_collate, cfg, Stage("s", 1, 1e-3),
                            progress=False).data.seeded
              for name, t in [("train", backbone.transform_train), ("eval", backbone.transform_eval)]}
    assert seeded == {"train": True, "eval": False}


def test_gradients_live_until_the_next_step_and_not_past_training(setup):
    # freed at the start of a step, not the end: memory freed at the end of a step can go
    # back to the OS, and the next step's activations then fault it in again (ViT-B/32 on
    # CPU ran 4% slower than a plain loop that way)
    from wiseft.backbones.base import image_collate
    from wiseft.train import Stage, Trainer

    model, train, backbone = setup
    trainer = Trainer(copy.deepcopy(model), train.with_transform(backbone.transform_eval),
                      image_collate, FinetuneConfig(**BASE), Stage("s", 1, 1e-3), progress=False)
    batches = trainer._loader(0, 0)
    micro = next(trainer.plan.epoch(0))
    trainer.train_step(batches, micro)
    assert all(p.grad is not None for p in trainer.params)
    trainer.fit()
    assert all(p.grad is None for p in trainer.params)
