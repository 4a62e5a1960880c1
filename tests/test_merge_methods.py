"""Merge methods (wiseft.merge): each against its paper's formula, written here again in
float64 numpy; registry-wide contracts (reference, parameters, dtype rules, no aliasing,
chunking of elementwise methods); DARE's seeding; linear's per-layer alpha; layer_depths.

Tolerances: an fp32 operation rounds with relative error at most eps/2 (eps = 2^-23), so a
chain of k operations over terms whose magnitudes sum to S is off by at most about
k * eps/2 * S. ``assert_fp32_close`` takes k and S explicitly; values on a grid of 1/64
(``grid``) make differences and small weighted sums exact in fp32, so trimming, masks and
sign elections agree exactly with the float64 reference and only the last steps round.
"""

from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import same_bits
from hypothesis import given, settings
from hypothesis import strategies as st

from wiseft.core import MERGE_METHODS
from wiseft.merge import (
    MergeError,
    MergeMethod,
    MergeParams,
    TensorInputs,
    apply,
    average_tensor,
    get_method,
    interpolate_tensor,
    layer_depths,
    list_methods,
)
from wiseft.merge.methods.dare import keep_mask, mask_seed
from wiseft.merge.methods.linear import LinearParams, alpha_for
from wiseft.merge.methods.ops import REDUCE_BLOCK, dot64

EPS32 = 2.0 ** -23
METHODS = list_methods()  # registry-wide tests cover a new method as soon as it is registered
# the methods checked below against their paper's formula: a new method adds its test and its name here
FORMULA_TESTED = ["dare", "fisher", "greedy_soup", "linear", "model_stock", "slerp", "soup", "task_arithmetic",
                  "ties"]
HALF = [torch.float16, torch.bfloat16]
seeds = st.integers(0, 2 ** 32 - 1)


# --- helpers -------------------------------------------------------------------------------



def assert_fp32_close(out: torch.Tensor, ref: np.ndarray, ops: int, scale: np.ndarray) -> None:
    """|out - ref| <= ops * eps/2 * scale elementwise (plus a denormal floor)."""
    err = np.abs(out.double().numpy() - ref)
    bound = ops * EPS32 / 2 * np.abs(scale) + 1e-30
    worst = np.argmax(err - bound)
    assert np.all(err <= bound), f"error {err.flat[worst]:.3g} > bound {bound.flat[worst]:.3g} at {worst}"


def grid(rng: np.random.Generator, shape, n: int = 512) -> np.ndarray:
    """Values k / 64, |k| <= n: exact in fp32, and so are their differences."""
    return rng.integers(-n, n + 1, size=shape) / 64.0


def tensors(*arrays: np.ndarray, dtype=torch.float32) -> list[torch.Tensor]:
    return [torch.from_numpy(np.asarray(a, dtype=np.float64)).to(dtype) for a in arrays]


def inputs_for(name: str, rng: np.random.Generator, shape=(6, 5), n_models: int | None = None,
               dtype=torch.float32, key: str = "blocks.0.w", depth: float = 0.5) -> TensorInputs:
    """Random inputs ``name`` accepts: a base when it needs one, its fewest models (or
    ``n_models``), and the extras it declares (positive, as a Fisher is)."""
    method = get_method(name)
    n = n_models or max(method.min_models, 2 if method.max_models is None else 1)
    base, *models = tensors(*(rng.standard_normal(shape) for _ in range(n + 1)), dtype=dtype)
    extras = {e: tuple(tensors(*(rng.exponential(size=shape) + 0.1 for _ in range(n)), dtype=dtype))
              for e in method.extras}
    return TensorInputs(key, depth, base if method.needs_base else None, tuple(models), extras=extras)


# --- the registry --------------------------------------------------------------------------

def test_registry_lists_every_method_and_suggests_a_name():
    assert list_methods() == FORMULA_TESTED
    assert list_methods("t*") == ["task_arithmetic", "ties"]
    assert MERGE_METHODS.names() == METHODS
    assert all(MERGE_METHODS.get(n) is get_method(n) for n in METHODS)
    with pytest.raises(MergeError, match="unknown merge method 'tie'; did you mean 'ties'"):
        get_method("tie")
    with pytest.raises(MergeError, match="known: dare, fisher, greedy_soup, linear"):
        apply("average", inputs_for("soup", np.random.default_rng(0)))


@pytest.mark.parametrize("name", METHODS)
def test_each_method_declares_a_reference_and_valid_default_params(name):
    method = get_method(name)
    assert method.name == name
    assert "arXiv:" in method.reference or "doi:" in method.reference
    assert method.description
    params = method.make_params()
    assert isinstance(params, method.params) and issubclass(method.params, MergeParams)
    assert method.make_params(params.model_dump()) == params  # defaults round-trip
    with pytest.raises(MergeError, match=f"merge method '{name}': no_such_field: Extra inputs"):
        method.make_params({"no_such_field": 1})
    field = next(iter(method.params.model_fields), None)
    if field is not None:
        with pytest.raises(Exception, match="frozen"):
            setattr(params, field, getattr(params, field))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("dtype", HALF)
