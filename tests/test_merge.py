import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wiseft.merge import Interpolator, MergeError, check_compatible, interpolate


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


@settings(max_examples=20, deadline=None)
@given(alpha=st.floats(0.0, 1.0))
def test_half_precision_mixed_in_fp32(alpha):
    a = {"w": torch.tensor([1.0, 2.0, 1000.0], dtype=torch.float16)}
    b = {"w": torch.tensor([1.5, -2.0, 1001.0], dtype=torch.float16)}
    out = interpolate(a, b, alpha)["w"]
    assert out.dtype == torch.float16
    expect = ((1 - alpha) * a["w"].float() + alpha * b["w"].float()).half()
    assert torch.allclose(out.float(), expect.float(), atol=1.0, rtol=1e-3)


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
    out = interpolate(a, b, 1.5, allow_extrapolation=True)
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
