"""FinetuneConfig options, each shown by its effect on the tiny open_clip model: the
metrics period, checkpoint retention, channels-last layout, decay exclusions, the k-shot
draw's seed, activation checkpointing and loader workers; and the run options
(TrainRun, or finetune's keyword arguments)."""

import copy
import json
import os

import pytest
import torch

from wiseft.train import TrainRun, finetune, kshot_subset
from wiseft.train.engine import FinetuneConfig
from wiseft.train.methods import decays

# 27 training images (36 minus the validation hold-out), batch 4: 7 steps per epoch
BASE = dict(lr=1e-3, batch_size=4, epochs=1, warmup_steps=1)
STEPS = 7


@pytest.fixture(scope="module")
def setup(zeroshot_setup):
    return zeroshot_setup


def _tune(setup, run: TrainRun = TrainRun(progress=False), model=None, train=None, **kw):
    base_model, base_train, backbone = setup
    return finetune(model or base_model, train or base_train, backbone, FinetuneConfig(**{**BASE, **kw}), run)


def _rows(path):
    return [json.loads(line) for line in path.open()]


def _without_key_bias(k: str, v: torch.Tensor) -> torch.Tensor:
    # the attention key bias has zero true gradient (softmax is shift-invariant), so Adam turns
    # rounding noise into lr-sized steps there; compare the query and value biases only
    if k.endswith("attn.in_proj_bias"):
        third = v.numel() // 3
        return torch.cat([v[:third], v[2 * third:]])
    return v


def _checkpoints(root):
    return sorted(p.name for p in (root / "e2e").iterdir())


def test_log_every_steps_writes_every_nth_step_and_the_last(setup, tmp_path):
    _tune(setup, TrainRun(log_path=tmp_path / "every.jsonl", progress=False), deterministic=True)
    _tune(setup, TrainRun(log_path=tmp_path / "third.jsonl", progress=False), deterministic=True, log_every_steps=3)
    every, third = _rows(tmp_path / "every.jsonl"), _rows(tmp_path / "third.jsonl")
    assert [r["step"] for r in every] == list(range(STEPS))
    assert [r["step"] for r in third] == [2, 5, 6]  # steps 3, 6 and the last (7), counted from 0
    # a row's loss is the mean over the steps since the previous row
    losses = [r["loss"] for r in every]
    for row, steps in zip(third, [range(0, 3), range(3, 6), range(6, 7)]):
        assert row["loss"] == pytest.approx(sum(losses[s] for s in steps) / len(steps), rel=1e-6)


@pytest.mark.parametrize("keep_last", [1, 3])
def test_keep_last_keeps_exactly_the_newest_step_checkpoints(setup, tmp_path, keep_last):
    _tune(setup, TrainRun(checkpoint_dir=tmp_path / "ck", progress=False), save_every_steps=1, keep_last=keep_last)
    steps = [f"step_{s:08d}.pt" for s in range(STEPS - keep_last, STEPS)]
    assert _checkpoints(tmp_path / "ck") == ["epoch_001_step_00000007.pt"] + steps


@pytest.mark.parametrize("keep_epochs, expected", [
    (True, ["epoch_001_step_00000007.pt", "epoch_002_step_00000014.pt"]),
    (False, ["step_00000014.pt"]),  # epoch ends are step checkpoints, pruned by keep_last
])
def test_keep_epoch_checkpoints(setup, tmp_path, keep_epochs, expected):
    _tune(setup, TrainRun(checkpoint_dir=tmp_path / "ck", progress=False), epochs=2, save_every_steps=None,
          keep_last=1, keep_epoch_checkpoints=keep_epochs)
    assert _checkpoints(tmp_path / "ck") == expected


def _conv_inputs_channels_last(setup, **kw) -> tuple[list[bool], torch.nn.Module]:
    """Whether each training input of the patch-embedding conv was channels-last, and the tuned model."""
    model = copy.deepcopy(setup[0])
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    conv.register_forward_pre_hook(lambda _, args: seen.append(args[0].is_contiguous(
        memory_format=torch.channels_last)))
    return seen, _tune(setup, model=model, **kw)