def test_half_precision_is_merged_in_fp32_and_rounded_once(name, dtype):
    x = inputs_for(name, np.random.default_rng(1), dtype=dtype)
    out = apply(name, x)
    assert out.dtype == dtype
    assert same_bits(out, apply(name, x.mapped(lambda t: t.float())).to(dtype))


@pytest.mark.parametrize("name", METHODS)
def test_integer_tensors_are_copied_from_the_base_or_first_model(name):
    method = get_method(name)
    x = inputs_for(name, np.random.default_rng(2))
    ints = x.mapped(lambda t: (t * 100).to(torch.int64))
    out = apply(name, ints)
    source = ints.base if method.needs_base else ints.models[0]
    assert out.dtype == torch.int64 and torch.equal(out, source)
    assert out.untyped_storage().data_ptr() != source.untyped_storage().data_ptr()


# parameters under which each method returns one of its inputs unchanged (for model_stock:
# models equal to the base, so t = 0): the path most likely to hand back the input itself
IDENTITY = {"dare": {"scale": 0.0}, "fisher": {}, "greedy_soup": {}, "linear": {"alpha": 0.0}, "model_stock": {}, "slerp": {"t": 1.0}, "soup": {},
            "task_arithmetic": {"scale": 0.0}, "ties": {"scale": 0.0}}


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # dot64 once wrote into float64 inputs
def test_result_never_aliases_nor_changes_the_inputs(name, identity, dtype):
    if identity and name not in IDENTITY:
        pytest.skip(f"no identity parameters listed for {name!r}")
    x = inputs_for(name, np.random.default_rng(3), n_models=1 if identity and name != "model_stock" else None,
                   dtype=dtype)
    if identity and name == "model_stock":
        x = TensorInputs(x.key, x.depth, x.base, (x.base, x.base))
    before = [t.clone() for t in x.tensors()]
    out = apply(name, x, IDENTITY[name] if identity else {})
    assert all(same_bits(t, b) for t, b in zip(x.tensors(), before))
    assert all(out.untyped_storage().data_ptr() != t.untyped_storage().data_ptr() for t in x.tensors())


@pytest.mark.parametrize("name", METHODS)
def test_equal_inputs_merge_to_themselves_minus_inf_included(name):
    mask = torch.tensor([[0.0, float("-inf"), 0.0], [0.5, -1.25, float("-inf")]])
    method = get_method(name)
    n = max(method.min_models, 1 if method.max_models == 1 else 3)
    x = TensorInputs("attn_mask", 0.5, mask.clone() if method.needs_base else None,
                     tuple(mask.clone() for _ in range(n)))
    assert same_bits(apply(name, x), mask)


@pytest.mark.parametrize("name", METHODS)
def test_inputs_are_checked_with_an_error_naming_the_tensor(name):
    method = get_method(name)
    x = inputs_for(name, np.random.default_rng(4), n_models=3 if method.max_models is None else 1)
    if method.min_models > 1:
        with pytest.raises(MergeError, match=f"takes {method.min_models} or more fine-tuned model.*'blocks.0.w'"):
            apply(name, TensorInputs(x.key, x.depth, x.base, x.models[:1]))
    if method.max_models is not None:
        with pytest.raises(MergeError, match=f"takes {method.max_models} fine-tuned model.*got 2"):
            apply(name, TensorInputs(x.key, x.depth, x.base, x.models * 2))
    if method.needs_base:
        with pytest.raises(MergeError, match="needs a base .* for 'blocks.0.w'"):
            apply(name, TensorInputs(x.key, x.depth, None, x.models))
    last = len(x.models) - 1
    bad = x.models[:last] + (x.models[last][:, :2],)
    with pytest.raises(MergeError, match=rf"'blocks.0.w' is \(6, 2\) torch.float32 in model {last} but \(6, 5\)"):
        apply(name, TensorInputs(x.key, x.depth, x.base, bad))
    half = x.models[:last] + (x.models[last].half(),)
    with pytest.raises(MergeError, match=rf"'blocks.0.w' is \(6, 5\) torch.float16 in model {last}"):
        apply(name, TensorInputs(x.key, x.depth, x.base, half))
    with pytest.raises(MergeError, match=f"{len(x.models) + 1} weights for {len(x.models)} models"):
        apply(name, TensorInputs(x.key, x.depth, x.base, x.models, (1.0,) * (len(x.models) + 1)))
    other = LinearParams() if name != "linear" else get_method("soup").make_params()
    with pytest.raises(MergeError, match=f"'{name}' takes {method.params.__name__}, not {type(other).__name__}"):
        apply(name, x, other)


@pytest.mark.parametrize("name", ["linear", "slerp", "model_stock"])
def test_methods_without_weights_refuse_them(name):
    x = inputs_for(name, np.random.default_rng(5))
    with pytest.raises(MergeError, match=f"'{name}' takes no per-model weights"):
        apply(name, TensorInputs(x.key, x.depth, x.base, x.models, (2.0,) * len(x.models)))


ELEMENTWISE = [n for n in METHODS if get_method(n).elementwise]


def test_elementwise_flags():
    assert ELEMENTWISE == ["fisher", "greedy_soup", "linear", "soup", "task_arithmetic"]


