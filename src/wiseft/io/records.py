"""A run's records file, ``results.jsonl``: records appended as JSON lines (the old lines and
the new written to a temporary that replaces the file), and read back as ``Record``s
(docs/results-format.md)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Iterable

from wiseft.core import Record
from wiseft.io.atomic import append_text


def append_records(path: str | Path, records: Iterable[Record]) -> None:
    """Append records to a JSON-lines file (created if missing) atomically: the old lines
    plus the new go to a temporary that replaces the file, so a kill leaves it whole."""
    append_text(path, "".join(json.dumps(asdict(r), sort_keys=True) + "\n" for r in records))


def read_records(path: str | Path) -> list[Record]:
    """Read every record of a results file; a malformed line is an error naming its line."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"no results file at {path}")
    out = []
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(Record(**json.loads(line)))
            except (json.JSONDecodeError, TypeError, ValueError) as e:
                raise ValueError(f"{path}:{i}: not a wiseft result record ({e})") from None
    return out