def test_channels_last_trains_channels_last_weights_on_channels_last_inputs(setup):
    seen_default, default = _conv_inputs_channels_last(setup)
    seen_cl, tuned = _conv_inputs_channels_last(setup, channels_last=True)
    assert seen_default == [False] * STEPS and seen_cl == [True] * STEPS
    conv = next(m for m in tuned.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    # the same training in another memory layout: the weights agree to rounding
    sd = default.state_dict()
    diffs = {k: (_without_key_bias(k, v) - _without_key_bias(k, sd[k])).abs().max().item()
             for k, v in tuned.state_dict().items()}
    assert max(diffs.values()) < 1e-6, max(diffs.items(), key=lambda kv: kv[1])


def test_weight_decay_exclusions_exempt_exactly_biases_norms_and_embeddings(setup):
    # one step over the whole set: the gradients of both runs are equal, so AdamW's decoupled decay is the
    # only difference: theta_0 * lr * wd on decayed tensors, nothing on the excluded ones
    model, train, _ = setup
    lr, wd = 1e-3, 0.5
    one_step = dict(batch_size=len(train), lr=lr, weight_decay_exclusions=True, deterministic=True)
    decayed = dict(_tune(setup, weight_decay=wd, **one_step).named_parameters())
    plain = dict(_tune(setup, weight_decay=0.0, **one_step).named_parameters())
    excluded = 0
    for name, p0 in model.named_parameters():
        if decays(name, p0):
            torch.testing.assert_close(plain[name] - decayed[name], p0.detach() * lr * wd, rtol=1e-4, atol=1e-7)
        else:
            excluded += 1
            assert torch.equal(decayed[name], plain[name]), name
    assert excluded >= 5  # the head bias, layer norms, class and position embeddings, logit scale


def test_shots_seed_draws_the_subset_that_trains(setup):
    train = setup[1]
    draws = {seed: kshot_subset(train, 2, seed) for seed in (0, 1)}
    assert draws[0].samples != draws[1].samples and len(draws[1]) == 6
    for seed in (0, 1):
        tuned = _tune(setup, shots_per_class=2, shots_seed=seed, deterministic=True)
        by_hand = _tune(setup, train=draws[seed], deterministic=True)
        assert all(torch.equal(v, by_hand.state_dict()[k]) for k, v in tuned.state_dict().items())
    other = _tune(setup, shots_per_class=2, shots_seed=0, deterministic=True)
    assert not all(torch.equal(v, tuned.state_dict()[k]) for k, v in other.state_dict().items())


def test_grad_checkpointing_recomputes_blocks_and_keeps_the_result(setup):
    def block_calls(**kw):
        model = copy.deepcopy(setup[0])
        block = next(m for m in model.encoder.modules() if hasattr(m, "grad_checkpointing")).resblocks[0]
        calls = []
        block.register_forward_pre_hook(lambda *_: calls.append(1))
        tuned = _tune(setup, model=model, deterministic=True, **kw)
        return len(calls), tuned

    plain_calls, plain = block_calls()
    ckpt_calls, ckpt = block_calls(grad_checkpointing=True)
    assert plain_calls == STEPS and ckpt_calls == 2 * STEPS  # each block runs again in the backward pass
    assert next(m for m in ckpt.encoder.modules() if hasattr(m, "grad_checkpointing")).grad_checkpointing
    assert all(torch.equal(v, plain.state_dict()[k]) for k, v in ckpt.state_dict().items())


def test_num_workers_load_in_worker_processes_and_train_the_same(setup, tmp_path):
    train = setup[1].subset(range(len(setup[1])))
    load = train.load
    train.load = lambda ref: (tmp_path / str(os.getpid())).touch() or load(ref)  # marks the loading process
    inline = _tune(setup, train=train, deterministic=True)
    assert {p.name for p in tmp_path.iterdir()} == {str(os.getpid())}
    workers = _tune(setup, train=train, deterministic=True, num_workers=2)
    assert len({p.name for p in tmp_path.iterdir()} - {str(os.getpid())}) == 2
    assert all(torch.equal(v, inline.state_dict()[k]) for k, v in workers.state_dict().items())


def test_one_trainrun_says_where_a_run_writes(setup, tmp_path):
    model, train, backbone = setup
    cfg = FinetuneConfig(**BASE, deterministic=True)
    finetune(model, train, backbone, cfg, TrainRun(log_path=tmp_path / "b.jsonl", progress=False,
                                                   checkpoint_dir=tmp_path / "b", name="variant"))
    assert _checkpoints(tmp_path / "b") == ["epoch_001_step_00000007.pt"]
    assert len(_rows(tmp_path / "b.jsonl")) == STEPS
    with pytest.raises(TypeError, match="log_dir"):  # the loose keyword form is gone (CHANGELOG 0.2.0)
        finetune(model, train, backbone, cfg, log_dir=tmp_path)
