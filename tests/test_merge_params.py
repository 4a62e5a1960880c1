"""Merge parameters and weights are checked before any file is opened, the same way for every
command and the library (issue 24 item 4): every registered method's numbers must be finite
and inside the range its parameter model declares, and weights finite (an average's also
>= 0 with a positive sum). The inputs below do not exist: the error must be the parameter's."""

import math
from pathlib import Path

import pytest
from conftest import run_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wiseft.cli import main
from wiseft.cli.merge import MergeJob, run_merge
from wiseft.config import ConfigError, parse_config
from wiseft.merge import MergeError, get_method, list_methods, merge_states, weighted_average
from wiseft.merge.method import allowed_range

METHODS = list_methods()
PLAIN = [n for n in METHODS if not get_method(n).needs]  # a procedure (greedy soup) is refused as a plain merge
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
FILE_ERRORS = ("No such file", "does not exist", "not found", "no safetensors")
HYPO = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def numeric_fields(name: str) -> list[str]:
    return [f for f, info in get_method(name).params.model_fields.items() if info.annotation in (int, float)]


def bounds(name: str, field: str) -> dict[str, float]:
    info = get_method(name).params.model_fields[field]
    return {k: getattr(m, k) for m in info.metadata for k in ("gt", "ge", "lt", "le") if getattr(m, k, None) is not None}


def outside(name: str, field: str) -> st.SearchStrategy:
    """Finite values outside the field's declared range (nothing when it declares none)."""
    b, parts = bounds(name, field), []
    if "ge" in b:
        parts.append(st.floats(max_value=b["ge"], exclude_max=True, allow_nan=False, allow_infinity=False))
    if "gt" in b:
        parts.append(st.floats(max_value=b["gt"], allow_nan=False, allow_infinity=False))
    if "le" in b:
        parts.append(st.floats(min_value=b["le"], exclude_min=True, allow_nan=False, allow_infinity=False))
    if "lt" in b:
        parts.append(st.floats(min_value=b["lt"], allow_nan=False, allow_infinity=False))
    return st.one_of(parts) if parts else st.nothing()


def job(name: str, tmp_path, params=None, weights=None) -> MergeJob:
    method, missing = get_method(name), tmp_path / "missing"
    n = max(method.min_models, 2 if method.max_models is None else method.max_models)
    models = tuple(str(missing / f"ft{i}.safetensors") for i in range(n))
    extras = {e: tuple(str(missing / f"{e}{i}.safetensors") for i in range(n)) for e in method.extras}
    return MergeJob(name, models, str(tmp_path / "out.safetensors"),
                    base=str(missing / "zs.safetensors") if method.needs_base else None,
                    params=params or {}, weights=weights, extras=extras)


def refused_before_files(name: str, tmp_path, match: str, **kw) -> str:
    with pytest.raises(MergeError, match=match) as e:
        run_merge(job(name, tmp_path, **kw))
    assert not any(s in str(e.value) for s in FILE_ERRORS)
    assert not (tmp_path / "out.safetensors").exists() and not (tmp_path / "missing").exists()
    return str(e.value)


CASES = [(n, f) for n in PLAIN for f in numeric_fields(n)]


@pytest.mark.parametrize("name, field", CASES, ids=[f"{n}.{f}" for n, f in CASES])
@HYPO
@given(value=NON_FINITE)
def test_a_non_finite_parameter_of_any_method_is_refused_by_name_before_any_file(name, field, value, tmp_path):
    # before: scale=.nan was caught only after every tensor was read, blaming the weights
    message = refused_before_files(name, tmp_path, f"merge method '{name}': {field}: ", params={field: value})
    assert "not a finite number" in message and "takes" in message


@pytest.mark.parametrize("name, field", [c for c in CASES if bounds(*c)], ids=lambda c: str(c))
@HYPO
@given(data=st.data())
def test_a_parameter_outside_its_declared_range_is_refused_naming_the_range(name, field, data, tmp_path):
    value = data.draw(outside(name, field))
    field_info = get_method(name).params.model_fields[field]
    if field_info.annotation is int:
        value = math.floor(value) if "ge" in bounds(name, field) else value
        if value != int(value) or abs(value) > 2 ** 62:
            return
        value = int(value)
    message = refused_before_files(name, tmp_path, f"merge method '{name}': {field}: ", params={field: value})
    assert f"({field} takes {allowed_range(field_info)})" in message


