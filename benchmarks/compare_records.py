"""How far two runs' records are apart: for every (model, alpha, dataset, metric) with counts,
the difference in correct items; for the rest (ECE, temperature, ...), the largest difference
in value. Two runs of the same config on two machines (or one with native bf16 and one
without) should differ by at most an item or so per cell.

    python benchmarks/compare_records.py RUN_A/results.jsonl RUN_B/results.jsonl [--max-items 1]

Exits 1 when some cell differs by more than ``--max-items`` items (or the cells differ).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def cells(path: Path) -> dict[tuple, dict]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[(r["model"], r["alpha"], r["dataset"], r["metric"], r["provenance"].get("method"))] = r
    return out


def compare(a: dict[tuple, dict], b: dict[tuple, dict]) -> tuple[Counter, list[tuple], float]:
    """(histogram of |correct_a - correct_b| over counted cells, the cells that differ, the
    largest |value_a - value_b| over uncounted ones)."""
    hist, differ, other = Counter(), [], 0.0
    for key in sorted(a, key=str):
        ra, rb = a[key], b[key]
        if ra["correct"] is not None:
            d = abs(ra["correct"] - rb["correct"])
            hist[d] += 1
            if d:
                differ.append((key, ra["correct"], rb["correct"], ra["total"]))
        else:
            other = max(other, abs(ra["value"] - rb["value"]))
    return hist, differ, other


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", type=Path)
    p.add_argument("b", type=Path)
    p.add_argument("--max-items", type=int, default=1)
    args = p.parse_args()
    a, b = cells(args.a), cells(args.b)
    if set(a) != set(b):
        raise SystemExit(f"the runs hold different cells: {sorted(set(a) ^ set(b), key=str)[:5]}")
    hist, differ, other = compare(a, b)
    print(f"{sum(hist.values())} counted cells; items apart: "
          + ", ".join(f"{d}: {n} cells" for d, n in sorted(hist.items())))
    for key, ca, cb, total in differ:
        print(f"  {key[0]} alpha={key[1]} {key[2]} {key[3]}{' ' + key[4] if key[4] else ''}: {ca} vs {cb} of {total}")
    print(f"largest difference of an uncounted value (ece, temperature, ...): {other:.3g}")
    if max(hist) > args.max_items:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
