"""The ``merges:`` list of a run config: checked at load against the registry, the
method's parameters and the run's fine-tunes; resolved with defaults; out of the dump
when empty."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import run_config

from wiseft.config import ConfigError, MergeSpec, load_config, parse_config

SPEC = {"family": "open_clip", "name": "tiny", "pretrained": "/weights/tiny.safetensors"}


def _raw(merges, **overrides) -> dict:
    return run_config(SPEC, Path("/data/images"), Path("/runs/colors"), variants={"slow": {"lr": 1e-4}},
                      merges=merges, **overrides)


def _error(merges, **overrides) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(_raw(merges, **overrides), source="run.yaml")
    return str(e.value)


@pytest.mark.parametrize("merges, message", [
    ([{"method": "tie"}], "run.yaml: merges.0.method: unknown merge method 'tie'; did you mean 'ties'? known: dare, "),
    ([{"method": "ties", "params": {"densty": 0.1}}],
     "run.yaml: merges.0.params.densty: merge method 'ties' has no parameter 'densty'; did you mean 'density'?"),
    ([{"method": "ties", "search": {"density": [0.1, 2.0]}}],
     "run.yaml: merges.0.search.density.1: Input should be less than or equal to 1"),
    ([{"method": "ties", "search": {"density": [0.1, 0.1]}}], "run.yaml: merges.0.search.density.1: 0.1 is listed twice"),
    ([{"method": "ties", "params": {"density": 0.1}, "search": {"density": [0.2]}}],
     "run.yaml: merges.0.search.density: 'density' is fixed in params and searched here; give it in one"),
    ([{"method": "ties", "search": {"density": []}}], "run.yaml: merges.0.search.density: give at least one value"),
    ([{"method": "linear", "search": {"ramp": [[0.2, 0.8], [0.5, 1.5]]}}],
     "run.yaml: merges.0.search: ramp[1] = 1.5 is outside [0, 1]; set allow_extrapolation to extrapolate on purpose "
     '(at {"ramp":[0.5,1.5]})'),
    ([{"method": "linear", "params": {"alpha": 2.0}}],
     "run.yaml: merges.0.params: alpha = 2.0 is outside [0, 1]; set allow_extrapolation"),
    ([{"method": "ties", "models": ["finetuned", "slwo"]}],
     "run.yaml: merges.0.models.1: 'slwo' is not a fine-tune of this run; did you mean 'slow'? known: finetuned, slow"),
    ([{"method": "ties", "models": ["slow", "slow"]}], "run.yaml: merges.0.models.1: 'slow' is listed twice"),
    ([{"method": "model_stock", "models": ["finetuned"]}],
     "run.yaml: merges.0.models: merge method 'model_stock' takes 2 or more fine-tuned model(s), got 1"),
    ([{"method": "slerp", "models": ["finetuned", "slow"]}],
     "run.yaml: merges.0.models: merge method 'slerp' takes 1 fine-tuned model(s), got 2"),
    ([{"method": "linear"}, {"method": "linear"}],
     "run.yaml: merges.1.name: the label 'linear' is taken by merges.0; give this entry another name"),
    ([{"method": "soup", "name": "slow"}],
     "run.yaml: merges.0.name: the label 'slow' is taken by a fine-tune; give this entry another name"),
    ([{"method": "ties", "serach": {"density": [0.1]}}],
     "run.yaml: merges.0.serach: Extra inputs are not permitted; unknown key 'serach', did you mean 'search'?"),
])
def test_a_bad_entry_is_an_error_naming_the_file_and_field(merges, message):
    assert message in _error(merges)


def test_a_procedure_is_no_plain_merge(monkeypatch):
    from wiseft.core import MERGE_METHODS
    from wiseft.merge import get_method

    soup = get_method("soup")
    MERGE_METHODS.names()  # loaded, so the entry below is not replaced by a later load
    monkeypatch.setitem(MERGE_METHODS._entries, "picky_soup", replace(soup, name="picky_soup", needs=("evaluate",)))
    assert "merges.0.method: merge method 'picky_soup' needs evaluate beyond the weights; a run's merges: list " \
           "runs plain merges only" in _error([{"method": "picky_soup"}])


def test_a_method_needing_more_fine_tunes_than_the_run_has_says_so():
    raw = _raw([{"method": "model_stock"}])
    raw.pop("variants")
    with pytest.raises(ConfigError, match=r"merges\.0\.models: merge method 'model_stock' takes 2 or more "
                                          r"fine-tuned model\(s\), got 1 \(by default: finetuned; add variants:\)"):
        parse_config(raw)


def test_a_search_needs_a_validation_split():
    data = _raw([])["data"] | {"validation_fraction": 0.0}
    assert "merges.0.search: a search is scored on the held-out validation split" in _error(
        [{"method": "ties", "search": {"density": [0.1, 0.2]}}], data=data)


def test_entries_resolve_with_the_runs_defaults():
    cfg = parse_config(_raw([
        {"method": "linear"},                                          # WiSE-FT: alpha over the run's alphas
        {"method": "linear", "name": "ramp", "params": {"ramp": [0.2, 0.8]}},  # fixed: no default search
        {"method": "ties", "search": {"density": [0.1, 0.2], "scale": [0.5, 1.0]}},  # every fine-tune
        {"method": "dare", "params": {"seed": 1}, "models": ["slow"]},
    ], alphas=[0.0, 0.5, 1.0]))
    runs = cfg.merge_runs()
    assert [(m.name, m.method, m.models) for m in runs] == [
        ("linear", "linear", ("finetuned",)), ("ramp", "linear", ("finetuned",)),
        ("ties", "ties", ("finetuned", "slow")), ("dare (seed=1)", "dare", ("slow",))]
    assert runs[0].search == {"alpha": (0.0, 0.5, 1.0)} and runs[0].alpha_search
    assert runs[1].points() == [{}] and runs[1].params == {"ramp": [0.2, 0.8]} and not runs[1].alpha_search
    assert runs[2].points() == [{"density": 0.1, "scale": 0.5}, {"density": 0.1, "scale": 1.0},
                                {"density": 0.2, "scale": 0.5}, {"density": 0.2, "scale": 1.0}]
    assert runs[2].params_at(runs[2].points()[1]) == {"density": 0.1, "scale": 1.0}


def test_without_validation_linear_keeps_its_default_alpha():
    data = _raw([])["data"] | {"validation_fraction": 0.0}
    (linear,) = parse_config(_raw([{"method": "linear"}], data=data)).merge_runs()
    assert linear.points() == [{}] and linear.params == {}


def test_an_extrapolating_run_lets_linear_search_its_alphas():
    cfg = parse_config(_raw([{"method": "linear"}], alphas=[0.0, 1.0, 1.5], allow_extrapolation=True))
    (linear,) = cfg.merge_runs()
    assert linear.search == {"alpha": (0.0, 1.0, 1.5)} and linear.params == {"allow_extrapolation": True}


def test_no_merges_leaves_the_config_hash_and_dump_as_before():
    plain = run_config(SPEC, Path("/data/images"), Path("/runs/colors"))
    cfg = parse_config({**plain, "merges": []})
    assert cfg.config_hash() == "05bd2ec2af5643ad"  # tests/test_config_pins.py's fixture config
    assert "merges" not in cfg.to_yaml()


def test_merges_round_trip_through_the_written_config(tmp_path):
    merges = [{"method": "ties", "search": {"density": [0.1, 0.2]}}, {"method": "linear", "name": "per-layer",
                                                                      "params": {"ramp": [0.2, 0.8]}}]
    cfg = parse_config(_raw(merges))
    assert yaml.safe_load(cfg.to_yaml())["merges"] == merges  # only what was written
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    again = load_config(tmp_path / "c.yaml")
    assert again.config_hash() == cfg.config_hash() and again.merge_runs() == cfg.merge_runs()
    assert again.train_key("slow") == parse_config(_raw([])).train_key("slow")  # merges retrain nothing


def test_labels_derive_from_the_method_and_its_fixed_parameters():
    assert MergeSpec(method="ties").label() == "ties"
    assert MergeSpec(method="linear", params={"ramp": [0.2, 0.8]}).label() == "linear (ramp=[0.2,0.8])"
    assert MergeSpec(method="ties", name="TIES, tuned").label() == "TIES, tuned"


def test_the_demo_merges_example_is_the_demo_plus_merges():
    root = Path(__file__).resolve().parents[1]
    demo = load_config(root / "src" / "wiseft" / "resources" / "bbc_news.yaml")
    merges = load_config(root / "examples" / "demo-merges.yaml")
    assert merges.model_dump(exclude={"merges", "output_dir"}) == demo.model_dump(exclude={"output_dir"})
    assert [merges.train_key(n) for n in ("finetuned", "aggressive")] == \
        [demo.train_key(n) for n in ("finetuned", "aggressive")]  # the demo's checkpoints serve it
    assert {m.method for m in merges.merge_runs()} >= {"linear", "ties", "task_arithmetic", "model_stock"}