@pytest.mark.parametrize("name", ELEMENTWISE)
@settings(max_examples=30, deadline=None)
@given(seed=seeds, numel=st.integers(1, 400), cuts=st.lists(st.floats(0, 1), max_size=5),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]))
def test_elementwise_methods_merge_chunks_to_the_same_bits(name, seed, numel, cuts, dtype):
    rng = np.random.default_rng(seed)
    x = inputs_for(name, rng, shape=(numel,), n_models=None if name == "linear" else 3, dtype=dtype)
    if get_method(name).weighted:
        x = TensorInputs(x.key, x.depth, x.base, x.models, tuple(rng.uniform(0.1, 2.0, len(x.models))), x.extras)
    params = {"linear": {"alpha": 0.3}, "task_arithmetic": {"scale": 0.7, "normalize": True}}.get(name, {})
    whole = apply(name, x, params)
    bounds = sorted({0, numel, *(int(c * numel) for c in cuts)})
    pieces = [apply(name, x.mapped(lambda t, a=a, b=b: t[a:b]), params) for a, b in zip(bounds, bounds[1:])]
    assert same_bits(torch.cat(pieces), whole)


def on_1_and_2_threads(fn):
    """``fn()`` computed with torch on one thread, then on two (the thread count restored)."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = fn()
        torch.set_num_threads(2)
        return one, fn()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", [n for n in METHODS if n not in ELEMENTWISE])
def test_per_tensor_methods_give_the_same_bits_whatever_the_thread_count(name):
    x = inputs_for(name, np.random.default_rng(6), shape=(3 * REDUCE_BLOCK + 5,), n_models=3
                   if get_method(name).max_models is None else 1)
    one, two = on_1_and_2_threads(lambda: apply(name, x))
    assert same_bits(one, two) and same_bits(apply(name, x), one)


def test_dot64_does_not_depend_on_the_thread_count():
    # torch's own sum (fp32 or fp64) splits its work by thread count, and so its rounding
    a, b = torch.randn(1_000_003, generator=torch.Generator().manual_seed(0)), torch.randn(1_000_003)
    one, two = on_1_and_2_threads(lambda: dot64(a, b))
    assert one == two
    assert one == pytest.approx(float(np.dot(a.double().numpy(), b.double().numpy())), rel=1e-12)


def _first_model(inputs: TensorInputs, params: MergeParams) -> torch.Tensor:
    return inputs.models[0]


def test_apply_copies_a_result_that_is_an_input():
    first = MergeMethod(name="first", params=MergeParams, reference="arXiv:0000.00000", merge_tensor=_first_model,
                        needs_base=False, elementwise=True)
    x = torch.randn(4, 3)
    out = apply(first, TensorInputs("w", 0.5, None, (x,)))
    assert same_bits(out, x) and out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


# --- linear: WiSE-FT with per-layer alpha ------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=seeds, alpha=st.floats(0, 1), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_linear_with_one_alpha_is_interpolate_tensor_bit_for_bit(seed, alpha, dtype):
    x = inputs_for("linear", np.random.default_rng(seed), dtype=dtype)
    assert same_bits(apply("linear", x, {"alpha": alpha}), interpolate_tensor(x.base, x.models[0], alpha))


@settings(max_examples=30, deadline=None)
@given(seed=seeds, alpha=st.floats(0, 1))
def test_linear_is_the_wiseft_formula(seed, alpha):
    rng = np.random.default_rng(seed)
    t0, t1 = rng.standard_normal((2, 7, 3))
    out = apply("linear", TensorInputs("w", 0.0, *tensors(t0), tuple(tensors(t1))), {"alpha": alpha})
    # lerp: a difference, a product, a sum (or b minus the product above alpha 0.5)
    assert_fp32_close(out, (1 - alpha) * t0 + alpha * t1, ops=4, scale=np.abs(t0) + np.abs(t1))


def test_linear_alpha_per_parameter_rules_in_order_then_ramp_then_alpha():
    params = LinearParams(alpha=0.5, rules={"visual.*.ln_*": 0.1, "visual.*": 0.9, "*.bias": 0.3}, ramp=(0.2, 0.8))
    assert alpha_for("visual.transformer.resblocks.0.ln_1.weight", 0.5, params) == 0.1  # first match wins
    assert alpha_for("visual.transformer.resblocks.0.ln_1.bias", 0.5, params) == 0.1  # though *.bias matches too
    assert alpha_for("visual.proj", 1.0, params) == 0.9  # rules override the ramp
    assert alpha_for("ln_final.bias", 1.0, params) == 0.3
    assert [alpha_for("token_embedding.weight", d, params) for d in (0.0, 0.5, 1.0)] == [0.2, 0.5, 0.8]
    assert alpha_for("token_embedding.weight", 0.25, params) == pytest.approx(0.35, abs=1e-15)
    assert alpha_for("token_embedding.weight", 0.75, LinearParams(alpha=0.4)) == 0.4  # no ramp: the global alpha
    reordered = LinearParams(rules={"*.bias": 0.3, "visual.*.ln_*": 0.1})
    assert alpha_for("visual.transformer.resblocks.0.ln_1.bias", 0.5, reordered) == 0.3


def test_linear_applies_the_alpha_of_each_parameter():
    rng = np.random.default_rng(7)
    params = {"rules": {"head.*": 1.0}, "ramp": (0.0, 0.6)}
    for key, depth, alpha in [("head.weight", 1.0, 1.0), ("blocks.1.w", 0.5, 0.3), ("embed.w", 0.0, 0.0)]:
        x = inputs_for("linear", rng, key=key, depth=depth)
        assert same_bits(apply("linear", x, params), interpolate_tensor(x.base, x.models[0], alpha))


def test_linear_alphas_outside_0_1_need_extrapolation():
    method = get_method("linear")
    with pytest.raises(MergeError, match=r"alpha = 1.5 is outside \[0, 1\]; set allow_extrapolation"):
        method.make_params({"alpha": 1.5})
    with pytest.raises(MergeError, match=r"rules\['head.\*'\] = -0.5 is outside"):
        method.make_params({"rules": {"head.*": -0.5}})
    with pytest.raises(MergeError, match=r"ramp\[1\] = 2.0 is outside"):
        method.make_params({"ramp": (0.0, 2.0)})
    assert method.make_params({"alpha": 1.5, "allow_extrapolation": True}).alpha == 1.5


# --- task arithmetic -------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(1, 4), scale=st.floats(-2, 2), normalize=st.booleans())
def test_task_arithmetic_is_the_papers_formula(seed, n, scale, normalize):
    rng = np.random.default_rng(seed)
    base, *models = rng.standard_normal((n + 1, 5, 4))
    w = rng.uniform(0.1, 2.0, n)
    x = TensorInputs("w", 0.5, *tensors(base), tuple(tensors(*models)), tuple(w))
    out = apply("task_arithmetic", x, {"scale": scale, "normalize": normalize})
    deltas = [w_i * (m - base) for w_i, m in zip(w, models)]
    mixed = sum(deltas) / (w.sum() if normalize else 1.0)
    # per model: a difference, a product, a sum; then a division, the scale and the base
    terms = sum(w_i * (np.abs(m) + np.abs(base)) for w_i, m in zip(w, models)) / (w.sum() if normalize else 1)
    assert_fp32_close(out, base + scale * mixed, ops=3 * n + 4, scale=np.abs(base) + abs(scale) * terms)


# --- TIES ------------------------------------------------------------------------------------

def ties_reference(base, models, weights, density, scale, normalize):
    """The paper's three steps in float64: trim each task vector to its top round(density n)
    magnitudes (every value tying with the k-th largest kept), elect the sign of the sum
    (+ at 0), and average (weighted) the values that agree in sign."""
    trimmed = []
    for m in models:
        d = m - base
        k = min(d.size, max(1, round(density * d.size)))
        threshold = np.sort(np.abs(d).ravel())[::-1][k - 1]
        trimmed.append(np.where(np.abs(d) >= threshold, d, 0.0) if density < 1 else d)
    weighted = [w * t for w, t in zip(weights, trimmed)]
    elected = np.where(sum(weighted) >= 0, 1.0, -1.0)
    agree = [np.sign(x) == elected for x in weighted]
    total = sum(np.where(a, x, 0.0) for a, x in zip(agree, weighted))
    count = sum(np.where(a, w, 0.0) for a, w in zip(agree, weights))
    merged = total / np.where(count == 0, 1.0, count) if normalize else total
    return base + scale * merged


def test_ties_worked_example():
    base = np.zeros(4)
    models = [np.array([1.0, -2.0, 3.0, 0.5]), np.array([-1.0, -1.0, 0.0, -0.5]), np.array([2.0, 4.0, 0.0, 0.0])]
    x = TensorInputs("w", 0.5, *tensors(base), tuple(tensors(*models)))
    # no trimming: sums [2, 1, 3, 0] elect + + + + (+ at 0); the agreeing values [1, 2], [4], [3], [0.5]
    assert apply("ties", x, {"density": 1.0}).tolist() == [1.5, 4.0, 3.0, 0.5]
    # density 0.5 keeps the top 2 of 4 by magnitude, both values tying with the 2nd kept:
    # [0, -2, 3, 0], [-1, -1, 0, 0], [2, 4, 0, 0]; sums [1, 1, 3, 0] elect + + + +; no value agrees at the end
    assert apply("ties", x, {"density": 0.5}).tolist() == [2.0, 4.0, 3.0, 0.0]
    # the disjoint sum instead of the mean, scaled
    assert apply("ties", x, {"density": 1.0, "normalize": False, "scale": 0.5}).tolist() == [1.5, 2.0, 1.5, 0.25]


@settings(max_examples=50, deadline=None)
@given(seed=seeds, n=st.integers(1, 4), density=st.sampled_from([0.1, 0.2, 0.35, 0.5, 1.0]),
       scale=st.sampled_from([1.0, 0.5, 1.7]), normalize=st.booleans(), numel=st.integers(1, 40))
def test_ties_is_the_papers_formula(seed, n, density, scale, normalize, numel):
    rng = np.random.default_rng(seed)
    base, *models = grid(rng, (n + 1, numel), n=8)  # few values: magnitude ties and zero sums happen
    weights = rng.integers(1, 5, n) / 2.0
    x = TensorInputs("w", 0.5, *tensors(base), tuple(tensors(*models)), tuple(weights))
    out = apply("ties", x, {"density": density, "scale": scale, "normalize": normalize})
    ref = ties_reference(base, models, weights, density, scale, normalize)
    # exact up to the division, the scale and the base: three roundings
    assert_fp32_close(out, ref, ops=3, scale=np.abs(ref) + np.abs(base) + np.abs(ref - base))


def test_ties_trims_to_the_top_density_fraction():
    delta = np.arange(1, 101, dtype=np.float64) * np.where(np.arange(100) % 2, -1, 1)
    out = apply("ties", TensorInputs("w", 0.5, torch.zeros(100), tuple(tensors(delta))), {"density": 0.2})
    assert np.flatnonzero(out.numpy()).tolist() == list(range(80, 100))
    assert np.array_equal(out.numpy()[80:], delta[80:])


# --- DARE ------------------------------------------------------------------------------------

def test_dare_masks_are_seeded_by_a_stable_hash_of_seed_key_and_model():
    expected = int.from_bytes(hashlib.blake2b(b'[0, "blocks.0.w", 1]', digest_size=8).digest(), "little")
    assert mask_seed(0, "blocks.0.w", 1) == expected & (2 ** 63 - 1)
    a = keep_mask(0, "blocks.0.w", 1, (50, 40), 0.5)
    assert torch.equal(a, keep_mask(0, "blocks.0.w", 1, (50, 40), 0.5))
    for other in [keep_mask(1, "blocks.0.w", 1, (50, 40), 0.5), keep_mask(0, "blocks.1.w", 1, (50, 40), 0.5),
                  keep_mask(0, "blocks.0.w", 0, (50, 40), 0.5)]:
        assert 0.4 < (other != a).float().mean() < 0.6  # independent masks differ in about half the places


def test_dare_keeps_one_minus_drop_rate_of_the_elements():
    n, p = 200_000, 0.9
    kept = int(keep_mask(0, "w", 0, (n,), p).sum())
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * (1 - p)) < 5 * sigma


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(1, 3), p=st.sampled_from([0.0, 0.3, 0.5, 0.9]), scale=st.floats(0.25, 2),
       normalize=st.booleans(), mask_seed_=st.integers(0, 5))
def test_dare_is_the_papers_formula(seed, n, p, scale, normalize, mask_seed_):
    rng = np.random.default_rng(seed)
    base, *models = grid(rng, (n + 1, 9, 7))
    weights = rng.integers(1, 5, n) / 2.0
    x = TensorInputs("blocks.2.w", 0.5, *tensors(base), tuple(tensors(*models)), tuple(weights))
    params = {"drop_rate": p, "scale": scale, "normalize": normalize, "seed": mask_seed_}
    out = apply("dare", x, params)
    masks = [keep_mask(mask_seed_, "blocks.2.w", i, base.shape, p).numpy() for i in range(n)]
    mixed = sum(w * m * (t - base) / (1 - p) for w, m, t in zip(weights, masks, models))
    ref = base + scale * mixed / (weights.sum() if normalize else 1.0)
    terms = sum(w * np.abs(t - base) / (1 - p) for w, t in zip(weights, models))
    # per model: a division, a product, a sum; then a division, the scale and the base
    assert_fp32_close(out, ref, ops=3 * n + 4, scale=np.abs(base) + scale * terms)
    assert same_bits(out, apply("dare", x, params))  # reproducible


@settings(max_examples=25, deadline=None)
@given(seed=seeds, n=st.integers(2, 4), p=st.sampled_from([0.5, 0.75]))  # 1 / (1 - p) exact: elections agree
def test_dare_with_sign_consensus_is_ties_on_the_dropped_vectors(seed, n, p):
    rng = np.random.default_rng(seed)
    base, *models = grid(rng, (n + 1, 30), n=8)
    x = TensorInputs("w", 0.5, *tensors(base), tuple(tensors(*models)))
    out = apply("dare", x, {"drop_rate": p, "sign_consensus": True, "normalize": True})
    dropped = [base + keep_mask(0, "w", i, base.shape, p).numpy() * (m - base) / (1 - p) for i, m in enumerate(models)]
    ref = ties_reference(base, dropped, np.ones(n), 1.0, 1.0, True)
    assert_fp32_close(out, ref, ops=4, scale=np.abs(base) + sum(np.abs(d - base) for d in dropped))


def test_dare_without_dropping_is_task_arithmetic_bit_for_bit():
    x = inputs_for("dare", np.random.default_rng(8), n_models=3)
    assert same_bits(apply("dare", x, {"drop_rate": 0.0, "scale": 0.8}), apply("task_arithmetic", x, {"scale": 0.8}))


@pytest.mark.slow
def test_dare_gives_the_same_bits_in_another_process():
    x = inputs_for("dare", np.random.default_rng(9), n_models=2)
    here = apply("dare", x, {"seed": 3})
    code = ("import sys, numpy as np, torch; sys.path.insert(0, 'tests'); "
            "from test_merge_methods import inputs_for; from wiseft.merge import apply; "
            "x = inputs_for('dare', np.random.default_rng(9), n_models=2); "
            "sys.stdout.write(apply('dare', x, {'seed': 3}).double().numpy().tobytes().hex())")
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                           cwd=Path(__file__).parents[1]).stdout
    assert other == here.double().numpy().tobytes().hex()


# --- SLERP -----------------------------------------------------------------------------------

def slerp_reference(t, v0, v1):
    """Shoemake's formula on the flattened tensors, linear when nearly colinear (as mergekit)."""
    cos = np.clip(np.dot(v0.ravel(), v1.ravel()) / (np.linalg.norm(v0) * np.linalg.norm(v1)), -1, 1)
    if abs(cos) > 0.9995:
        return (1 - t) * v0 + t * v1
    omega = np.arccos(cos)
    return (np.sin((1 - t) * omega) * v0 + np.sin(t * omega) * v1) / np.sin(omega)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, t=st.floats(0, 1), numel=st.integers(2, 60))
