"""N-model averages: weighted and uniform soups, greedy soup, Fisher-weighted merging."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from test_merging_engine import same_bits

from wiseft.merge import (
    MergeError,
    estimate_fisher,
    fisher_merge,
    greedy_soup,
    interpolate,
    uniform_soup,
    weighted_average,
)


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 3))
    net[1].num_batches_tracked.fill_(seed + 5)
    return net


def _sd(seed: int, dtype=torch.float32):
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in _net(seed).state_dict().items()}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 4), hot=st.integers(0, 3), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_one_hot_weights_copy_exactly_and_buffers_come_from_the_first(n, hot, dtype):
    thetas = [_sd(i, dtype) for i in range(n)]
    hot = hot % n
    out = weighted_average(thetas, [1.0 if i == hot else 0.0 for i in range(n)])
    for k, v in out.items():
        src = thetas[hot] if v.is_floating_point() else thetas[0]
        assert v.dtype == src[k].dtype and torch.equal(v, src[k])


def test_uniform_soup_is_the_mean_and_weights_are_normalised():
    thetas = [_sd(i) for i in range(3)]
    soup = uniform_soup(thetas)
    torch.testing.assert_close(soup["0.weight"], sum(t["0.weight"] for t in thetas) / 3)
    scaled = weighted_average(thetas, [2.0, 2.0, 2.0])
    torch.testing.assert_close(scaled["0.weight"], soup["0.weight"])
    two = weighted_average(thetas[:2], [0.7, 0.3])
    torch.testing.assert_close(two["0.weight"], interpolate(thetas[0], thetas[1], 0.3)["0.weight"])
    with pytest.raises(MergeError, match=r"weights\[1\] = -1.0 is negative"):
        weighted_average(thetas, [1.0, -1.0, 1.0])
    with pytest.raises(MergeError, match="2 weights for 3 models"):
        weighted_average(thetas, [1.0, 1.0])


def test_greedy_soup_adds_only_what_helps_and_equals_the_uniform_soup(tmp_path):
    target = _sd(0)
    good = [{k: v + 0.01 * i if v.is_floating_point() else v for k, v in target.items()} for i in (1, -1)]
    bad = {k: v + 5.0 if v.is_floating_point() else v for k, v in target.items()}

    def score(sd):  # held-out "accuracy": closeness to the target weights
        return -sum(float((sd[k].float() - target[k].float()).abs().sum()) for k in target if target[k].is_floating_point())

    save_file(bad, str(tmp_path / "bad.safetensors"))
    ingredients = [good[0], tmp_path / "bad.safetensors", good[1]]
    result = greedy_soup(ingredients, score)
    assert sorted(result.chosen) == [0, 2] and len(result.scores) == 3
    ref = uniform_soup([ingredients[i] for i in result.chosen])
    for k in ref:
        assert torch.equal(result.state[k], ref[k]), k
    assert result.score == pytest.approx(score(ref))


def test_fisher_merge_matches_the_reference_formula_and_is_exact_at_the_ends():
    a, b = _sd(0), _sd(1)
    g = torch.Generator().manual_seed(0)
    fa = {k: torch.rand(v.shape, generator=g) for k, v in a.items() if k.endswith("weight")}
    fb = {k: torch.rand(v.shape, generator=g) * 1e-12 for k, v in b.items() if k.endswith("weight")}
    alpha, floor = 0.4, 1e-8
    out = fisher_merge([a, b], [fa, fb], [1 - alpha, alpha], fisher_floor=floor)
    for k in a:
        if k in fa:
            c0, c1 = (1 - alpha) * fa[k].clamp_min(floor), alpha * fb[k].clamp_min(floor)
            torch.testing.assert_close(out[k], (c0 * a[k] + c1 * b[k]) / (c0 + c1))
        elif a[k].is_floating_point():  # no Fisher: plain interpolation
            torch.testing.assert_close(out[k], (1 - alpha) * a[k] + alpha * b[k])
        else:
            assert torch.equal(out[k], a[k])
    for al, src in ((0.0, a), (1.0, b)):
        ends = fisher_merge([a, b], [fa, fb], [1 - al, al])
        assert all(torch.equal(ends[k], src[k]) for k in a if a[k].is_floating_point())
    with pytest.raises(MergeError, match="has a .fisher. in input 0 but not in input 1"):
        fisher_merge([a, b], [fa, {}], [0.5, 0.5])


def test_estimate_fisher_is_a_mean_of_squared_per_example_gradients():
    net = torch.nn.Linear(3, 4)
    x = torch.randn(6, 3)
    y = torch.randint(0, 4, (6,))
    loader = [(x[:4], y[:4]), (x[4:], y[4:])]
    fisher = estimate_fisher(net, loader, empirical=True)
    expect = torch.zeros_like(net.weight)
    for i in range(6):
        net.zero_grad()
        torch.log_softmax(net(x[i:i + 1]), -1)[0, y[i]].backward()
        expect += net.weight.grad ** 2
    torch.testing.assert_close(fisher["weight"], expect / 6)
    sampled = estimate_fisher(net, loader, max_examples=3, generator=torch.Generator().manual_seed(0))
    assert set(sampled) == {"weight", "bias"} and all((v >= 0).all() for v in sampled.values())


# --- results unchanged by the move onto the merge-method interface (issue 15) ---------------------

def _fisher_merge_before_issue_15(thetas, fishers, weights, fisher_floor=1e-8):
    """``soup.fisher_merge`` as it was before it ran the registered method ``fisher``."""
    from wiseft.merge import average_tensor, plan_merge
    from wiseft.merge.interpolator import allocate, tie_map
    from wiseft.merge.kernels import accumulation_dtype
    from wiseft.merge.plan import make_selection, specs_of

    thetas = [{k: v.detach() for k, v in t.items()} for t in thetas]
    steps = plan_merge([specs_of(t) for t in thetas], make_selection(keep=0))
    out, done = allocate(steps, thetas, tie_map(steps, thetas)), set()
    for s in steps:
        o = out[s.name]
        if id(o) in done:
            continue
        done.add(id(o))
        have = [s.name in f for f in fishers]
        xs, live = [t[s.name] for t in thetas], [i for i, w in enumerate(weights) if w != 0]
        if s.op != "mix" or not any(have) or len(live) == 1:
            average_tensor(xs, weights, out=o) if s.op == "mix" else o.copy_(xs[s.source])
            continue
        acc = accumulation_dtype(s.spec.dtype)
        num = torch.zeros(s.spec.shape, dtype=acc, device=o.device)
        den = torch.zeros(s.spec.shape, dtype=acc, device=o.device)
        for i in live:
            c = fishers[i][s.name].to(o.device, acc).clamp_min(fisher_floor).mul_(weights[i])
            num.addcmul_(c, xs[i].to(acc))
            den.add_(c)
        o.copy_(num.div_(den))
    return out


def _mixed_dtypes(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w32": torch.randn(33, 7, generator=g), "w16": torch.randn(65, generator=g).half(),
            "wbf": torch.randn(40, generator=g).bfloat16(), "w64": torch.randn(9, generator=g).double(),
            "count": torch.tensor(seed), "nofisher": torch.randn(5, generator=g)}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), n=st.integers(1, 3), zero=st.integers(-1, 2), floor=st.sampled_from([1e-8, 0.3]))
def test_fisher_merge_results_are_unchanged_bit_for_bit(seed, n, zero, floor):
    thetas = [_mixed_dtypes(seed + i) for i in range(n)]
    g = torch.Generator().manual_seed(seed)
    fishers = [{k: torch.rand(v.shape, generator=g).to(f) * (torch.rand(v.shape, generator=g) > 0.2)
                for (k, v), f in zip(t.items(), (torch.float32, torch.float16, torch.float32, torch.float32))}
               for t in thetas]  # fp16 Fishers for w16, fp32 for the rest; none for count, nofisher
    weights = [0.0 if i == zero else 0.5 + i for i in range(n)]
    if not any(weights):
        weights[0] = 1.0
    got = fisher_merge(thetas, fishers, weights, fisher_floor=floor)
    want = _fisher_merge_before_issue_15(thetas, fishers, weights, floor)
    assert list(got) == list(want)
    for k in want:
        assert same_bits(got[k], want[k]), k
