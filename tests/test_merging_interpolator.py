"""Per-layer alpha in sweeps: ``merge.Interpolator`` takes a schedule (``LinearParams`` with
glob rules or a depth ramp) wherever it takes an alpha, bit-identical to
``merge_states("linear", ...)``, with tensors of one alpha mixed together."""

from __future__ import annotations

import pytest
import torch
from test_merging_engine import assert_same_states, same_bits, tiny_state

from wiseft.merge import Interpolator, MergeError, interpolate, merge_states
from wiseft.merge.interpolator import SMALL_NUMEL
from wiseft.merge.methods.linear import LinearParams

SCHEDULES = [
    LinearParams(ramp=(0.2, 0.8)),
    LinearParams(ramp=(0.0, 1.0), rules={"*.ln_*": 0.5, "head.*": 1.0}),
    LinearParams(alpha=0.3, rules={"visual.*": 0.0, "transformer.*": 0.9}),
    LinearParams(ramp=(1.0, -0.25), allow_extrapolation=True),
]


def big_state(seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """``tiny_state`` (small tensors: the foreach path) with a large block (pieces on the
    worker threads) and a mid-size one."""
    g = torch.Generator().manual_seed(50 + seed)
    state = tiny_state(seed)
    state["visual.transformer.resblocks.1.mlp.c_fc.weight"] = torch.randn(1100, 1000, generator=g).to(dtype)
    state["transformer.resblocks.0.mlp.c_proj.weight"] = torch.randn(SMALL_NUMEL + 7, generator=g).to(dtype)
    return state


@pytest.mark.parametrize("schedule", SCHEDULES, ids=range(len(SCHEDULES)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_schedule_is_merge_states_bit_for_bit(schedule, dtype):
    a, b = big_state(0, dtype), big_state(1, dtype)
    want = merge_states("linear", a, [b], schedule)
    assert_same_states(Interpolator(a, b, num_threads=2).merge(schedule), want)
    assert_same_states(Interpolator(a, b, num_threads=1).merge(schedule), want)


def test_a_sweep_mixes_floats_and_schedules_in_one_reused_target():
    a, b = tiny_state(0), tiny_state(1)
    interp = Interpolator(a, b)
    sweep = [0.0, SCHEDULES[0], 0.5, SCHEDULES[1], 1.0]
    targets = set()
    for alpha, theta in interp.states(sweep):
        want = interpolate(a, b, alpha) if isinstance(alpha, float) else merge_states("linear", a, [b], alpha)
        assert_same_states(theta, want)
        targets.add(id(theta))
    assert len(targets) == 1


def test_a_constant_schedule_is_the_global_alpha():
    a, b = big_state(0), big_state(1)
    assert_same_states(Interpolator(a, b).merge(LinearParams(alpha=0.37)), interpolate(a, b, 0.37))


def test_tensors_are_grouped_by_alpha_one_foreach_call_each(monkeypatch):
    a, b = tiny_state(0, tied=False), tiny_state(1, tied=False)
    calls = []
    real = torch._foreach_lerp_
    monkeypatch.setattr(torch, "_foreach_lerp_", lambda ts, bs, w: calls.append((len(ts), w)) or real(ts, bs, w))
    Interpolator(a, b).merge(LinearParams(ramp=(0.2, 0.8)))
    # depths: embeddings 0, visual blocks 1/3 and 2/3, the text block 1/2, the rest 1
    assert sorted(w for _, w in calls) == pytest.approx([0.2, 0.4, 0.5, 0.6, 0.8])
    assert len(calls) == len({w for _, w in calls})


def test_load_into_a_model_with_a_schedule():
    torch.manual_seed(0)
    zs = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    ft = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 3))
    a = {k: v.detach().clone() for k, v in zs.state_dict().items()}
    b = ft.state_dict()
    schedule = LinearParams(rules={"0.*": 0.25, "1.*": 0.75})
    Interpolator(a, b).load_into(zs, schedule)
    for k, v in zs.state_dict().items():
        assert same_bits(v, torch.lerp(a[k], b[k], 0.25 if k.startswith("0.") else 0.75)), k


def test_a_schedule_outside_0_1_needs_its_own_opt_in():
    with pytest.raises(ValueError, match="ramp\\[1\\] = 1.5 is outside \\[0, 1\\]"):
        LinearParams(ramp=(0.0, 1.5))
    with pytest.raises(ValueError, match="outside"):
        Interpolator(tiny_state(0), tiny_state(1)).merge(1.5)
    with pytest.raises(MergeError, match="differ at key"):
        Interpolator(tiny_state(0), tiny_state(1)).merge(SCHEDULES[0], out={})
