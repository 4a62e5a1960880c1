"""End to end: `wiseft run` on tiny models and synthetic images, and the WiSE-FT invariants."""

import json

import pytest
import torch
import yaml
from conftest import COLORS, run_config

from wiseft import load_model, read_records, run
from wiseft.cli import main
from wiseft.config import parse_config
from wiseft.evaluation import predict_logits
from wiseft.heads import build_zeroshot_model
from wiseft.merge import Interpolator
from wiseft.pipeline import prepare_data


@pytest.fixture(scope="module")
def oc_run(open_clip_spec, image_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_oc")
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(open_clip_spec, image_data, out / "run")))
    assert main(["run", str(cfg_path), "--no-progress", "--no-report"]) == 0
    return out / "run"


def test_run_writes_records_for_11_alphas(oc_run):
    records = read_records(oc_run)
    alphas = sorted({r.alpha for r in records})
    assert alphas == pytest.approx([i / 10 for i in range(11)])
    datasets = {(r.dataset, r.role) for r in records}
    assert datasets == {("colors", "reference"), ("noise", "shift"), ("subset", "shift"),
                        ("colors-val", "validation")}
    assert len([r for r in records if r.metric == "top1" and r.model == "finetuned"]) == 11 * 4
    # the output-space ensemble over the same alphas; at the ends it is the zero-shot / fine-tuned model
    ensemble = {(r.alpha, r.dataset): r.correct for r in records
                if r.model == "finetuned (output ensemble)" and r.metric == "top1"}
    wise = {(r.alpha, r.dataset): r.correct for r in records if r.model == "finetuned" and r.metric == "top1"}
    assert ensemble.keys() == wise.keys()
    assert all(ensemble[k] == wise[k] for k in wise if k[0] in (0.0, 1.0))
    # the reference set's accuracy on the 2-class subset shift's classes, the x of its effective robustness
    restricted = [r for r in records if r.metric == "top1_on_subset_classes" and r.model == "finetuned"]
    assert [r.dataset for r in restricted] == ["colors"] * 11 and all(r.total == 12 for r in restricted)
    # calibration: a temperature per alpha fitted on validation, ECE for every set
    assert {(r.alpha, r.dataset) for r in records if r.metric == "temperature"} == {
        (a, "colors-val") for a in alphas}
    assert len([r for r in records if r.metric == "ece"]) == 11 * 4
    sub = [r for r in records if r.dataset == "subset" and r.metric == "top1"]
    assert all(r.total == 10 and 0 <= r.correct <= r.total for r in sub)
    prov = records[0].provenance
    assert {"backbone", "templates_hash", "config_hash", "versions", "mode", "compute"} <= set(prov)
    # where it was computed, and in what precision (the suite runs as on a CPU without native bf16)
    compute = prov["compute"]
    assert compute["device"] == "cpu" and compute["native_bf16"] is False and compute["native_bf16_forced"] is False
    assert compute["torch"] == torch.__version__ and compute["cores"] >= 1 and compute["cpu"]
    assert (compute["evaluation_precision"], compute["finetune_precision"]) == ("fp32", "fp32")
    assert compute["precision_why"]["finetuned"].startswith("auto: ") and "lacks native bf16" in \
        compute["precision_why"]["evaluation"]
    summary = (oc_run / "summary.md").read_text()
    assert summary.startswith("| model | alpha | colors | noise | subset |")
    assert "precision: evaluation fp32, fine-tune finetuned fp32 (auto: " in summary
    assert f"computed on: cpu {compute['cpu']}, " in summary and f"torch {torch.__version__}" in summary
    written = yaml.safe_load((oc_run / "config.yaml").read_text())
    assert written["backbone"]["family"] == "open_clip"
    assert written["finetune"]["precision"] == written["evaluation"]["precision"] == "fp32"  # auto, resolved


def test_wiseft_env_reports_versions_devices_precisions_and_caches(capsys, monkeypatch):
    monkeypatch.setenv("WISEFT_CACHE", "/somewhere/wiseft")
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"] in torch.__version__
    cpu = env["devices"][0]
    assert cpu["device"] == "cpu" and cpu["auto_precision"].startswith("fp32 (auto: ")  # forced off in the suite
    assert env["caches"]["heads"] == "/somewhere/wiseft/heads"
    assert env["variables"]["WISEFT_NATIVE_BF16"] == "0"
    assert main(["env"]) == 0
    text = capsys.readouterr().out
    assert "native bf16: False (forced by WISEFT_NATIVE_BF16); precision auto picks fp32" in text
    assert "  heads: /somewhere/wiseft/heads" in text and "\n  torch: " in text


