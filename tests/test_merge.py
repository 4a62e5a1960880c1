import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wiseft.config import MergeConfig
from wiseft.merge import Interpolator, MergeError, interpolate
from wiseft.merge.plan import check_compatible


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    net[1].num_batches_tracked.fill_(seed + 5)  # an integer buffer that differs between the two
    return net


def _states():
    return _net(0).state_dict(), _net(1).state_dict()


def test_ends_are_exact_and_integer_buffers_unchanged():
    a, b = _states()
    m0, m1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for k in a:
        assert torch.equal(m0[k], a[k])
        if a[k].is_floating_point():
            assert torch.equal(m1[k], b[k])
    assert m1["1.num_batches_tracked"].item() == a["1.num_batches_tracked"].item() == 5
    assert m1["1.num_batches_tracked"].dtype == torch.long


@settings(max_examples=40, deadline=None)
@given(alpha=st.floats(0.0, 1.0), beta=st.floats(0.0, 1.0))
def test_linear_in_alpha(alpha, beta):
    a, b = _states()
    ma, mb = interpolate(a, b, alpha), interpolate(a, b, beta)
    mid = interpolate(a, b, (alpha + beta) / 2)
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(mid[k], (ma[k] + mb[k]) / 2, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(ma[k], (1 - alpha) * a[k] + alpha * b[k], atol=1e-6, rtol=1e-5)


_HALF_A = torch.tensor([1.0, 2.0, 1000.0], dtype=torch.float16)
_HALF_B = torch.tensor([1.5, -2.0, 1001.0], dtype=torch.float16)


@pytest.mark.parametrize("alpha, expect", [
    (0.5, [1.25, 0.0, 1000.5]),  # every mix representable in fp16: exact
    (0.25, [1.125, 1.0, 1000.0]),  # 1000.25 is halfway between fp16 neighbours: rounds to even, 1000.0
    (0.75, [1.375, -1.0, 1001.0]),  # 1000.75: halfway between 1000.5 and 1001.0, rounds to even
])
def test_half_precision_mixes_are_exact_where_representable(alpha, expect):
    out = interpolate({"w": _HALF_A}, {"w": _HALF_B}, alpha)["w"]
    assert out.dtype == torch.float16
    assert out.tolist() == expect


@settings(max_examples=20, deadline=None)
@given(alpha=st.floats(0.0, 1.0))
@example(alpha=0.4862098775200622)  # 1.0 and -1.0 mix to 0.055: the fp32 error is relative to the inputs
def test_half_precision_mixed_in_fp32(alpha):
    """One rounding to fp16 of the mix computed in fp32: within half an fp16 ulp of the
    exact value (float64), plus the fp32 computation's few ulps (2^-22 relative to the
    larger input: a mix of values of opposite sign cancels, and its error does not)."""
    out = interpolate({"w": _HALF_A}, {"w": _HALF_B}, alpha)["w"]
    assert out.dtype == torch.float16
    exact = (1 - alpha) * _HALF_A.double() + alpha * _HALF_B.double()
    ulp = 2.0 ** (torch.floor(torch.log2(exact.abs().clamp_min(2.0 ** -14))) - 10)  # fp16 spacing at |exact|
    scale = torch.maximum(_HALF_A.double().abs(), _HALF_B.double().abs())
    assert ((out.double() - exact).abs() <= ulp / 2 + scale * 2.0 ** -22).all(), (alpha, out, exact)


def test_mismatch_errors_name_the_first_problem():
    a, b = _states()
    with pytest.raises(MergeError, match="'2.bias'.*not in the second"):
        check_compatible(a, {k: v for k, v in b.items() if k != "2.bias"})
    with pytest.raises(MergeError, match=r"'0.weight' has shape \(8, 4\).*\(8, 5\)"):
        check_compatible(a, {**b, "0.weight": torch.zeros(8, 5)})
    with pytest.raises(MergeError, match="'0.weight' has dtype torch.float32.*torch.float16"):
        check_compatible(a, {**b, "0.weight": b["0.weight"].half()})


def test_alpha_outside_range_needs_opt_in():
    a, b = _states()
    with pytest.raises(ValueError, match="outside"):
        interpolate(a, b, 1.5)
    out = interpolate(a, b, 1.5, MergeConfig(allow_extrapolation=True))
    torch.testing.assert_close(out["0.bias"], a["0.bias"] + 1.5 * (b["0.bias"] - a["0.bias"]))


def test_no_aliasing_and_repeatable_sweeps():
    a, b = _states()
    a_copy = {k: v.clone() for k, v in a.items()}
    m = interpolate(a, b, 0.0)
    m["0.weight"].add_(1.0)
    assert torch.equal(a["0.weight"], a_copy["0.weight"])  # the result never aliases an input

    net = _net(2)
    interp = Interpolator(a, b)
    sweeps = []
    for _ in range(2):
        sweeps.append([{k: v.clone() for k, v in interp.load_into(net, al).state_dict().items()}
                       for al in (0.0, 0.3, 1.0, 0.3, 0.0)])
    for s1, s2 in zip(*sweeps):
        assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert all(torch.equal(sweeps[0][0][k], a[k]) for k in a)  # back at alpha 0 after the sweep
    assert all(torch.equal(v, a_copy[k]) for k, v in a.items())


def test_interpolator_refuses_a_model_that_aliases_its_inputs():
    net = _net(0)
    with pytest.raises(MergeError, match="aliases"):
        Interpolator(net.state_dict(), _net(1).state_dict()).load_into(net, 0.5)


# --- engine properties (hypothesis) -----------------------------------------------------

from wiseft.merge import interpolate_tensor  # noqa: E402
from wiseft.merge.interpolator import SMALL_NUMEL  # noqa: E402

_FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _pair(seed: int, dtype: torch.dtype, n: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g).to(dtype), torch.randn(n, generator=g).to(dtype)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(_FLOATS), n=st.integers(0, 300))
def test_property_exact_at_the_ends(seed, dtype, n):
    a, b = _pair(seed, dtype, n)
    assert torch.equal(interpolate({"x": a}, {"x": b}, 0.0)["x"], a)
    assert torch.equal(interpolate({"x": a}, {"x": b}, 1.0)["x"], b)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from(_FLOATS),
       alpha=st.floats(0.0, 1.0), beta=st.floats(0.0, 1.0))