def test_slerp_is_shoemakes_formula(seed, t, numel):
    rng = np.random.default_rng(seed)
    v0, v1 = tensors(*rng.standard_normal((2, numel)))
    a, b = v0.double().numpy(), v1.double().numpy()
    out = apply("slerp", TensorInputs("w", 0.5, v0, (v1,)), {"t": t})
    # coefficients from float64 sums, rounded to fp32 once each; two products and a sum
    assert_fp32_close(out, slerp_reference(t, a, b), ops=6, scale=(np.abs(a) + np.abs(b)) / 0.03)


def test_slerp_keeps_the_norm_of_orthonormal_tensors_and_halves_the_angle():
    v0, v1 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    out = apply("slerp", TensorInputs("w", 0.5, v0, (v1,)), {"t": 0.5})
    torch.testing.assert_close(out, torch.tensor([math.sqrt(0.5), 0.0, math.sqrt(0.5)]), atol=2 * EPS32, rtol=0)
    third = apply("slerp", TensorInputs("w", 0.5, v0, (v1,)), {"t": 1 / 3})
    torch.testing.assert_close(third, torch.tensor([math.cos(math.pi / 6), 0.0, 0.5]), atol=2 * EPS32, rtol=0)


def test_slerp_ends_are_exact_and_degenerate_pairs_are_linear():
    rng = np.random.default_rng(10)
    v0, v1 = tensors(*rng.standard_normal((2, 5, 3)))
    assert same_bits(apply("slerp", TensorInputs("w", 0.5, v0, (v1,)), {"t": 0.0}), v0)
    assert same_bits(apply("slerp", TensorInputs("w", 0.5, v0, (v1,)), {"t": 1.0}), v1)
    for other in (2.5 * v0, -v0, torch.zeros_like(v0)):  # colinear, opposite, zero norm
        out = apply("slerp", TensorInputs("w", 0.5, v0, (other,)), {"t": 0.3})
        assert same_bits(out, interpolate_tensor(v0, other, 0.3))