def test_alpha_ends_reproduce_zeroshot_and_finetuned_outputs(oc_run, open_clip_spec, image_data):
    from wiseft.backbones import load_backbone
    from wiseft.io import load_state

    cfg = parse_config(run_config(open_clip_spec, image_data, oc_run))
    data = prepare_data(cfg)
    bb = load_backbone(cfg.backbone)
    model = build_zeroshot_model(bb, data.classnames, data.templates)
    batches = list(data.evalsets[0].batches(bb, 16))
    zs_logits, _ = predict_logits(model, batches)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    theta_1 = load_state(oc_run / "checkpoints" / "finetuned.safetensors")

    ft = build_zeroshot_model(bb, data.classnames, data.templates)
    ft.load_state_dict(theta_1)
    ft_logits, _ = predict_logits(ft, batches)
    assert not torch.equal(zs_logits, ft_logits)

    work = build_zeroshot_model(load_backbone(cfg.backbone), data.classnames, data.templates)
    interp = Interpolator(theta_0, theta_1)
    assert torch.equal(predict_logits(interp.load_into(work, 0.0), batches)[0], zs_logits)
    assert torch.equal(predict_logits(interp.load_into(work, 1.0), batches)[0], ft_logits)


def test_two_runs_give_identical_records(oc_run, open_clip_spec, image_data, tmp_path):
    again = run(parse_config(run_config(open_clip_spec, image_data, tmp_path / "again", export=False)),
                progress=False)
    key = lambda r: (r.model, r.alpha, r.dataset)  # noqa: E731
    first = {key(r): r.correct for r in read_records(oc_run)}
    assert {key(r): r.correct for r in again.records} == first


def test_linear_mode_logits_mix_in_output_space(open_clip_spec, image_data, tmp_path):
    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path / "lin", export=False,
                                  finetune={"mode": "linear", "lr": 1e-2, "batch_size": 8, "epochs": 3,
                                            "warmup_steps": 0}))
    result = run(cfg, progress=False)
    from wiseft.backbones import load_backbone
    from wiseft.io import load_state

    theta_1 = load_state(tmp_path / "lin" / "checkpoints" / "finetuned.safetensors")
    data = prepare_data(cfg)
    bb = load_backbone(cfg.backbone)
    model = build_zeroshot_model(bb, data.classnames, data.templates)
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(theta_0[k], theta_1[k]) for k in theta_0 if not k.startswith("head."))
    batches = list(data.evalsets[1].batches(bb, 16))
    zs, labels = predict_logits(model, batches)
    model.load_state_dict(theta_1)
    ft, _ = predict_logits(model, batches)
    interp = Interpolator(theta_0, theta_1)
    for alpha in (0.0, 0.2, 0.5, 0.9, 1.0):
        mixed, _ = predict_logits(interp.load_into(model, alpha), batches)
        torch.testing.assert_close(mixed, (1 - alpha) * zs + alpha * ft, atol=1e-4, rtol=1e-5)
        # and the sweep's features-once shortcut scored exactly these logits
        rec = next(r for r in result.records if r.alpha == alpha and r.dataset == "noise")
        # (scored in the set's own class order: the folder's classes, projected from the reference's)
        assert rec.correct == int((data.evalsets[1].project(mixed).argmax(1) == labels).sum())


def test_export_loads_back_and_predicts(oc_run, image_data, capsys, open_clip_spec):
    import open_clip

    model, bb, meta = load_model(oc_run / "export")
    assert meta["classnames"] == list(COLORS)
    assert 0.0 <= meta["alpha"] <= 1.0
    # the image tower loads into open_clip with its own call
    native, _, _ = open_clip.create_model_and_transforms(open_clip_spec["name"],
                                                         pretrained=str(oc_run / "export" / meta["native"]))
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(native.visual.state_dict()[k], v)
    img = sorted((image_data / "test" / "blue").iterdir())[0]
    assert main(["predict", str(oc_run / "export"), str(img), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(img)) and line.count("%") == 2


def test_evaluate_and_interpolate_commands(oc_run, open_clip_spec, image_data, tmp_path, capsys):
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(run_config(open_clip_spec, image_data, tmp_path / "unused")))
    assert main(["evaluate", str(oc_run / "export"), str(cfg_path), "--out", str(tmp_path / "r.jsonl")]) == 0
    recs = read_records(tmp_path / "r.jsonl")
    meta = json.loads((oc_run / "export" / "wiseft.json").read_text())
    swept = {r.dataset: r.correct for r in read_records(oc_run)
             if r.alpha == meta["alpha"] and r.metric == "top1" and r.model == "finetuned"}
    assert {r.dataset: r.correct for r in recs} == swept  # the export scores as the sweep did

    ckpts = oc_run / "checkpoints"
    zs = tmp_path / "zs.safetensors"
    from wiseft.io import load_state, save_state

    theta_1 = load_state(ckpts / "finetuned.safetensors")
    model, _, _ = load_model(oc_run / "export")
    # an open_clip training checkpoint: a 'state_dict' entry with DDP 'module.' prefixes
    pt = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in theta_1.items()}}, pt)
    save_state(zs, {k: v * 0 for k, v in theta_1.items()})
    assert main(["interpolate", str(zs), str(pt), "--alpha", "0.25", "--out", str(tmp_path / "m.safetensors")]) == 0
    merged = load_state(tmp_path / "m.safetensors")
    torch.testing.assert_close(merged["head.weight"], 0.25 * theta_1["head.weight"])


