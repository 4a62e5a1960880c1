"""The CI contract: every extra a user may install alone gets its own fresh venv in .ci/run."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CI = ROOT / ".ci" / "run"
# Extras that add no code path of their own to run: the test and everything bundles,
# tensorboard and mlflow (optional trackers), lora (peft adapters) and datasets (a dataset
# kind): each goes on top of a backbone family's extra and has no model of its own to run
# alone; each one's missing-import error, naming the extra, is tested in the suite.
NOT_ALONE = {"test", "all", "tensorboard", "mlflow", "lora", "datasets"}


def _extras() -> dict[str, list[str]]:
    tomllib = pytest.importorskip("tomllib")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _included(extra: str, extras: dict[str, list[str]]) -> set[str]:
    """``extra`` and the extras it pulls in through ``wiseft[...]``."""
    out = {extra}
    for req in extras[extra]:
        m = re.fullmatch(r"wiseft\[([^\]]+)\]", req.replace(" ", ""))
        if m:
            for e in m.group(1).split(","):
                out |= _included(e, extras)
    return out


def test_ci_script_parses():
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    subprocess.run(["bash", "-n", str(CI)], check=True)


def test_every_extra_is_installed_alone_in_the_matrix():
    extras = _extras()
    text = CI.read_text()
    alone = set(re.findall(r"^fresh_venv (\S+)$", text, re.M))
    assert alone, "no `fresh_venv EXTRA` steps in .ci/run"
    assert alone <= set(extras), f"matrix installs unknown extras {alone - set(extras)}"
    covered = set().union(*(_included(e, extras) for e in alone))
    missing = set(extras) - NOT_ALONE - covered
    assert not missing, f"extras no matrix step installs alone: {sorted(missing)}"


def test_readme_first_command_is_a_matrix_step():
    """The README's first command (`pip install -e ".[demo]" && wiseft demo`) is what a
    new user runs: its extras alone, then the demo (quick), in its own venv."""
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    first = re.findall(r"```bash\n(.+?)\n```", quickstart)[0]
    (names,) = re.findall(r'pip install -e "\.\[([^\]]+)\]"', first)
    text = CI.read_text()
    for extra in names.split(","):
        assert re.search(rf"^fresh_venv {re.escape(extra)}$", text, re.M), extra
    assert "wiseft demo --quick" in text


def test_smoke_script_usage_without_arguments():
    proc = subprocess.run([sys.executable, str(ROOT / ".ci" / "smoke.py")], capture_output=True, text=True)
    assert proc.returncode == 2 and "openclip" in proc.stderr


def test_pydantic_floor_has_the_field_options_the_configs_use():
    # Field(exclude_if=...) keeps default-valued fields out of config hashes; it came in
    # pydantic 2.12, and an older pydantic rejects it when wiseft.config is imported
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    floor = next(re.fullmatch(r"pydantic>=(\d+)\.(\d+)", d.replace(" ", "")) for d in deps if d.startswith("pydantic"))
    uses = [p for p in (ROOT / "src" / "wiseft").rglob("*.py") if "exclude_if=" in p.read_text()]
    assert uses and (int(floor[1]), int(floor[2])) >= (2, 12), [str(p) for p in uses]