# --- Model Stock -------------------------------------------------------------------------------

def model_stock_reference(base, models):
    """Jang et al.: t = N cos / (1 + (N - 1) cos), cos the mean pairwise cosine of the task
    vectors (0 for a zero vector, negative means clamped to 0), t * mean + (1 - t) * base."""
    deltas = [(m - base).ravel() for m in models]
    cosines = [0.0 if not np.any(a) or not np.any(b) else np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b))
               for i, a in enumerate(deltas) for b in deltas[i + 1:]]
    cos = max(np.mean(cosines), 0.0)
    n = len(models)
    t = n * cos / (1 + (n - 1) * cos)
    return t * np.mean(models, axis=0) + (1 - t) * base


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(2, 5), numel=st.integers(1, 50), shift=st.floats(-1, 1))
def test_model_stock_is_the_papers_formula(seed, n, numel, shift):
    rng = np.random.default_rng(seed)
    base = grid(rng, (numel,))
    common = grid(rng, (numel,)) * shift  # a shared direction, so cosines range over (-1, 1)
    models = [base + np.round((common + grid(rng, (numel,), n=256)) * 64) / 64 for _ in range(n)]
    out = apply("model_stock", TensorInputs("w", 0.5, *tensors(base), tuple(tensors(*models))))
    ref = model_stock_reference(base, models)
    # the mean: n - 1 sums and a division; then lerp: three roundings
    assert_fp32_close(out, ref, ops=n + 4, scale=np.abs(base) + sum(np.abs(m) for m in models))