def test_property_linear_in_alpha_for_every_dtype(seed, dtype, alpha, beta):
    a, b = _pair(seed, dtype, 257)
    f = lambda al: interpolate({"x": a}, {"x": b}, al)["x"].double()  # noqa: E731
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    expect = (1 - alpha) * a.double() + alpha * b.double()
    torch.testing.assert_close(f(alpha), expect, atol=tol * 4, rtol=tol)
    torch.testing.assert_close(f((alpha + beta) / 2), (f(alpha) + f(beta)) / 2, atol=tol * 8, rtol=tol)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), alpha=st.floats(0.0, 1.0),
       dtype=st.sampled_from([torch.int64, torch.int32, torch.uint8, torch.bool]))
def test_property_integer_and_bool_buffers_unchanged(seed, alpha, dtype):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 2, (9,), generator=g).to(dtype)
    b = torch.randint(0, 2, (9,), generator=g).to(dtype)
    out = interpolate({"n": a, "w": a.float()}, {"n": b, "w": b.float()}, alpha)
    assert out["n"].dtype == dtype and torch.equal(out["n"], a)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), dtype=st.sampled_from([torch.float16, torch.bfloat16]), alpha=st.floats(0, 1))
def test_property_half_is_one_rounding_of_the_fp32_result(seed, dtype, alpha):
    a, b = _pair(seed, dtype, 500)
    out = interpolate({"x": a}, {"x": b}, alpha)["x"]
    assert out.dtype == dtype
    assert torch.equal(out, interpolate_tensor(a.float(), b.float(), alpha).to(dtype))


