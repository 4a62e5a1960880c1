"""Training metrics: JSON lines or CSV (by file suffix), optionally TensorBoard."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from wiseft.io import atomic_write, open_append

FIELDS = ("stage", "step", "epoch", "loss", "lr", "samples_per_s", "elapsed_s")


class MetricLog:
    """Appends one row per logged step to ``path`` (``.csv`` or JSON lines). On resume,
    rows of steps at or after the resume point are dropped first, so a resumed run's
    log reads like an uninterrupted one."""

    def __init__(self, path: str | Path | None, *, tensorboard_dir: str | Path | None = None):
        self.path = Path(path) if path else None
        self.csv = self.path is not None and self.path.suffix == ".csv"
        self.f = None
        self.tb = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("tensorboard: true needs the tensorboard package: "
                                  f"pip install 'wiseft[tensorboard]' ({e})") from e
            self.tb = SummaryWriter(str(tensorboard_dir))

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
        if self.tb is not None:
            for key in ("loss", "lr", "samples_per_s"):
                if row.get(key) is not None:
                    self.tb.add_scalar(f"{row.get('stage', 'train')}/{key}", row[key], row["step"])

    def _close_file(self) -> None:
        if self.f is not None:
            self.f.close()
            self.f = None

    def close(self) -> None:
        self._close_file()
        if self.tb is not None:
            self.tb.close()

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
