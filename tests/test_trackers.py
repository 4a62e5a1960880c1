"""Experiment trackers: one interface (``io.Tracker``), TensorBoard and MLflow behind it, a
tiny ``wiseft run`` read back with each library's own reader."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CONFIG, TINY_OPEN_CLIP, run_config

from wiseft import read_records, run
from wiseft.config import ConfigError, RunConfig, TrackingConfig, load_config, parse_config
from wiseft.core import Record
from wiseft.io import (
    FanOut,
    Scoped,
    Tracker,
    TrackerError,
    flatten_params,
    log_records,
    metric_key,
    open_tracker,
    record_metrics,
)

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")


def _scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class Recorder(Tracker):
    def __init__(self):
        self.calls = []

    def log_params(self, params):
        self.calls.append(("params", dict(params)))

    def log_metrics(self, metrics, step):
        self.calls.append(("metrics", dict(metrics), step))

    def log_artifact(self, path):
        self.calls.append(("artifact", str(path)))

    def close(self, failed=False):
        self.calls.append(("close", failed))


@pytest.fixture(scope="module")
def tracked_run(open_clip_spec, image_data, tmp_path_factory):
    """A tiny run with MLflow (its own SQLite store) and TensorBoard on, a variant and a merge."""
    out = tmp_path_factory.mktemp("tracked") / "run"
    cfg = run_config(open_clip_spec, image_data, out, export=False, alphas=[0.0, 0.25, 0.5, 1.0],
                     variants={"slow": {"lr": 1e-4}}, merges=[{"method": "linear"}],
                     tracking={"tensorboard": True, "mlflow": {"experiment": "colors", "run_name": "tiny"}})
    result = run(parse_config(cfg), progress=False)
    return out, result


def _mlflow_run(out, experiment="colors"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, found


@pytest.mark.slow  # a whole run with two fine-tunes: over 2 s
def test_mlflow_gets_params_training_sweep_selection_and_artifacts(tracked_run):
    out, result = tracked_run
    client, found = _mlflow_run(out)
    rid = found.info.run_id
    assert found.info.run_name == "tiny" and found.info.status == "FINISHED"
    cfg = load_config(out / "config.yaml")
    assert found.data.params == flatten_params(cfg.model_dump(mode="json"))
    assert found.data.params["finetune.lr"] == "0.001" and found.data.params["variants.slow.lr"] == "0.0001"
    assert found.data.tags["config_hash"] == cfg.config_hash()

    # training: every logged row of each fine-tune's log, at its step
    for name in ("finetuned", "slow"):
        rows = [json.loads(line) for line in (out / f"train_{name}.jsonl").read_text().splitlines()]
        for key in ("loss", "lr", "samples_per_s"):
            history = client.get_metric_history(rid, f"train/{name}/e2e/{key}")
            assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r[key])) for r in rows]

    # the sweep: every record, at step alpha * 100, with the alpha beside it; a merge's at its point's index
    records = read_records(out)
    assert records == result.records and any(r.alpha is None for r in records)
    for r in records:
        if r.alpha is None:
            key, step = metric_key("merge", r.model, r.dataset, r.metric), r.provenance["merge"]["point_index"]
        else:
            key, step = metric_key("sweep", r.model, r.dataset, r.metric), round(r.alpha * 100)
        values = {m.step: m.value for m in client.get_metric_history(rid, key)}
        assert values[step] == pytest.approx(r.value), key
    assert [(m.step, m.value) for m in client.get_metric_history(rid, "sweep/finetuned/alpha")] == \
        [(0, 0.0), (25, 0.25), (50, 0.5), (100, 1.0)]
    for name, alpha in result.selected_alpha.items():
        assert client.get_metric_history(rid, f"selected_alpha/{name}")[0].value == alpha

    assert {f.path for f in client.list_artifacts(rid)} == {"summary.md", "results.jsonl"}
    artifacts = out.resolve() / "mlflow" / "artifacts"
    assert (next(artifacts.rglob("results.jsonl"))).read_text() == (out / "results.jsonl").read_text()


@pytest.mark.slow
def test_tensorboard_gets_the_same_scalars(tracked_run):
    out, result = tracked_run
    scalars = _scalars(out / "tensorboard")
    rows = [json.loads(line) for line in (out / "train_finetuned.jsonl").read_text().splitlines()]
    assert [s for s, _ in scalars["train/finetuned/e2e/loss"]] == [r["step"] for r in rows]
    assert [v for _, v in scalars["train/finetuned/e2e/loss"]] == pytest.approx([r["loss"] for r in rows])
    by_step = record_metrics(result.records)
    for step, metrics in by_step.items():
        for key, value in metrics.items():
            assert dict(scalars[key])[step] == pytest.approx(value), key
    assert scalars["selected_alpha/finetuned"] == [(0, pytest.approx(result.selected_alpha["finetuned"]))]


@pytest.mark.slow
def test_a_rerun_starts_tensorboard_over_and_opens_a_new_mlflow_run(open_clip_spec, image_data, tmp_path):
    out = tmp_path / "run"
    cfg = parse_config(run_config(open_clip_spec, image_data, out, export=False, alphas=[0.0, 1.0],
                                  finetune={"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1},
                                  tracking={"tensorboard": True, "mlflow": True}))
    run(cfg, progress=False)
    run(cfg, progress=False)  # reuses the fine-tune: no training metrics this time
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    scalars = _scalars(out / "tensorboard")
    assert not any(k.startswith("train/") for k in scalars)
    assert [s for s, _ in scalars["sweep/finetuned/alpha"]] == [0, 100]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("wiseft").experiment_id])
    assert len(runs) == 2 and {r.info.run_name for r in runs} == {"run"}


@pytest.mark.slow
def test_finetune_tensorboard_keeps_its_meaning(open_clip_spec, image_data, tmp_path):
    """``finetune.tensorboard: true``: event files beside the log (train_NAME/), tags STAGE/loss."""
    out = tmp_path / "run"
    cfg = parse_config(run_config(open_clip_spec, image_data, out, export=False, alphas=[0.0, 1.0],
                                  finetune={"mode": "lp-ft", "lr": 1e-3, "batch_size": 8, "epochs": 1,
                                            "tensorboard": True}))
    run(cfg, progress=False)
    scalars = _scalars(out / "train_finetuned")
    assert {"lp/loss", "lp/lr", "lp/samples_per_s", "ft/loss", "ft/lr", "ft/samples_per_s"} <= set(scalars)
    assert not (out / "tensorboard").exists() and not (out / "mlflow").exists()


def test_tracking_is_out_of_the_dump_at_its_default_and_out_of_the_hash(open_clip_spec, image_data, tmp_path):
    base = run_config(open_clip_spec, image_data, tmp_path / "run")
    plain = parse_config(base)
    assert "tracking" not in plain.model_dump(mode="json") and "\ntracking:" not in plain.to_yaml()
    tracked = parse_config({**base, "tracking": {"mlflow": True}})
    assert tracked.tracking.mlflow.experiment == "wiseft" and tracked.tracking.mlflow.tracking_uri is None
    assert tracked.config_hash() == plain.config_hash()
    assert tracked.train_key() == plain.train_key()
    again = parse_config(yaml.safe_load(tracked.to_yaml()))
    assert again.tracking == tracked.tracking
    assert parse_config({**base, "tracking": {"mlflow": False}}).tracking == TrackingConfig()


@pytest.mark.parametrize("tracking, where, hint", [
    ({"tensorbord": True}, "tracking.tensorbord", "did you mean 'tensorboard'"),
    ({"mlflow": {"tracking_url": "sqlite:///x.db"}}, "tracking.mlflow.tracking_url", "did you mean 'tracking_uri'"),
    ({"mlflow": {"experiment": " "}}, "tracking.mlflow.experiment", "give the MLflow experiment a name"),
])
def test_a_misspelled_tracking_key_is_a_config_error(open_clip_spec, image_data, tmp_path, tracking, where, hint):
    cfg = run_config(open_clip_spec, image_data, tmp_path / "run", tracking=tracking)
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert where in str(e.value) and hint in str(e.value)


def test_a_store_that_does_not_open_is_an_error_naming_its_uri(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    uri = f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"
    settings = TrackingConfig(mlflow={"tracking_uri": uri})
    with pytest.raises(TrackerError, match="cannot open the tracking store") as e:
        open_tracker(settings, tmp_path / "run")
    assert uri in str(e.value)


def test_a_run_with_a_bad_store_stops_before_training(open_clip_spec, image_data, tmp_path, capsys):
    from wiseft.cli import main

    uri = "nosuchscheme://host/store"
    cfg = run_config(open_clip_spec, image_data, tmp_path / "run", tracking={"mlflow": {"tracking_uri": uri}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--no-progress", "--no-report"]) == 2
    assert uri in capsys.readouterr().err
    assert not (tmp_path / "run" / "train_finetuned.jsonl").exists()


@pytest.mark.parametrize("package, extra, settings", [
    ("mlflow", "mlflow", {"mlflow": True}),
    ("torch.utils.tensorboard", "tensorboard", {"tensorboard": True}),
])
def test_a_missing_package_names_its_extra(monkeypatch, tmp_path, package, extra, settings):
    real = builtins.__import__

    def fake(name, *args, **kwargs):
        if name == package or name.startswith(package + "."):
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=rf"pip install 'wiseft\[{extra}\]'"):
        open_tracker(TrackingConfig(**settings), tmp_path)


def test_no_tracking_and_other_ranks_log_nowhere(tmp_path, monkeypatch):
    assert type(open_tracker(None, tmp_path)) is Tracker
    assert type(open_tracker(TrackingConfig(), tmp_path)) is Tracker
    import wiseft.runtime as runtime
    from wiseft.runtime.distributed import DistInfo

    monkeypatch.setattr(runtime, "current", lambda: DistInfo(1, 2, 1))
    assert type(open_tracker(TrackingConfig(tensorboard=True, mlflow=True), tmp_path)) is Tracker
    assert not any(tmp_path.iterdir())


def test_fan_out_scoped_views_and_record_steps():
    a, b = Recorder(), Recorder()
    with FanOut([a, Scoped(b, "train/x/")]) as t:
        t.log_metrics({"e2e/loss": 1.0}, 3)
    assert a.calls == [("metrics", {"e2e/loss": 1.0}, 3), ("close", False)]
    assert b.calls == [("metrics", {"train/x/e2e/loss": 1.0}, 3)]  # the view leaves its tracker open

    recs = [Record("finetuned (output ensemble)", 0.3, "colors-val", "validation", "top1", 0.75),
            Record("finetuned", 0.3, "colors", "reference", "top1", 0.5)]
    log_records(a, recs)
    assert a.calls[-1] == ("metrics", {"sweep/finetuned_output_ensemble/alpha": 0.3,
                                       "sweep/finetuned_output_ensemble/colors-val/top1": 0.75,
                                       "sweep/finetuned/alpha": 0.3, "sweep/finetuned/colors/top1": 0.5}, 30)
    assert flatten_params({"a": {"b": [1, 2], "c": None, "d": {}}, "e": "x"}) == \
        {"a.b": "[1, 2]", "a.c": "null", "a.d": "{}", "e": "x"}


def test_the_config_section_validates_without_torch():
    assert RunConfig.model_fields["tracking"].default_factory() == TrackingConfig()


@pytest.mark.slow  # a fine-tune
def test_wiseft_train_logs_through_the_same_trackers(open_clip_spec, image_data, tmp_path):
    from wiseft.pipeline import train_from_config

    out = tmp_path / "run"
    cfg = parse_config(run_config(open_clip_spec, image_data, out, tracking={"tensorboard": True},
                                  finetune={"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1}))
    train_from_config(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "train_finetuned.jsonl").read_text().splitlines()]
    scalars = _scalars(out / "tensorboard")
    assert [s for s, _ in scalars["train/finetuned/e2e/lr"]] == [r["step"] for r in rows]
    assert [v for _, v in scalars["train/finetuned/e2e/lr"]] == pytest.approx([r["lr"] for r in rows])


def test_alphas_closer_than_a_hundredth_share_a_step_with_a_warning(caplog):
    recs = [Record("finetuned", a, "colors", "reference", "top1", v) for a, v in ((0.5, 0.1), (0.501, 0.2))]
    with caplog.at_level("WARNING", logger="wiseft"):
        assert list(record_metrics(recs)) == [50]
    assert "share step 50" in caplog.text


def test_mlflow_and_tensorboard_read_back_what_the_interface_logged(tmp_path):
    """The quick tier's read-back: one tracker of both kinds, without a pipeline."""
    from mlflow.tracking import MlflowClient

    (tmp_path / "summary.md").write_text("| a | b |\n")
    settings = TrackingConfig(tensorboard=True, mlflow={"experiment": "x", "run_name": "r"})
    with open_tracker(settings, tmp_path, params={"finetune": {"lr": 0.001}, "alphas": [0.0, 1.0]}) as t:
        assert isinstance(t, FanOut)
        for step in range(3):
            t.log_metrics({"train/finetuned/e2e/loss": 1.0 / (step + 1)}, step)
        t.log_artifact(tmp_path / "summary.md")
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert found.info.run_name == "r" and found.info.status == "FINISHED"
    assert found.data.params == {"finetune.lr": "0.001", "alphas": "[0.0, 1.0]"}
    history = client.get_metric_history(found.info.run_id, "train/finetuned/e2e/loss")
    assert [(m.step, m.value) for m in history] == [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]
    assert [f.path for f in client.list_artifacts(found.info.run_id)] == ["summary.md"]
    assert _scalars(tmp_path / "tensorboard")["train/finetuned/e2e/loss"] == \
        [(0, 1.0), (1, 0.5), (2, pytest.approx(1 / 3))]

    with pytest.raises(RuntimeError):  # a block that raises marks its run failed
        with open_tracker(TrackingConfig(mlflow={"experiment": "x"}), tmp_path):
            raise RuntimeError("diverged")
    runs = client.search_runs([client.get_experiment_by_name("x").experiment_id])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [("r", "FINISHED"), (tmp_path.name, "FAILED")]


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.slow  # a torchrun launch of two processes
@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun not installed")
def test_under_torchrun_only_rank_0_logs(open_clip_spec, image_data, tmp_path):
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    entry = tmp_path / "entry.py"
    entry.write_text("import os, sys, open_clip\nopen_clip.add_model_config(os.environ['OC_DIR'])\n"
                     "from wiseft.cli.app import main\nsys.exit(main())\n")
    out = tmp_path / "run"
    cfg = run_config(open_clip_spec, image_data, out, export=False, alphas=[0.0, 1.0],
                     finetune={"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1},
                     tracking={"tensorboard": True, "mlflow": True})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WISEFT_CACHE": str(tmp_path / "cache"),
           "OC_DIR": str(tmp_path / "oc")}
    env.pop("RANK", None)
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(entry), "run",
                           str(tmp_path / "config.yaml"), "--no-progress", "--no-report"], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    client, found = _mlflow_run(out, "wiseft")  # one MLflow run, not one per process
    rows = [json.loads(line) for line in (out / "train_finetuned.jsonl").read_text().splitlines()]
    history = client.get_metric_history(found.info.run_id, "train/finetuned/e2e/loss")
    assert [(m.step, m.value) for m in history] == [(r["step"], pytest.approx(r["loss"])) for r in rows]