@settings(max_examples=20, deadline=None)
@given(alpha=st.floats(0.0, 1.0))
def test_small_foreach_path_and_large_path_agree_bitwise(alpha):
    a, b = _pair(3, torch.float32, SMALL_NUMEL + 17)
    small = [interpolate({"x": a[i:i + 1000]}, {"x": b[i:i + 1000]}, alpha)["x"] for i in range(0, a.numel(), 1000)]
    assert torch.equal(torch.cat(small), interpolate({"x": a}, {"x": b}, alpha)["x"])


def test_preallocated_target_is_reused_across_a_sweep():
    a, b = _states()
    interp = Interpolator(a, b)
    ptrs = set()
    for alpha, theta in interp.states([0.0, 0.25, 0.5, 1.0]):
        ptrs.add(theta["0.weight"].data_ptr())
        ref = interpolate(a, b, alpha)
        assert all(torch.equal(theta[k], ref[k]) for k in ref)
    assert len(ptrs) == 1


def test_tied_weights_are_merged_once_and_stay_tied():
    emb_0, emb_1 = torch.randn(6, 4), torch.randn(6, 4)
    a = {"emb": emb_0, "lm_head": emb_0, "b": torch.randn(3)}
    b = {"emb": emb_1, "lm_head": emb_1, "b": torch.randn(3)}
    out = interpolate(a, b, 0.3)
    assert out["emb"] is out["lm_head"]
    torch.testing.assert_close(out["emb"], torch.lerp(emb_0, emb_1, 0.3))

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(6, 4)
            self.lm_head = torch.nn.Linear(4, 6, bias=False)
            self.lm_head.weight = self.emb.weight

    model = Tied()
    sa = {"emb.weight": emb_0, "lm_head.weight": emb_0}
    sb = {"emb.weight": emb_1, "lm_head.weight": emb_1}
    Interpolator(sa, sb).load_into(model, 0.3)
    assert model.lm_head.weight is model.emb.weight
    assert torch.equal(model.emb.weight.detach(), out["emb"])


def test_selective_merge_keeps_a_new_head():
    a, b = _states()
    b = {**b, "2.weight": torch.randn(5, 8), "2.bias": torch.randn(5), "extra": torch.ones(2)}
    with pytest.raises(MergeError, match=r"'2.weight' has shape \(3, 8\).*\(5, 8\).*exclude"):
        interpolate(a, {k: v for k, v in b.items() if k != "extra"}, 0.5)
    out = interpolate(a, b, 0.5, MergeConfig(exclude=["2.*", "extra"]))
    assert torch.equal(out["2.weight"], b["2.weight"]) and torch.equal(out["extra"], b["extra"])
    torch.testing.assert_close(out["0.weight"], torch.lerp(a["0.weight"], b["0.weight"], 0.5))
    kept_0 = interpolate(a, b, 0.5, MergeConfig(include=["0.*"], keep=0))
    assert torch.equal(kept_0["1.weight"], a["1.weight"]) and "extra" not in kept_0
    assert torch.equal(kept_0["2.weight"], a["2.weight"])
    with pytest.raises(MergeError, match="'extra' is in the second state dict but not in the first"):
        interpolate(a, b, 0.5, MergeConfig(exclude=["2.*"]))


def test_load_into_checks_the_target():
    a, b = _states()
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 4))
    with pytest.raises(MergeError, match="'2.weight'"):
        Interpolator(a, b).load_into(net, 0.5)