@pytest.mark.parametrize("name", [n for n in PLAIN if get_method(n).weighted])
@HYPO
@given(bad=NON_FINITE, where=st.integers(0, 1))
def test_a_non_finite_weight_is_refused_by_every_weighted_method(name, bad, where, tmp_path):
    n = len(job(name, tmp_path).models)
    weights = [1.0] * n
    weights[where] = bad
    refused_before_files(name, tmp_path, rf"merge method '{name}': weights\[{where}\] = {bad} is not a finite number",
                         weights=tuple(weights))


@pytest.mark.parametrize("name", [n for n in PLAIN if get_method(n).average_weights])
@HYPO
@given(weights=st.lists(st.floats(-10, 10), min_size=2, max_size=2).filter(lambda w: min(w) < 0 or sum(w) <= 0))
def test_an_average_refuses_negative_weights_or_a_sum_that_is_not_positive(name, weights, tmp_path):
    refused_before_files(name, tmp_path, f"merge method '{name}': weights.*(is negative|sum to 0)",
                         weights=tuple(weights))


def test_merge_soup_refuses_the_weights_wiseft_soup_refuses(tmp_path, capsys):
    # before: wiseft merge --method soup --weights -1 2 wrote an extrapolated soup
    missing = [str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors")]
    out = str(tmp_path / "o.safetensors")
    assert main(["merge", *missing, "--method", "soup", "--weights", "-1", "2", "--out", out]) == 2
    merge_err = capsys.readouterr().err
    assert main(["soup", *missing, "--weights", "-1", "2", "--out", out]) == 2
    soup_err = capsys.readouterr().err
    assert merge_err == soup_err == ("wiseft: error: merge method 'soup': weights[0] = -1.0 is negative; weights "
                                     "take each a finite number >= 0, their sum > 0 (the weights of an average)\n")


@pytest.mark.parametrize("args, message", [
    (["merge", "{m}/a", "--base", "{m}/z", "--method", "task_arithmetic", "--param", "scale=.nan"],
     "merge method 'task_arithmetic': scale: nan is not a finite number; scale takes a finite number"),
    (["soup", "{m}/a", "{m}/b", "--weights", "nan", "1"], "merge method 'soup': weights[0] = nan is not a finite"),
    (["interpolate", "{m}/a", "{m}/b", "--alpha", "nan", "--extrapolate"], "alpha=nan is not a finite number"),
    (["interpolate", "{m}/a", "{m}/b", "--alpha", "0.5", "--fisher", "{m}/f", "{m}/g", "--fisher-floor", "-1"],
     "merge method 'fisher': fisher_floor: Input should be greater than or equal to 0"),
])
def test_every_command_names_the_parameter_before_opening_a_file(args, message, tmp_path, capsys):
    argv = [a.replace("{m}", str(tmp_path / "missing")) for a in args] + ["--out", str(tmp_path / "o")]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("wiseft: error: " + message)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name, field", CASES, ids=[f"{n}.{f}" for n, f in CASES])
def test_a_run_configs_merges_entry_refuses_a_non_finite_parameter(name, field):
    if get_method(name).extras and not get_method(name).extras_optional:
        pytest.skip(f"{name} cannot be in a run's merges:")
    raw = run_config({"family": "open_clip", "name": "tiny", "pretrained": "/w.safetensors"}, Path("/data"), Path("/runs"),
                     variants={"slow": {"lr": 1e-4}}, merges=[{"method": name, "params": {field: math.nan}}])
    with pytest.raises(ConfigError, match=rf"run.yaml: merges.0.params.{field}: nan is not a finite number; "
                                          rf"{field} takes"):
        parse_config(raw, source="run.yaml")


def test_the_library_checks_the_same_way():
    with pytest.raises(MergeError, match=r"merge method 'ties': scale: nan is not a finite number"):
        merge_states("ties", {}, [{}], {"scale": math.nan})
    with pytest.raises(MergeError, match=r"merge method 'soup': weights\[1\] = inf is not a finite number"):
        merge_states("soup", None, [{}, {}], weights=[1, math.inf])
    with pytest.raises(MergeError, match=r"weights\[0\] = nan is not a finite number"):
        weighted_average([{}, {}], [math.nan, 1])