def test_bad_inputs_give_clear_errors(open_clip_spec, image_data, tmp_path, capsys):
    cfg = run_config(open_clip_spec, image_data, tmp_path / "x")
    cfg["finetune"]["learning_rate"] = 1.0
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(p)]) == 2
    assert "finetune.learning_rate: Extra inputs are not permitted" in capsys.readouterr().err

    a = tmp_path / "a.safetensors"
    b = tmp_path / "b.safetensors"
    from wiseft.io import save_state

    save_state(a, {"w": torch.zeros(2, 3), "b": torch.zeros(2)})
    save_state(b, {"w": torch.zeros(2, 4), "b": torch.zeros(2)})
    assert main(["interpolate", str(a), str(b), "--alpha", "0.5", "--out", str(tmp_path / "o.safetensors")]) == 2
    assert "tensor 'w' has shape (2, 3)" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()


def test_rerun_reuses_finetuned_weights_and_changed_settings_retrain(oc_run, open_clip_spec, image_data, tmp_path):
    import shutil

    out = shutil.copytree(oc_run, tmp_path / "run", copy_function=shutil.copy2)  # the shared run stays as it is
    ckpt = out / "checkpoints" / "finetuned.safetensors"
    before = ckpt.stat().st_mtime_ns
    key = lambda r: (r.alpha, r.dataset, r.metric)  # noqa: E731
    first = {key(r): (r.correct, r.value) for r in read_records(out)}
    cfg = run_config(open_clip_spec, image_data, out, export=False)
    again = run(parse_config(cfg), progress=False)
    assert ckpt.stat().st_mtime_ns == before
    assert {key(r): (r.correct, r.value) for r in again.records} == first
    cfg["finetune"]["epochs"] = 1
    run(parse_config({**cfg, "alphas": [0.0, 1.0]}), progress=False)
    assert ckpt.stat().st_mtime_ns != before
    assert len(list((out / "checkpoints").glob("train_finetuned_*"))) == 2


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_quick_run_is_the_same_pipeline_on_a_slice_marked_as_such(open_clip_spec, image_data, tmp_path):
    cfg = run_config(open_clip_spec, image_data, tmp_path / "run",
                     variants={"high": {"lr": 1e-2, "epochs": 3}}, alphas=[0.0, 0.25, 0.5, 0.75, 1.0])
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["run", str(tmp_path / "cfg.yaml"), "--quick", "--no-progress"]) == 0
    quick = tmp_path / "run-quick"
    assert not (tmp_path / "run").exists()  # a real run's directory is never touched
    records = read_records(quick)
    assert sorted({r.alpha for r in records}) == [0.0, 0.5, 1.0]
    assert {r.model for r in records} == {"finetuned", "high", "finetuned (output ensemble)", "high (output ensemble)"}
    assert all(r.provenance["quick"] is True for r in records)
    assert all(r.total <= 48 for r in records if r.metric == "top1")
    # one epoch for every fine-tune, the variant's own epochs included: 27 training images, batch 8
    for name in ("finetuned", "high"):
        steps = [json.loads(line)["step"] for line in (quick / f"train_{name}.jsonl").read_text().splitlines()]
        assert max(steps) == 3
    assert yaml.safe_load((quick / "config.yaml").read_text())["variants"] == {"high": {"lr": 1e-2}}
    assert (quick / "summary.md").read_text().startswith("QUICK RUN")
    assert (quick / "report" / "table.md").read_text().startswith("**QUICK RUN")
    assert "QUICK RUN" in (quick / "report" / "index.html").read_text()


def test_quick_slice_takes_classes_in_turn():
    from wiseft.data import LabeledDataset
    from wiseft.pipeline.prepare import quick_slice

    ds = LabeledDataset([(i, i % 5) for i in range(500)], list("abcde"))
    sliced = quick_slice(ds, 48)
    counts = [sliced.labels.count(y) for y in range(5)]
    assert len(sliced) == 48 and min(counts) == 9 and max(counts) == 10
    assert quick_slice(ds, 48).samples == sliced.samples  # seeded
    assert len(quick_slice(ds.subset(range(20)), 48)) == 20


