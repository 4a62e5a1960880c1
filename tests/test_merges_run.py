"""`wiseft run` with a ``merges:`` list, end to end on a tiny model: each method's grid is
searched on the validation split only, the point with the best validation score is
scored on the reference and shift sets, and the report compares the methods."""

import pytest
import yaml
from conftest import run_config

from wiseft import read_records
from wiseft.backbones import load_backbone
from wiseft.cli import main
from wiseft.config import parse_config
from wiseft.evaluation import predict_logits
from wiseft.heads import build_zeroshot_model
from wiseft.io import load_state
from wiseft.merge import merge_states
from wiseft.pipeline import prepare_data
from wiseft.report import select_alpha

MERGES = [
    {"method": "linear", "name": "per-layer", "search": {"ramp": [[0.0, 1.0], [0.5, 0.5], [1.0, 0.0]]}},
    {"method": "ties", "models": ["finetuned"], "search": {"density": [0.05, 0.6]}},
    {"method": "model_stock"},  # over both fine-tunes, the variant included
    {"method": "linear"},  # WiSE-FT itself: its search is the sweep's alphas
]
SEARCHED = {"per-layer": 3, "ties": 2, "model_stock": 1, "linear": 3}

pytestmark = pytest.mark.slow  # two fine-tunes, four merges and a report: about 25 s


def _config(open_clip_spec, image_data, out):
    return run_config(open_clip_spec, image_data, out, variants={"slow": {"lr": 3e-4}}, alphas=[0.0, 0.5, 1.0],
                      merges=MERGES)


