"""Time the README's main job, `wiseft demo`, stage by stage, as a new user runs it
(fresh run directory, empty head cache), and optionally put the measured table and
times into the README.

Stages: data, model load, zero-shot head, each fine-tune, each alpha sweep, export
(from ``RunResult.timings``), then the report. Prints a Markdown table with the run's own
estimate of each stage beside its wall time, and writes a JSON summary (with the
machine, ``runtime.compute_info``) next to the run directory.

    python benchmarks/demo.py [--quick] [--output-dir runs/bench-demo] [--update-readme]
                              [--no-native-bf16] [--other-kernels]

``--no-native-bf16`` runs as on a CPU without native bf16 (``WISEFT_NATIVE_BF16=0``: what
``precision: auto`` decides, and so the estimate, follow it). ``--other-kernels`` also makes
torch, MKL and oneDNN pick other kernels than this CPU's best (AVX2 instead of AVX-512:
``ATEN_CPU_CAPABILITY``, ``MKL_ENABLE_INSTRUCTIONS``, ``ONEDNN_MAX_CPU_ISA``), so fp32 sums
run in another order, as on another CPU; compare two runs' records with
``benchmarks/compare_records.py``.

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


OTHER_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}


def machine() -> str:
    from wiseft.runtime import compute_info, describe_compute

    kernels = ", ".join(f"{k}={os.environ[k]}" for k in OTHER_KERNELS if k in os.environ)
    return (describe_compute(compute_info("cpu")) + f", Python {platform.python_version()}"
            + (f", {kernels}" if kernels else ""))


def duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def run_demo(out: Path, quick: bool) -> tuple[dict[str, float], dict[str, float], Path]:
    """Run the demo into ``out`` (removed first) and time the report too."""
    import wiseft
    from wiseft.cli.app import DEMO_CONFIG
    from wiseft.config import load_config

    cfg = load_config(DEMO_CONFIG, {"output_dir": str(out)})
    run_dir = Path(cfg.output_dir + ("-quick" if quick else ""))
    shutil.rmtree(run_dir, ignore_errors=True)
    start = time.perf_counter()
    result = wiseft.run(cfg, progress=False, quick=quick)
    t = time.perf_counter()
    wiseft.build_report(result.run_dir)
    timings = {**result.timings, "report": time.perf_counter() - t, "total": time.perf_counter() - start}
    return timings, result.estimate, result.run_dir


def stage_table(timings: dict[str, float], estimate: dict[str, float]) -> str:
    """Markdown: each stage's wall time, share, and the run's estimate of it (estimated stages only)."""
    rows = ["| stage | seconds | share | estimate | estimate / wall |", "|---|---|---|---|---|"]
    for stage, s in timings.items():
        est = estimate.get(stage) if stage != "total" else sum(estimate.values())
        cells = (f"{est:.1f} | {est / s:.2f}" if est else " | ")
        rows.append(f"| {stage} | {s:.1f} | {100 * s / timings['total']:.0f}% | {cells} |")
    estimated = sum(timings[k] for k in estimate if k in timings)
    if estimate and estimated:
        rows.append(f"| estimated stages | {estimated:.1f} | {100 * estimated / timings['total']:.0f}% | "
                    f"{sum(estimate.values()):.1f} | {sum(estimate.values()) / estimated:.2f} |")
    return "\n".join(rows)


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
    p.add_argument("--no-native-bf16", action="store_true", help="run as on a CPU without native bf16")
    p.add_argument("--other-kernels", action="store_true", help="AVX2 kernels in torch, MKL and oneDNN")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.no_native_bf16:
        os.environ["WISEFT_NATIVE_BF16"] = "0"
    if args.other_kernels:
        os.environ.update(OTHER_KERNELS)  # read when torch loads: set before the first import
    with tempfile.TemporaryDirectory() as cache:
        os.environ["WISEFT_CACHE"] = cache  # a new user's first run: no cached zero-shot head
        timings, estimate, run_dir = run_demo(Path(args.output_dir), args.quick)
    print(f"`wiseft demo{' --quick' if args.quick else ''}` on {machine()}\n")
    print(stage_table(timings, estimate))
    summary = {"quick": args.quick, "machine": machine(), "date": time.strftime("%Y-%m-%d"), "timings_s": timings,
               "estimate_s": estimate}
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
