"""Time the README's main job, `wiseft demo`, stage by stage, as a new user runs it
(fresh run directory, empty head cache), and optionally put the measured table and
times into the README.

Stages: data, model load, zero-shot head, each fine-tune, each alpha sweep, export
(from ``RunResult.timings``), then the report. Prints a Markdown table and writes a
JSON summary next to the run directory.

    python benchmarks/demo.py [--quick] [--output-dir runs/bench-demo] [--update-readme]

``--update-readme`` (full runs) copies the run's records to
``benchmarks/results/demo/results.jsonl`` and pastes the report's own ``table.md``
between the README's ``demo-table`` markers; tests/test_readme.py rebuilds that table
from those records and checks the README holds exactly it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECORDS = ROOT / "benchmarks" / "results" / "demo" / "results.jsonl"
START, END = "<!-- demo-table:start -->", "<!-- demo-table:end -->"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import torch

    return f"{os.cpu_count()} vCPU {cpu}, torch {torch.__version__}, Python {platform.python_version()}"


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def run_demo(out: Path, quick: bool) -> tuple[dict[str, float], Path]:
    """Run the demo into ``out`` (removed first) and time the report too."""
    import wiseft
    from wiseft.cli import DEMO_CONFIG
    from wiseft.config import load_config

    cfg = load_config(DEMO_CONFIG, {"output_dir": str(out)})
    run_dir = Path(cfg.output_dir + ("-quick" if quick else ""))
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    result = wiseft.run(cfg, progress=False, quick=quick)
    t = time.perf_counter()
    wiseft.build_report(result.run_dir)
    timings = {**result.timings, "report": time.perf_counter() - t, "total": time.perf_counter() - start}
    return timings, result.run_dir


def update_readme(run_dir: Path, timings: dict[str, float], text: str) -> str:
    """The README with the report's table between the markers and the measured wall time."""
    table = (run_dir / "report" / "table.md").read_text().strip()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    text = f"{head}{START}\n{table}\n{END}{tail}"
    return re.sub(r"\*\*wall time [^*]+\*\*", f"**wall time {duration(timings['total'])}**", text, count=1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="time `wiseft demo --quick` instead")
    p.add_argument("--output-dir", default="runs/bench-demo")
    p.add_argument("--update-readme", action="store_true", help="write the measured table and time into README.md")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["WISEFT_CACHE"] = cache  # a new user's first run: no cached zero-shot head
        timings, run_dir = run_demo(Path(args.output_dir), args.quick)
    print(f"`wiseft demo{' --quick' if args.quick else ''}` on {machine()}\n")
    print("| stage | seconds | share |\n|---|---|---|")
    for stage, s in timings.items():
        print(f"| {stage} | {s:.1f} | {100 * s / timings['total']:.0f}% |")
    summary = {"quick": args.quick, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "timings_s": timings}
    (run_dir / "benchmark.json").write_text(json.dumps(summary, indent=2))
    if args.update_readme:
        if args.quick:
            raise SystemExit("--update-readme takes a full run's table, not a quick one")
        RECORDS.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(run_dir / "results.jsonl", RECORDS)
        readme = ROOT / "README.md"
        readme.write_text(update_readme(run_dir, timings, readme.read_text()))
        print(f"\nREADME.md table and time updated; records in {RECORDS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
