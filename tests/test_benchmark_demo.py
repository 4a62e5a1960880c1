"""benchmarks/demo.py's stage table and benchmarks/compare_records.py, on records and
timings written here (the scripts' own runs take minutes)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stage_table_puts_each_estimate_beside_its_wall_time():
    table = _script("demo").stage_table({"model load": 4.0, "fine-tune finetuned": 60.0, "sweep finetuned": 80.0,
                                         "total": 150.0}, {"fine-tune finetuned": 54.0, "sweep finetuned": 88.0})
    rows = table.splitlines()
    assert rows[0] == "| stage | seconds | share | estimate | estimate / wall |"
    assert "| model load | 4.0 | 3% |  |  |" in rows
    assert "| fine-tune finetuned | 60.0 | 40% | 54.0 | 0.90 |" in rows
    assert "| total | 150.0 | 100% | 142.0 | 0.95 |" in rows
    assert rows[-1] == "| estimated stages | 140.0 | 93% | 142.0 | 1.01 |"


def _record(model, alpha, dataset, metric, correct, total=10, value=None):
    return {"model": model, "alpha": alpha, "dataset": dataset, "role": "reference", "metric": metric,
            "value": value if value is not None else correct / total, "correct": correct,
            "total": total if correct is not None else None, "provenance": {}}


def test_compare_records_counts_the_items_each_cell_moved(tmp_path):
    a = [_record("ft", 0.5, "x", "top1", 7), _record("ft", 1.0, "x", "top1", 8),
         _record("ft", 0.5, "x", "ece", None, value=0.10)]
    b = [_record("ft", 0.5, "x", "top1", 7), _record("ft", 1.0, "x", "top1", 6),
         _record("ft", 0.5, "x", "ece", None, value=0.13)]
    paths = []
    for name, rows in (("a", a), ("b", b)):
        paths.append(tmp_path / f"{name}.jsonl")
        paths[-1].write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmd = [sys.executable, str(ROOT / "benchmarks" / "compare_records.py"), *map(str, paths)]
    out = subprocess.run([*cmd, "--max-items", "2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "2 counted cells; items apart: 0: 1 cells, 2: 1 cells" in out.stdout
    assert "ft alpha=1.0 x top1: 8 vs 6 of 10" in out.stdout
    assert "largest difference of an uncounted value (ece, temperature, ...): 0.03" in out.stdout
    assert subprocess.run([*cmd, "--max-items", "1"], capture_output=True, text=True).returncode == 1