def test_model_stock_ratio_from_the_angle():
    base = torch.zeros(2)
    # two fine-tunes 60 degrees apart: t = 2 (1/2) / (1 + 1/2) = 2/3 of the way to their mean
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])
    out = apply("model_stock", TensorInputs("w", 0.5, base, (a, b)))
    torch.testing.assert_close(out, (a + b) / 2 * (2 / 3), atol=4 * EPS32, rtol=0)
    same = apply("model_stock", TensorInputs("w", 0.5, base, (a, a)))  # cos 1: t = 1, the mean itself
    assert same_bits(same, a)
    for other in (torch.tensor([0.0, 1.0]), torch.tensor([-1.0, 0.2])):  # orthogonal, opposed: t = 0
        assert same_bits(apply("model_stock", TensorInputs("w", 0.5, base, (a, other))), base)
    # a fine-tune equal to the anchor: its pairs count as cosine 0, so cos = (1 + 0 + 0) / 3,
    # t = 3 (1/3) / (1 + 2/3) = 0.6, and the result 0.6 * mean(a, a, 0) = 0.4 a
    out = apply("model_stock", TensorInputs("w", 0.5, base, (a, a, base)))
    torch.testing.assert_close(out, 0.4 * a, atol=4 * EPS32, rtol=0)


