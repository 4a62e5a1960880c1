"""Training metrics: JSON lines or CSV (by file suffix), and through an experiment
tracker (``io.Tracker``: TensorBoard, MLflow) when one is given."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from wiseft.io import Tracker, atomic_write, open_append

FIELDS = ("stage", "step", "epoch", "loss", "lr", "samples_per_s", "elapsed_s")
TRACKED = ("loss", "lr", "samples_per_s")  # what a tracker gets of each row, as STAGE/NAME at the row's step


class MetricLog:
    """Appends one row per logged step to ``path`` (``.csv`` or JSON lines). On resume,
    rows of steps at or after the resume point are dropped first, so a resumed run's
    log reads like an uninterrupted one. ``tracker`` also gets each row's loss, lr and
    samples/s as ``STAGE/loss`` ... at the row's step; the log closes it."""

    def __init__(self, path: str | Path | None, *, tracker: Tracker | None = None):
        self.path = Path(path) if path else None
        self.csv = self.path is not None and self.path.suffix == ".csv"
        self.f = None
        self.tracker = tracker if tracker is not None else Tracker()

    def truncate(self, stage: str, step: int) -> None:
        """Drop rows of ``stage`` with step >= ``step`` (atomically)."""
        if self.path is None or not self.path.exists():
            return
        self._close_file()
        rows = self._read()
        keep = [r for r in rows if not (r.get("stage", stage) == stage and int(r["step"]) >= step)]
        if len(keep) != len(rows):
            atomic_write(self.path, self._format(keep, header=True))

    def write(self, **row: Any) -> None:
        if self.path is not None:
            if self.f is None:
                self.f = open_append(self.path, encoding="utf-8", newline="")  # drops a killed writer's torn line
            self.f.write(self._format([row], header=self.f.tell() == 0))
            self.f.flush()
        stage = row.get("stage", "train")
        tracked = {f"{stage}/{key}": row[key] for key in TRACKED if row.get(key) is not None}
        if tracked:
            self.tracker.log_metrics(tracked, row["step"])

    def _close_file(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def close(self) -> None:
        self._close_file()
        self.tracker.close()

    def _read(self) -> list[dict]:
        text = self.path.read_text(encoding="utf-8")
        text = text[:text.rfind("\n") + 1]  # a torn last line (its writer was killed) is not a row
        if self.csv:
            return list(csv.DictReader(io.StringIO(text)))
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def _format(self, rows: list[dict], header: bool) -> str:
        if not self.csv:
            return "".join(json.dumps(r) + "\n" for r in rows)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=FIELDS, extrasaction="ignore", lineterminator="\n")
        if header:
            w.writeheader()
        w.writerows(rows)
        return buf.getvalue()
