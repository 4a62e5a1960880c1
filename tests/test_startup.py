"""Start-up cost: ``import wiseft`` and every ``--help`` load no torch, matplotlib or scipy;
the package's names still import; plotting leaves matplotlib's backend alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import wiseft
from wiseft.cli import main

pytestmark = pytest.mark.slow  # fresh interpreters with -X importtime

HEAVY = {"torch", "matplotlib", "scipy"}
SRC = str(Path(wiseft.__file__).resolve().parent.parent)

def python(code: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with ``-X importtime``."""
    full_env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return subprocess.run([sys.executable, "-X", "importtime", "-c", textwrap.dedent(code), *args],
                          capture_output=True, text=True, env=full_env, timeout=300)


def imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def heavy(stderr: str) -> list[str]:
    return sorted(m for m in imported(stderr) if m.split(".")[0] in HEAVY)


def test_import_wiseft_is_light():
    r = python("import wiseft; print(wiseft.__version__, len(dir(wiseft)))")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "wiseft" in imported(r.stderr)
    assert heavy(r.stderr) == []


def test_build_parser_is_light():
    r = python("import wiseft.cli.app; wiseft.cli.app.build_parser()")
    assert r.returncode == 0, r.stderr[-2000:]
    assert heavy(r.stderr) == []


def test_every_help_is_light():
    r = python("""
        import argparse
        from wiseft.cli.app import build_parser, main

        sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
        for argv in [["--help"]] + [[name, "--help"] for name in sub.choices]:
            try:
                main(argv)
            except SystemExit as e:
                assert e.code == 0, (argv, e.code)
            else:
                raise AssertionError(f"{argv} did not exit")
    """)
    assert r.returncode == 0, r.stderr[-2000:]
    for name in ("run", "demo", "report", "interpolate", "soup", "evaluate", "predict", "train"):
        assert f"usage: wiseft {name}" in r.stdout
    assert "--resume" in r.stdout  # train's arguments are there
    assert heavy(r.stderr) == []


def test_help_as_a_module_is_light():
    r = python("import runpy, sys; sys.argv = ['wiseft', '--help']; runpy.run_module('wiseft.cli.app', run_name='__main__')")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage: wiseft" in r.stdout
    assert heavy(r.stderr) == []


def test_every_public_name_imports_in_a_fresh_process():
    """``from wiseft import X`` for each X in ``__all__``; no public name is a module, so
    ``wiseft.evaluate`` and ``wiseft.finetune`` are the functions even when the packages
    that define them load first (no module shares an exported function's name)."""
    r = python("""
        import types
        import wiseft.evaluation.sets, wiseft.train.engine
        import wiseft

        assert isinstance(wiseft.evaluate, types.FunctionType), wiseft.evaluate
        assert wiseft.finetune is wiseft.train.engine.finetune, wiseft.finetune
        modules = [n for n in wiseft.__all__ if isinstance(getattr(wiseft, n), types.ModuleType)]
        assert not modules, modules
        for name in wiseft.__all__:
            exec(f"from wiseft import {name}")
        ns = {}
        exec("from wiseft import *", ns)
        assert set(wiseft.__all__) <= set(ns), set(wiseft.__all__) - set(ns)
        assert set(wiseft.__all__) <= set(dir(wiseft))
        print("ok")
    """)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == "ok"


def test_lazy_names(tmp_path):
    assert wiseft.__version__
    assert {"__version__", *wiseft.__all__} <= set(dir(wiseft))
    for name in wiseft.__all__:
        assert getattr(wiseft, name) is not None
    from wiseft import Interpolator, load_config, sweep  # noqa: F401

    assert wiseft.report.plots.__name__ == "wiseft.report.plots"  # submodules still reachable as attributes
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        wiseft.not_a_name  # noqa: B018
    with pytest.raises(ImportError):
        exec("from wiseft import not_a_name")