@pytest.fixture(scope="module")
def merge_run(open_clip_spec, image_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_merges")
    (out / "config.yaml").write_text(yaml.safe_dump(_config(open_clip_spec, image_data, out / "run")))
    assert main(["run", str(out / "config.yaml"), "--no-progress"]) == 0
    return out / "run"


def _merge(r):
    return r.provenance.get("merge")


def test_each_merge_is_searched_on_validation_only_and_scored_at_its_chosen_point(merge_run):
    records = read_records(merge_run)
    merged = [r for r in records if _merge(r)]
    assert list(dict.fromkeys(r.model for r in merged)) == list(SEARCHED)
    for name, n in SEARCHED.items():
        own = [r for r in merged if r.model == name]
        search = [r for r in own if _merge(r)["stage"] == "search"]
        test = [r for r in own if _merge(r)["stage"] == "test"]
        assert {(r.dataset, r.role) for r in search} == {("colors-val", "validation")}  # never a shift set
        assert {(r.dataset, r.role) for r in test} == {("colors", "reference"), ("noise", "shift"),
                                                       ("subset", "shift")}
        assert all(r.alpha is None for r in own)
        top1 = {_merge(r)["point_index"]: r for r in search if r.metric == "top1"}
        assert sorted(top1) == list(range(n))
        points = [_merge(top1[i])["point"] for i in range(n)]
        values = [top1[i].value for i in range(n)]
        chosen = [i for i in range(n) if _merge(top1[i])["chosen"]]
        if name != "linear":  # the first best point of the grid (linear's alpha: below)
            assert chosen == [values.index(max(values))]
        assert {_merge(r)["point_index"] for r in test} == set(chosen)
        assert all(_merge(r)["point"] == points[chosen[0]] and _merge(r)["chosen"] for r in test)
        # the reference set's accuracy on the subset shift's classes: the x of its effective robustness
        assert [r.total for r in test if r.metric == "top1_on_subset_classes"] == [12]
    ties = next(r for r in merged if r.model == "ties")
    assert _merge(ties)["search"] == {"density": [0.05, 0.6]} and _merge(ties)["models"] == ["finetuned"]
    assert _merge(ties)["params"] == {"density": _merge(ties)["point"]["density"], "scale": 1.0, "normalize": True}
    assert ties.provenance["method"] == "ties" and ties.provenance["config_hash"]
    stock = next(r for r in merged if r.model == "model_stock")
    assert _merge(stock)["models"] == ["finetuned", "slow"] and _merge(stock)["point"] == {}


def test_linear_merge_is_the_wise_ft_sweep_relabelled(merge_run):
    records = read_records(merge_run)
    sweep = {(r.alpha, r.dataset, r.metric): r.value for r in records if r.model == "finetuned"}
    linear = [r for r in records if r.model == "linear"]
    assert all(_merge(r)["from_sweep"] == "finetuned" for r in linear)
    search = {(_merge(r)["point"]["alpha"], r.dataset, r.metric): r.value for r in linear
              if _merge(r)["stage"] == "search"}
    assert search == {k: v for k, v in sweep.items() if k[1] == "colors-val"}
    alpha = next(_merge(r)["point"]["alpha"] for r in linear if _merge(r)["chosen"])
    assert alpha == select_alpha(records, "finetuned")
    test = {(r.dataset, r.metric): r.value for r in linear if _merge(r)["stage"] == "test"}
    assert test == {(d, m): v for (a, d, m), v in sweep.items() if a == alpha and d != "colors-val"}


def test_chosen_point_records_score_the_merged_weights(merge_run, open_clip_spec, image_data):
    """The test records of 'ties' are the scores of merge_states at the chosen density."""
    records = read_records(merge_run)
    density = next(_merge(r)["point"]["density"] for r in records if r.model == "ties" and _merge(r)["chosen"])
    cfg = parse_config(_config(open_clip_spec, image_data, merge_run))
    data = prepare_data(cfg)
    backbone = load_backbone(cfg.backbone)
    model = build_zeroshot_model(backbone, data.classnames, data.templates)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    theta_1 = load_state(merge_run / "checkpoints" / "finetuned.safetensors")
    model.load_state_dict(merge_states("ties", theta_0, [theta_1], {"density": density}))
    for es in data.evalsets[:2]:  # the reference set and the noise shift
        logits, labels = predict_logits(model, es.batches(backbone, 16))
        rec = next(r for r in records if r.model == "ties" and r.dataset == es.name and r.metric == "top1")
        assert rec.correct == es.scores(logits, labels)["top1"].correct  # in the reference class order


def test_report_compares_the_methods(merge_run):
    report = merge_run / "report"
    table = (report / "methods.md").read_text().split("## Searches")[0]
    rows = [line.split(" | ")[0].strip("| ") for line in table.splitlines() if line.startswith("| ")][1:]
    assert rows == ["zero-shot", "fine-tuned", "WiSE-FT", "output-space ensemble", "fine-tuned (slow)",
                    "WiSE-FT (slow)", "output-space ensemble (slow)", "per-layer", "ties", "model_stock", "linear"]
    records = read_records(merge_run)
    ties = {r.dataset: r for r in records if r.model == "ties" and _merge(r)["stage"] == "test" and r.metric == "top1"}
    line = next(line for line in table.splitlines() if line.startswith("| ties |"))
    assert f"| {100 * ties['colors'].value:.2f} [" in line
    assert f"| {100 * (ties['noise'].value + ties['subset'].value) / 2:.2f} |" in line  # avg shifts
    assert (report / "search_ties.png").exists() and not (report / "search_model_stock.png").exists()
    assert "merge: ties" in (report / "scatter_noise.svg").read_text()
    page = (report / "index.html").read_text()
    assert "<h2>Method comparison</h2>" in page and "search: density in [0.05, 0.6]" in page
    summary = (merge_run / "summary.md").read_text()
    assert '"model_stock": {}' in summary


def test_merged_model_names_cannot_take_a_fine_tunes_name(open_clip_spec, image_data, tmp_path, capsys):
    raw = _config(open_clip_spec, image_data, tmp_path / "x")
    raw["merges"] = [{"method": "ties", "models": ["finetuned", "slwo"]}]
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(raw))
    assert main(["run", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'bad.yaml'}: merges.0.models.1: 'slwo' is not a fine-tune of this run; did you mean " \
           "'slow'? known: finetuned, slow" in err
    assert not (tmp_path / "x").exists()


def test_the_run_directory_config_holds_the_merges_as_written(merge_run):
    written = yaml.safe_load((merge_run / "config.yaml").read_text())
    assert written["merges"] == MERGES
