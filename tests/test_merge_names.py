"""Output names of an alpha sweep (issue 24 item 2): every alpha gets its own file, named so
that it reads back to that alpha; an alpha given twice is refused before a file is opened."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from wiseft.cli import main
from wiseft.merge import MergeError, alpha_destinations, alpha_label, check_alpha, write_interpolations

alphas_01 = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
any_alpha = st.floats(allow_nan=False, allow_infinity=False)


@pytest.fixture
def pair(tmp_path):
    a, b = {"w": torch.zeros(3, 2)}, {"w": torch.ones(3, 2)}
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors"


def test_alphas_that_agree_to_two_decimals_get_two_files(pair, tmp_path, capsys):
    # before: both were alpha_0.50.safetensors, and the 0.501 mix overwrote the 0.5 one
    out = tmp_path / "sweep"
    assert main(["interpolate", str(pair[0]), str(pair[1]), "--alpha", "0.5", "--alpha", "0.501",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["alpha_0.50.safetensors", "alpha_0.501.safetensors"]
    assert torch.equal(load_file(str(out / "alpha_0.50.safetensors"))["w"], torch.full((3, 2), 0.5))
    assert torch.equal(load_file(str(out / "alpha_0.501.safetensors"))["w"], torch.full((3, 2), 0.501))
    printed = capsys.readouterr().out
    assert "alpha 0.50:" in printed and "alpha 0.501:" in printed


@pytest.mark.parametrize("alphas", [["0.5", "0.5"], ["0.5", "0.50"], ["0", "-0.0"]])
def test_an_alpha_given_twice_is_refused_before_any_file_is_opened(tmp_path, capsys, alphas):
    missing = tmp_path / "missing"  # inputs that do not exist: the alpha error must come first
    args = ["interpolate", str(missing / "a.safetensors"), str(missing / "b.safetensors"), "--out", str(tmp_path / "o")]
    for a in alphas:
        args += ["--alpha", a]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("wiseft: error: alpha ") and "is given twice" in err
    assert not (tmp_path / "o").exists()


def test_the_library_refuses_two_alphas_written_to_one_destination(tmp_path):
    with pytest.raises(MergeError, match="both written to"):
        write_interpolations(tmp_path / "missing_a", tmp_path / "missing_b",
                             {0.5: tmp_path / "x.safetensors", 0.501: tmp_path / "x.safetensors"})


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf])
def test_a_non_finite_alpha_is_refused_even_when_extrapolating(alpha):
    with pytest.raises(MergeError, match="not a finite number"):
        check_alpha(alpha, allow_extrapolation=True)


@settings(max_examples=300, deadline=None)
@given(st.lists(alphas_01, min_size=2, max_size=12, unique_by=float))
def test_distinct_alphas_get_distinct_names_that_read_back(alphas):
    if len({float(a) for a in alphas}) < len(alphas):  # 0.0 and -0.0 are one alpha
        return
    dests = alpha_destinations(alphas, "out", ".safetensors")
    names = [dests[a].name for a in alphas]
    assert len(set(names)) == len(alphas)
    for a, name in zip(alphas, names):
        assert name.startswith("alpha_") and name.endswith(".safetensors")
        assert float(name[len("alpha_"):-len(".safetensors")]) == a


@settings(max_examples=300, deadline=None)
@given(any_alpha)
def test_every_finite_alpha_label_reads_back_with_at_least_two_decimals(alpha):
    label = alpha_label(alpha)
    assert float(label) == alpha
    if "e" not in label:
        assert len(label.split(".")[1]) >= 2


@settings(max_examples=100, deadline=None)
@given(st.lists(alphas_01, min_size=1, max_size=6), st.data())
def test_a_repeated_alpha_is_always_refused(alphas, data):
    again = data.draw(st.sampled_from(alphas))
    with pytest.raises(MergeError, match="given twice"):
        alpha_destinations(alphas + [again], "out")