def test_predict_uses_the_temperature_fitted_on_validation(oc_run, image_data, capsys):
    from wiseft.data import load_image
    from wiseft.heads import load_model

    meta = json.loads((oc_run / "export" / "wiseft.json").read_text())
    fitted = [r.value for r in read_records(oc_run)
              if r.model == "finetuned" and r.metric == "temperature" and r.alpha == meta["alpha"]]
    assert meta["temperature"] == fitted[0] and meta["temperature"] != 1.0
    image = next((image_data / "test" / "red").iterdir())
    capsys.readouterr()
    assert main(["predict", str(oc_run / "export"), str(image), "--top-k", "1"]) == 0
    shown = float(capsys.readouterr().out.rsplit(" ", 1)[1].rstrip("%\n"))
    model, bb, _ = load_model(oc_run / "export")
    with torch.no_grad():
        logits = model(bb.transform_eval(load_image(image))[None])
    assert shown == pytest.approx(100 * (logits / meta["temperature"]).softmax(-1).max().item(), abs=0.06)


def test_report_shows_calibration_and_says_why_robustness_is_empty(oc_run, tmp_path):
    from wiseft.report import build_report

    page = build_report(oc_run, out_dir=tmp_path).read_text()
    calibration = (tmp_path / "calibration.md").read_text().splitlines()
    assert calibration[2].split(" | ")[:3] == ["| model", "alpha", "temperature"]
    assert len(calibration) == 4 + 11 and "<h2>Calibration</h2>" in page
    robustness = (tmp_path / "robustness.md").read_text()
    assert "Not computed: no baseline models were measured on colors" in robustness
    assert "--baselines" in robustness


def test_evaluate_command_skips_and_counts_unreadable_images(oc_run, open_clip_spec, image_data, tmp_path):
    import shutil

    test = shutil.copytree(image_data / "test", tmp_path / "test")
    (test / "red" / "zz_broken.jpg").write_bytes(b"not an image")
    cfg = run_config(open_clip_spec, image_data, tmp_path / "unused")
    cfg["data"]["test"]["root"] = str(test)
    cfg["data"]["max_unreadable"] = 0.1
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["evaluate", str(oc_run / "export"), str(tmp_path / "c.yaml"), "--out", str(tmp_path / "r.jsonl")]) == 0
    top1 = [r for r in read_records(tmp_path / "r.jsonl") if r.dataset == "colors" and r.metric == "top1"]
    assert top1[0].total == 18 and top1[0].provenance["skipped_inputs"] == 1


def test_a_variant_runs_end_to_end_beside_the_main_fine_tune(open_clip_spec, image_data, tmp_path):
    from wiseft.io import load_state, read_meta
    from wiseft.train import CheckpointDir

    cfg = parse_config(run_config(open_clip_spec, image_data, tmp_path / "run", export=False, alphas=[0.0, 0.5, 1.0],
                                  variants={"low_lr": {"lr": 1e-4, "epochs": 1}}))
    result = run(cfg, progress=False)
    out = tmp_path / "run"
    # weights and training checkpoints named by the variant and its own train key
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.safetensors")) == ["finetuned.safetensors", "low_lr.safetensors"]
    from wiseft.pipeline import resolve_precisions

    ran, _ = resolve_precisions(cfg, torch.device("cpu"))  # the train key of what ran: precision auto resolved
    key = ran.train_key("low_lr")
    assert key != ran.train_key("finetuned") and read_meta(ckpts / "low_lr.safetensors")["train_key"] == key
    last = torch.load(CheckpointDir(ckpts / f"train_low_lr_{key}" / "e2e").latest(), weights_only=True)
    assert (last["config"]["lr"], last["config"]["epochs"], last["step"]) == (1e-4, 1, 4)  # 27 images, batch 8
    assert not all(torch.equal(v, load_state(ckpts / "finetuned.safetensors")[k])
                   for k, v in load_state(ckpts / "low_lr.safetensors").items())
    # its metrics log: one epoch at the variant's peak lr (warmup 1)
    rows = [json.loads(line) for line in (out / "train_low_lr.jsonl").open()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3] and rows[0]["lr"] == 1e-4
    # its records: the same alphas and sets as the main run; alpha 0, the zero-shot model, scores the same
    records = read_records(out)
    assert {r.model for r in records} == {"finetuned", "finetuned (output ensemble)", "low_lr",
                                          "low_lr (output ensemble)"}
    for model in ("finetuned", "low_lr"):
        assert {(r.alpha, r.dataset) for r in records if r.model == model and r.metric == "top1"} == {
            (a, d) for a in (0.0, 0.5, 1.0) for d in ("colors", "noise", "subset", "colors-val")}
    zeroshot = lambda m: {(r.dataset, r.metric): r.correct for r in records if r.model == m and r.alpha == 0.0}  # noqa: E731
    assert zeroshot("low_lr") == zeroshot("finetuned")
    assert result.selected_alpha.keys() == {"finetuned", "low_lr"}
    assert "| low_lr |" in (out / "summary.md").read_text()
