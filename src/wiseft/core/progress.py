"""Progress bars that suit both terminals and logs.

On a terminal, :func:`progress_bar` returns a tqdm bar that redraws in place. Anywhere
else (CI logs, ``nohup``, captured notebook output) every redraw would become a line, so
it returns a :class:`LogProgress` that prints a few plain lines to stderr instead: one
at the start, one at 25%, 50% and 75% (not for ``leave=False`` bars, tqdm's mark of a
passing detail), one whenever ``WISEFT_PROGRESS_INTERVAL`` seconds (default 30) passed
without a line, and one at the end with the time taken and the rate::

    fine-tune (finetuned): 33/66 steps (50%), 41 s, 0.8 steps/s, loss=0.412

``WISEFT_PROGRESS=tqdm`` or ``WISEFT_PROGRESS=lines`` forces one kind.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

INTERVAL_ENV = "WISEFT_PROGRESS_INTERVAL"
KIND_ENV = "WISEFT_PROGRESS"
DEFAULT_INTERVAL = 30.0
MILESTONES = (25, 50, 75)


def configure_logging() -> None:
    """The command line's output: wiseft's own messages as plain lines; other libraries'
    only from warnings up, and without their model load/save bars (they named temporary
    folders and drew bars of their own between ours)."""
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    # under torchrun rank 0 tells the story; the other processes say only what goes wrong
    logging.getLogger("wiseft").setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # huggingface_hub and transformers


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 disable: bool = False, unit: str = "it", leave: bool = True, initial: int = 0,
                 file: TextIO | None = None):
    """A progress bar over ``iterable`` (or updated by hand up to ``total``): tqdm when
    ``file`` (default stderr) is a terminal, plain sparse lines otherwise.

    Both kinds support iteration, ``update(n)``, ``set_postfix(**values)``, ``close()``
    and ``with``. ``disable=True`` prints nothing.
    """
    stream = sys.stderr if file is None else file
    kind = os.environ.get(KIND_ENV, "").strip().lower()
    if not disable and (kind == "tqdm" or (kind != "lines" and _isatty(stream))):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, initial=initial, file=file)
    return LogProgress(iterable, total=total, desc=desc, disable=disable, unit=unit, leave=leave, initial=initial,
                       file=file)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _interval() -> float:
    value = os.environ.get(INTERVAL_ENV)
    if not value:
        return DEFAULT_INTERVAL
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{INTERVAL_ENV} must be a number of seconds, got {value!r}") from None


def _plural(unit: str) -> str:
    if unit == "it" or unit.endswith("s"):
        return unit
    return unit + ("es" if unit.endswith(("ch", "sh", "x")) else "s")


def duration(seconds: float) -> str:
    """'4.2 s', '42 s', '4 min 05 s', '1 h 02 min'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _rate(per_s: float, unit: str) -> str:
    units = _plural(unit)
    if per_s >= 100:
        return f"{per_s:.0f} {units}/s"
    if per_s >= 0.1:
        return f"{per_s:.2g} {units}/s" if per_s < 10 else f"{per_s:.1f} {units}/s"
    return f"{1 / per_s:.3g} s/{unit}"


class LogProgress:
    """tqdm's interface for logs: a handful of plain lines, no carriage returns.

    ``leave=False`` drops the milestone lines (start, end and time-based lines remain).
    ``interval`` (seconds between time-based lines) defaults to ``WISEFT_PROGRESS_INTERVAL``
    or 30; ``clock`` is for tests.
    """

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 disable: bool = False, unit: str = "it", leave: bool = True, initial: int = 0,
                 file: TextIO | None = None, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                pass
        self.iterable, self.total, self.desc, self.disable = iterable, total, desc, disable
        self.unit, self.n, self.initial = unit, initial, initial
        self.milestones = MILESTONES if leave else ()
        self.postfix = ""
        self.file = file
        self.interval = _interval() if interval is None else interval
        self.clock = clock
        self.start_t = self.last_t = clock()
        self.closed = False
        self._milestone = self._reached()
        if not disable:
            self._line("resuming" if initial else "started")

    # tqdm's interface -------------------------------------------------------------------

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress bar has no iterable; call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def __len__(self) -> int:
        if self.total is None:
            raise TypeError("progress bar without a total")
        return self.total

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; print a line at a new milestone or ``interval`` seconds after the last line."""
        self.n += n
        if self.disable or self.closed:
            return
        reached = self._reached()
        now = self.clock()
        if reached > self._milestone or now - self.last_t >= self.interval:
            if self.total is None or self.n < self.total:  # the end line says 100%
                self._line()
        self._milestone = max(self._milestone, reached)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Values shown after the counts in later lines, e.g. ``loss=0.412``."""
        values = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are printed as progress is made."""

    def close(self) -> None:
        """Print the end line (count, time taken, rate) once."""
        if self.closed:
            return
        self.closed = True
        if not self.disable:
            self._line(done=True)

    # lines --------------------------------------------------------------------------------

    def _reached(self) -> int:
        """The last milestone (percent) reached, 0 if none or without a total."""
        if not self.total:
            return 0
        pct = 100 * self.n / self.total
        return max((m for m in self.milestones if pct >= m), default=0)

    def format(self, note: str | None = None, done: bool = False) -> str:
        elapsed = self.clock() - self.start_t
        units = _plural(self.unit)
        count = f"{self.n}/{self.total} {units}" if self.total is not None else f"{self.n} {units}"
        if self.total:
            count += f" ({100 * self.n // self.total}%)"
        parts = [count]
        if note:
            parts.append(note)
        else:
            parts.append(duration(elapsed))
            done_here = self.n - self.initial
            if elapsed > 0 and done_here > 0:
                parts.append(_rate(done_here / elapsed, self.unit))
        if self.postfix and not note:
            parts.append(self.postfix)
        if done and self.total is not None and self.n < self.total:
            parts.append("stopped early")
        head = f"{self.desc}: " if self.desc else ""
        return head + ", ".join(parts)

    def _line(self, note: str | None = None, done: bool = False) -> None:
        stream = sys.stderr if self.file is None else self.file
        print(self.format(note, done), file=stream, flush=True)
        self.last_t = self.clock()

    def __repr__(self) -> str:
        return f"<LogProgress {self.format()}>"