# --- soup ------------------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(seed=seeds, n=st.integers(1, 4), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_soup_is_average_tensor_bit_for_bit_and_the_weighted_mean(seed, n, dtype):
    rng = np.random.default_rng(seed)
    models = rng.standard_normal((n, 4, 6))
    weights = tuple(rng.uniform(0.1, 3.0, n))
    ts = tensors(*models, dtype=dtype)
    out = apply("soup", TensorInputs("w", 0.5, None, tuple(ts), weights))
    assert same_bits(out, average_tensor(ts, weights))
    if dtype == torch.float32:
        w = np.array(weights)
        ref = np.tensordot(w, models, axes=1) / w.sum()
        assert_fp32_close(out, ref, ops=2 * n + 2, scale=np.tensordot(w, np.abs(models), axes=1) / w.sum())


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(1, 4), floor=st.sampled_from([1e-8, 0.25]),
       dtype=st.sampled_from([torch.float32, torch.float16]))
def test_fisher_is_the_papers_formula(seed, n, floor, dtype):
    """Matena and Raffel's merge: sum_i c_i theta_i / sum_i c_i, c_i = w_i max(F_i, floor);
    Fishers of 0 (a parameter a model is insensitive to) count as the floor."""
    rng = np.random.default_rng(seed)
    models = tensors(*rng.standard_normal((n, 4, 6)), dtype=dtype)
    fishers = tensors(*(rng.exponential(size=(n, 4, 6)) * (rng.random((n, 4, 6)) > 0.3)), dtype=dtype)
    weights = tuple(rng.uniform(0.1, 2.0, n))
    out = apply("fisher", TensorInputs("w", 0.5, None, tuple(models), weights, {"fisher": tuple(fishers)}),
                {"fisher_floor": floor})
    assert out.dtype == dtype
    x = np.stack([m.double().numpy() for m in models])
    c = np.array(weights)[:, None, None] * np.maximum(np.stack([f.double().numpy() for f in fishers]), floor)
    ref = (c * x).sum(0) / c.sum(0)
    if n == 1:
        assert same_bits(out, models[0])  # one model alone: an exact copy
    elif dtype == torch.float32:
        assert_fp32_close(out, ref, ops=3 * n + 3, scale=(c * np.abs(x)).sum(0) / c.sum(0))
    else:  # one rounding of the fp32 result to fp16
        fp32 = apply("fisher", TensorInputs("w", 0.5, None, tuple(m.float() for m in models), weights,
                                            {"fisher": tuple(f.float() for f in fishers)}), {"fisher_floor": floor})
        assert same_bits(out, fp32.half())


def test_fisher_without_fishers_is_the_weighted_average():
    a, b = tensors([1.0, 2.0, 4.0], [3.0, 6.0, 0.0])
    assert apply("fisher", TensorInputs("w", 0.5, None, (a, b), (1.0, 3.0))).tolist() == [2.5, 5.0, 1.0]
    f = tensors([1.0, 0.0, 3.0], [3.0, 0.0, 1.0])
    x = TensorInputs("w", 0.5, None, (a, b), (1.0, 1.0), {"fisher": tuple(f)})
    assert apply("fisher", x, {"fisher_floor": 0.5}).tolist() == [(1 + 3 * 3) / 4, (0.5 * 2 + 0.5 * 6) / 1, 12 / 4]


def test_greedy_soup_is_a_procedure_whose_final_step_is_the_uniform_soup():
    method = get_method("greedy_soup")
    assert method.needs == ("evaluate",) and method.procedure.__name__ == "greedy_soup"
    models = tuple(tensors(*np.random.default_rng(0).standard_normal((3, 4, 6))))
    assert same_bits(apply("greedy_soup", TensorInputs("w", 0.5, None, models)), average_tensor(models, [1.0] * 3))
    from wiseft.merge import merge_states

    with pytest.raises(MergeError, match="'greedy_soup' needs evaluate beyond the weights; run it with "
                                         "wiseft.merge.methods.greedy_soup.greedy_soup"):
        merge_states("greedy_soup", None, [{"w": models[0]}])


# --- extras: the path a Fisher merge takes ------------------------------------------------------

def _fisher_merge(inputs: TensorInputs, params: MergeParams) -> torch.Tensor:
    fishers = inputs.extras["fisher"]
    num = sum(f * m for f, m in zip(fishers, inputs.models))
    return num / sum(fishers)