def test_errors_still_print_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("no_such_field: 1\n")
    assert main(["run", str(bad), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"wiseft: error: {bad}: ") and len(err.splitlines()) == 1
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.startswith("wiseft: error: ")


def test_plots_leave_the_backend_alone(tmp_path):
    r = python("""
        import sys
        from pathlib import Path

        import matplotlib

        before = matplotlib.get_backend()
        import wiseft.report.plots, wiseft.report.build
        from wiseft.core import Record
        from wiseft.io import append_records

        run = Path(sys.argv[1])
        rows = []
        for ds, role, lo, hi in [("ref", "reference", 0.70, 0.85), ("shift-a", "shift", 0.60, 0.55),
                                 ("shift-b", "shift", 0.50, 0.52), ("val", "validation", 0.71, 0.84)]:
            for i in range(11):
                a = i / 10
                k = round(1000 * ((1 - a) * lo + a * hi + 0.1 * a * (1 - a)))
                rows.append(Record("finetuned", a, ds, role, "top1", k / 1000, k, 1000))
        append_records(run / "results.jsonl", rows)
        wiseft.report.build.build_report(run)
        assert "matplotlib.pyplot" not in sys.modules
        print(before, matplotlib.get_backend())
    """, str(tmp_path / "run"), env={"MPLBACKEND": "svg"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["svg", "svg"]
    pngs = sorted(p.name for p in (tmp_path / "run" / "report").glob("*.png"))
    assert pngs == ["alpha_finetuned.png", "scatter_avg.png", "scatter_shift-a.png", "scatter_shift-b.png"]
    assert all((tmp_path / "run" / "report" / p).read_bytes().startswith(b"\x89PNG") for p in pngs)


def _bad_configs(tmp_path: Path) -> list[Path]:
    """The demo config with one bad field each: the fine-tune, the evaluation, a typo'd key."""
    demo = (Path(SRC).parent / "examples" / "bbc_news.yaml").read_text()
    bad = {"lr": demo.replace("lr: 1.0e-4", "lr: -1"),
           "alphas": demo + "alphas: [0.0, 2.0]\n",
           "typo": demo.replace("batch_size: 64", "batch_sise: 64")}
    out = []
    for name, text in bad.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        out.append(tmp_path / f"{name}.yaml")
    return out


def test_a_bad_config_fails_before_torch_loads(tmp_path):
    """``python -m wiseft run bad.yaml`` names the field and exits 2 before torch (and the
    dataset and backbone modules, which import it) load: the config is checked first with
    the plug-in checks deferred (issue 24.9; they took ~5 s on an idle 2-core machine)."""
    for path in _bad_configs(tmp_path):
        r = subprocess.run([sys.executable, "-X", "importtime", "-m", "wiseft", "run", str(path)],
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])})
        errors = [line for line in r.stderr.splitlines() if not line.startswith("import time:")]
        assert r.returncode == 2 and len(errors) == 1 and path.name in errors[0], r.stderr[-2000:]
        assert heavy(r.stderr) == [], (path.name, heavy(r.stderr))
        assert not any(m.startswith(("wiseft.data.", "wiseft.backbones.")) for m in imported(r.stderr))


def test_plugin_errors_still_found_after_the_deferred_check(tmp_path):
    """The deferred pass takes any dataset option or backbone family; the full one after it
    still names them."""
    from wiseft.config import ConfigError, load_config

    demo = (Path(SRC).parent / "examples" / "bbc_news.yaml").read_text()
    cases = {"family": (demo.replace("family: sentence_transformer", "family: sentence_transformers"),
                        "did you mean 'sentence_transformer'"),
             "option": (demo.replace("view: headline", "veiw: headline"), "did you mean 'view'")}
    for name, (text, expected) in cases.items():
        (tmp_path / f"{name}.yaml").write_text(text)
        with pytest.raises(ConfigError, match=expected):
            load_config(tmp_path / f"{name}.yaml")
