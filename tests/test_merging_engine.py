"""The in-memory engine, ``wiseft.merge.merge_states``: any registered method over whole
state dicts, bit-identical to today's engines for the methods they had (linear and soups),
with the plan, tied weights, selection, aliasing and call checks of every merge."""

from __future__ import annotations

import pytest
import torch
from conftest import same_bits

from wiseft.config import MergeConfig
from wiseft.merge import (
    MergeError,
    TensorInputs,
    apply,
    get_method,
    interpolate,
    layer_depths,
    list_methods,
    merge_states,
    weighted_average,
)


def assert_same_states(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        assert same_bits(got[k], want[k]), k


def tiny_state(seed: int, tied: bool = True) -> dict[str, torch.Tensor]:
    """A CLIP-shaped state dict: fp32 blocks of two towers, fp16 and bf16 norms, an fp64
    scalar, an int64 buffer that differs per model, an additive -inf mask the same in
    every model, and (``tied``) an embedding tied to the output head."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(dtype)

    state = {
        "token_embedding.weight": rand(10, 6),
        "visual.conv1.weight": rand(6, 3, 2, 2),
        "visual.transformer.resblocks.0.attn.in_proj_weight": rand(18, 6),
        "visual.transformer.resblocks.0.ln_1.weight": rand(6, dtype=torch.float16),
        "visual.transformer.resblocks.1.attn.in_proj_weight": rand(18, 6),
        "visual.transformer.resblocks.1.ln_1.weight": rand(6, dtype=torch.bfloat16),
        "transformer.resblocks.0.mlp.c_fc.weight": rand(24, 6),
        "attn_mask": torch.full((4, 4), float("-inf")).triu_(1),
        "bn.num_batches_tracked": torch.tensor(seed + 3),
        "logit_scale": rand((), dtype=torch.float64),
        "head.weight": rand(10, 6),
    }
    if tied:
        state["head.weight"] = state["token_embedding.weight"]
    return state


def inputs_for(name: str, n_models: int | None = None, seed: int = 0):
    """(base or None, models, extras) that method ``name`` accepts."""
    method = get_method(name)
    n = n_models or max(method.min_models, 2 if method.max_models is None else 1)
    base = tiny_state(seed) if method.needs_base else None
    models = [tiny_state(seed + 1 + i) for i in range(n)]
    extras = {e: [{k: v.float().abs() + 0.1 * (i + 1) for k, v in m.items() if v.is_floating_point()}
                  for i, m in enumerate(models)] for e in method.extras}
    return base, models, extras


TIED = {"head.weight": "token_embedding.weight"}
WEIGHT_SPACE = [n for n in list_methods() if not get_method(n).needs]


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.71, 1.0])
def test_linear_with_one_alpha_is_interpolate_bit_for_bit(alpha):
    a, b = tiny_state(0), tiny_state(1)
    assert_same_states(merge_states("linear", a, [b], {"alpha": alpha}), interpolate(a, b, alpha))


def test_soup_is_weighted_average_bit_for_bit():
    thetas = [tiny_state(i) for i in range(3)]
    assert_same_states(merge_states("soup", None, thetas), weighted_average(thetas))
    w = [0.5, 0.2, 0.3]
    assert_same_states(merge_states("soup", None, thetas, weights=w), weighted_average(thetas, w))
    settings = MergeConfig(exclude=["head.*", "token_*"], keep=2)
    assert_same_states(merge_states("soup", None, thetas, weights=w, settings=settings),
                       weighted_average(thetas, w, settings))


def test_selection_follows_merge_config_like_interpolate():
    a, b = tiny_state(0), tiny_state(1)
    b["new.head"] = torch.ones(3)
    settings = MergeConfig(exclude=["new.*", "visual.conv1.*"])
    got = merge_states("linear", a, [b], {"alpha": 0.4}, settings=settings)
    assert_same_states(got, interpolate(a, b, 0.4, settings))
    assert same_bits(got["visual.conv1.weight"], b["visual.conv1.weight"])  # kept from the first model
    got = merge_states("linear", a, [b], {"alpha": 0.4}, settings=MergeConfig(exclude=["new.*"], keep=0))
    assert "new.head" not in got  # kept from the base, which lacks it: dropped
    with pytest.raises(MergeError, match="key 'new.head' is in the second state dict but not in the first"):
        merge_states("linear", a, [b])


@pytest.mark.parametrize("name", WEIGHT_SPACE)
def test_every_method_is_apply_per_tensor_at_its_depth(name):
    base, models, extras = inputs_for(name)
    got = merge_states(name, base, models, extras=extras)
    depths = layer_depths(got)
    thetas = ([base] if base is not None else []) + models
    for k, v in got.items():
        k = TIED.get(k, k)  # a tied pair is merged once, under its first name (DARE's mask, a ramp's alpha)
        x = TensorInputs(k, depths[k], None if base is None else base[k], tuple(m[k] for m in models),
                         extras={e: tuple(f[k] for f in fs) for e, fs in extras.items() if k in fs[0]})
        assert same_bits(v, apply(name, x)), k
    assert got["bn.num_batches_tracked"].item() == thetas[0]["bn.num_batches_tracked"].item()
    assert got["attn_mask"].equal(thetas[0]["attn_mask"])  # -inf stays -inf


@pytest.mark.parametrize("name", WEIGHT_SPACE)
def test_tied_weights_stay_tied_and_inputs_are_never_aliased_nor_changed(name):
    base, models, extras = inputs_for(name)
    inputs = ([base] if base is not None else []) + models
    before = [{k: v.clone() for k, v in t.items()} for t in inputs]
    got = merge_states(name, base, models, extras=extras, settings=MergeConfig(exclude=["visual.conv1.*"]))
    assert got["head.weight"] is got["token_embedding.weight"]
    storages = {v.untyped_storage().data_ptr() for t in inputs for v in t.values()}
    assert not storages & {v.untyped_storage().data_ptr() for v in got.values()}
    for t, b in zip(inputs, before):
        assert_same_states(t, b)


def test_ranges_depth_from_the_whole_key_set():
    base, (ft,) = tiny_state(0, tied=False), [tiny_state(1, tied=False)]
    got = merge_states("linear", base, [ft], {"ramp": [0.0, 1.0]})
    key = "visual.transformer.resblocks.0.attn.in_proj_weight"  # block 0 of 2: depth 1/3
    assert same_bits(got[key], torch.lerp(base[key], ft[key], 1 / 3))
    assert same_bits(got["visual.conv1.weight"], base["visual.conv1.weight"])  # depth 0: alpha 0
    assert same_bits(got["head.weight"], ft["head.weight"])  # depth 1: alpha 1


@pytest.mark.parametrize("call, message", [
    (lambda a, b: merge_states("lineer", a, [b]), "unknown merge method 'lineer'; did you mean 'linear'?"),
    (lambda a, b: merge_states("linear", a, [b, b]), "'linear' takes 1 fine-tuned model(s), got 2"),
    (lambda a, b: merge_states("model_stock", a, [b]), "'model_stock' takes 2 or more fine-tuned model(s), got 1"),
    (lambda a, b: merge_states("ties", None, [b]), "'ties' needs a base model"),
    (lambda a, b: merge_states("soup", a, [b]), "'soup' takes no base model"),
    (lambda a, b: merge_states("soup", None, [a, b], weights=[1.0]), "'soup': 1 weights for 2 models"),
    (lambda a, b: merge_states("slerp", a, [b], weights=[0.5]), "'slerp' takes no per-model weights"),
    (lambda a, b: merge_states("ties", a, [b], {"density": 2}), "'ties': density: Input should be less"),
    (lambda a, b: merge_states("ties", a, [b], {"densty": 0.5}), "'ties': densty: Extra inputs"),
    (lambda a, b: merge_states("linear", a, [b], {"alpha": 1.5}), "alpha = 1.5 is outside"),
    (lambda a, b: merge_states("ties", a, [b], extras={"fisher": [a]}), "'ties' reads no 'fisher' extras"),
])
def test_bad_calls_are_merge_errors_naming_the_problem(call, message):
    with pytest.raises(MergeError) as e:
        call(tiny_state(0), tiny_state(1))
    assert message in str(e.value)


def test_settings_allow_extrapolation_reaches_linear():
    a, b = tiny_state(0), tiny_state(1)
    got = merge_states("linear", a, [b], {"alpha": 1.5}, settings=MergeConfig(allow_extrapolation=True))
    assert_same_states(got, interpolate(a, b, 1.5, MergeConfig(allow_extrapolation=True)))