@settings(max_examples=10, deadline=None)
@given(alpha=st.floats(0.0, 1.0), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_pieces_on_worker_threads_give_the_same_bits(alpha, dtype):
    import wiseft.merge.kernels as m

    a, b = _pair(5, dtype, 10_007)
    whole = interpolate_tensor(a, b, alpha)
    old = m.PIECE_NUMEL
    m.PIECE_NUMEL = 999
    try:
        out = torch.empty_like(a)
        m.interpolate_many([(out, a, b, alpha)], num_threads=2)
    finally:
        m.PIECE_NUMEL = old
    assert torch.equal(out, whole)


# --- equal inputs mix to themselves, -inf included (issue 13) ----------------------------

def _masked(seed: int, n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mask = torch.full((4, 4), float("-inf")).triu(1)  # an additive attention mask, the same in both
    big = torch.randn(n, generator=g)
    big[::1000] = float("-inf")  # -inf at the same places in both models
    return {"mask": mask, "big": big, "mask16": mask.clone().half(), "w": torch.randn(3, generator=g)}


@pytest.mark.parametrize("alpha", [0.25, 0.5, 0.75])
def test_equal_minus_inf_mixes_to_minus_inf_in_memory(alpha):
    a, b = _masked(0, (1 << 20) + 7), _masked(1, (1 << 20) + 7)  # large: the threaded path
    for out in (interpolate(a, b, alpha), Interpolator(a, b).merge(alpha)):
        for k in ("mask", "mask16"):
            assert torch.equal(out[k], a[k]), k
        assert not out["big"].isnan().any()
        assert torch.equal(out["big"][::1000], a["big"][::1000])
        finite = a["big"].isfinite()
        assert torch.equal(out["big"][finite], torch.lerp(a["big"], b["big"], alpha)[finite])
    target = {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in a.items()}
    module = torch.nn.Module()
    for k, v in target.items():
        module.register_buffer(k, v.data.clone())
    Interpolator(a, b).load_into(module, alpha)
    assert torch.equal(module.mask, a["mask"]) and not module.big.isnan().any()


def test_equal_minus_inf_mixes_to_minus_inf_out_of_core(tmp_path):
    from safetensors.torch import load_file, save_file

    from wiseft.merge import average_files, write_interpolations

    a, b = _masked(0, 5000), _masked(1, 5000)
    for th in (a, b):  # a large mask, read in chunks (files refuse -inf outside a 0/-inf mask)
        th["big"] = torch.zeros(5000)
        th["big"][::1000] = float("-inf")
        th["w"] = torch.randn(5000)
    save_file(a, tmp_path / "a.safetensors")
    save_file(b, tmp_path / "b.safetensors")
    outs = {0.3: tmp_path / "m03.safetensors", 0.8: tmp_path / "m08.safetensors"}
    write_interpolations(tmp_path / "a.safetensors", tmp_path / "b.safetensors", outs, MergeConfig(chunk_bytes=4096))
    for alpha, path in outs.items():
        m = load_file(path)
        assert torch.equal(m["mask"], a["mask"]) and torch.equal(m["mask16"], a["mask16"])
        assert torch.equal(m["big"], interpolate(a, b, alpha)["big"])  # same bits as in memory
    avg = load_file(average_files([tmp_path / "a.safetensors", tmp_path / "b.safetensors"],
                                  tmp_path / "avg.safetensors", [1.0, 2.0]))
    assert torch.equal(avg["mask"], a["mask"]) and not avg["big"].isnan().any()


def test_soups_of_equal_minus_inf_stay_minus_inf():
    from wiseft.merge import greedy_soup, uniform_soup, weighted_average

    thetas = [_masked(s, 3000) for s in range(3)]
    for out in (uniform_soup(thetas), weighted_average(thetas, [0.2, 0.3, 0.5]),
                greedy_soup(thetas, lambda th: 1.0).state):
        assert torch.equal(out["mask"], thetas[0]["mask"]) and torch.equal(out["mask16"], thetas[0]["mask16"])
        assert torch.equal(out["big"][::1000], thetas[0]["big"][::1000]) and not out["big"].isnan().any()


def test_a_plus_inf_minus_inf_mix_is_still_nan_not_hidden():
    a = {"w": torch.tensor([float("inf"), 1.0])}
    b = {"w": torch.tensor([float("-inf"), 1.0])}
    out = interpolate(a, b, 0.5)["w"]
    assert out[0].isnan() and out[1] == 1.0  # unequal inputs are not touched