def test_a_method_declaring_extras_gets_them_checked_and_upcast():
    fisher = MergeMethod(name="fisher", params=MergeParams, reference="arXiv:2111.09832", merge_tensor=_fisher_merge,
                         needs_base=False, elementwise=True, extras=("fisher",))
    a, b = torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([3.0, 6.0], dtype=torch.float16)
    f = (torch.tensor([1.0, 3.0], dtype=torch.float16), torch.tensor([1.0, 1.0], dtype=torch.float16))
    out = apply(fisher, TensorInputs("w", 0.5, None, (a, b), extras={"fisher": f}))
    assert out.dtype == torch.float16 and out.tolist() == [2.0, 3.0]
    with pytest.raises(MergeError, match="needs 2 'fisher' tensors shaped \\(2,\\) for 'w', got \\[\\(2,\\)\\]"):
        apply(fisher, TensorInputs("w", 0.5, None, (a, b), extras={"fisher": f[:1]}))


# --- layer depths --------------------------------------------------------------------------------

def test_layer_depths_of_an_open_clip_vit():
    open_clip = pytest.importorskip("open_clip")
    model = open_clip.CLIP(embed_dim=8, vision_cfg={"image_size": 16, "layers": 3, "width": 16, "head_width": 8,
                                                    "patch_size": 8},
                           text_cfg={"context_length": 8, "vocab_size": 50, "width": 16, "heads": 2, "layers": 2})
    depths = layer_depths(model.state_dict())
    assert list(depths) == list(model.state_dict())
    expected = {
        "visual.conv1.weight": 0.0, "visual.class_embedding": 0.0, "visual.positional_embedding": 0.0,
        "visual.ln_pre.weight": 0.0, "token_embedding.weight": 0.0, "positional_embedding": 0.0,
        "visual.transformer.resblocks.0.attn.in_proj_weight": 1 / 4,
        "visual.transformer.resblocks.2.mlp.c_proj.bias": 3 / 4,
        "transformer.resblocks.0.ln_1.weight": 1 / 3, "transformer.resblocks.1.mlp.c_fc.weight": 2 / 3,
        "visual.ln_post.weight": 1.0, "visual.proj": 1.0, "ln_final.bias": 1.0, "text_projection": 1.0,
        "logit_scale": 1.0,
    }
    assert {k: depths[k] for k in expected} == expected
    assert set(depths.values()) == {0.0, 1 / 4, 2 / 4, 3 / 4, 1 / 3, 2 / 3, 1.0}


def test_layer_depths_of_bert_hf_clip_and_resnet_names():
    bert = (["bert.embeddings.word_embeddings.weight", "bert.embeddings.LayerNorm.weight"]
            + [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(12)]
            + ["bert.pooler.dense.weight", "classifier.weight"])
    d = layer_depths(bert)
    assert d["bert.embeddings.word_embeddings.weight"] == d["bert.embeddings.LayerNorm.weight"] == 0.0
    assert [d[f"bert.encoder.layer.{i}.attention.self.query.weight"] for i in (0, 5, 11)] == [1 / 13, 6 / 13, 12 / 13]
    assert d["bert.pooler.dense.weight"] == d["classifier.weight"] == 1.0
    hf_clip = ["vision_model.embeddings.patch_embedding.weight", "vision_model.pre_layrnorm.weight",
               "vision_model.encoder.layers.0.mlp.fc1.weight", "vision_model.encoder.layers.3.mlp.fc1.weight",
               "vision_model.post_layernorm.weight", "text_model.embeddings.token_embedding.weight",
               "text_model.encoder.layers.0.mlp.fc1.weight", "text_model.encoder.layers.1.mlp.fc1.weight",
               "text_model.final_layer_norm.weight", "visual_projection.weight", "logit_scale"]
    d = layer_depths(hf_clip)
    assert [d[k] for k in hf_clip] == [0.0, 0.0, 1 / 3, 2 / 3, 1.0, 0.0, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]
    resnet = ["visual.conv1.weight", "visual.bn1.weight", "visual.layer1.0.conv1.weight", "visual.layer1.1.bn2.bias",
              "visual.layer2.0.conv1.weight", "visual.layer2.0.downsample.0.weight", "visual.attnpool.c_proj.weight"]
    d = layer_depths(resnet)
    assert [d[k] for k in resnet] == [0.0, 0.0, 1 / 4, 2 / 4, 3 / 4, 3 / 4, 1.0]


HALF_INSIDE = [n for n in METHODS if get_method(n).half_inside]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", HALF_INSIDE)
def test_a_method_that_computes_half_types_in_fp32_itself_gets_them_as_they_are(name, dtype):
    # the same bits as from apply's fp32 copies of every input, without those copies
    from dataclasses import replace

    assert HALF_INSIDE == ["greedy_soup", "linear", "soup"]
    method = get_method(name)
    params = {"alpha": 0.3} if name == "linear" else None
    for seed in range(5):
        x = inputs_for(name, np.random.default_rng(seed), shape=(7, 9), n_models=None if name == "linear" else 3,
                       dtype=dtype)
        direct = apply(method, x, params)
        upcast = apply(replace(method, half_inside=False), x, params)
        assert direct.dtype == dtype and same_bits(direct, upcast)
