"""Scratch files (an input cache's memory map, say): named for their owner like a
temporary, removed when released, at exit and on SIGTERM, which becomes
:class:`Terminated` (exit code 143) so that cleanup runs as for Ctrl-C."""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import signal
from pathlib import Path
from typing import Any

from wiseft.io.atomic import clean_stale, temp_path

_SCRATCH: set[Path] = set()
_SIGTERM_BEFORE: Any = None  # the SIGTERM handler replaced while scratch files exist


def scratch_dir() -> Path:
    """Where scratch files go by default: ``$TMPDIR/wiseft-scratch`` (``/tmp/wiseft-scratch``)."""
    import tempfile

    return Path(tempfile.gettempdir()) / "wiseft-scratch"


def scratch_file(name: str, directory: str | Path | None = None) -> Path:
    """A new empty scratch file in ``directory`` (default :func:`scratch_dir`), named for
    its owner like a temporary (``.NAME.PID@HOST.RANDOM.tmp``). It is removed by
    :func:`release_scratch`, at exit, and on SIGTERM (where nothing else handles it: the
    signal then ends the process with ``SystemExit(143)``, so cleanup runs); one left by a
    killed process (SIGKILL) is removed by the next scratch file or write in that folder."""
    folder = Path(directory) if directory is not None else scratch_dir()
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale(folder)
    path = temp_path(folder / re.sub(r"[^A-Za-z0-9_.-]", "-", name))
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # scratch: this user's only
    _SCRATCH.add(path)
    _catch_sigterm()
    return path


def release_scratch(path: Path | None) -> None:
    """Remove a scratch file (no error if it is gone)."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()
    _SCRATCH.discard(path)
    if not _SCRATCH:
        _restore_sigterm()


def _remove_all_scratch() -> None:
    for path in list(_SCRATCH):
        release_scratch(path)


class Terminated(SystemExit):
    """SIGTERM as an exception (exit code 143), raised in the main thread so that ``finally``
    blocks and exit handlers (temporaries, scratch files, locks) run as for Ctrl-C; the
    command line catches it to say so in one line."""

    def __init__(self) -> None:
        super().__init__(128 + signal.SIGTERM)


def raise_terminated(signum, frame) -> None:
    """A SIGTERM handler: :class:`Terminated`."""
    raise Terminated()


def on_main_thread() -> bool:
    """Whether this is the main thread (the only one that may install signal handlers)."""
    import threading

    return threading.current_thread() is threading.main_thread()


def _catch_sigterm() -> None:
    global _SIGTERM_BEFORE
    if _SIGTERM_BEFORE is not None or not on_main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:  # never over a handler someone else installed
        _SIGTERM_BEFORE = signal.signal(signal.SIGTERM, raise_terminated)


def _restore_sigterm() -> None:
    global _SIGTERM_BEFORE
    if _SIGTERM_BEFORE is not None and on_main_thread():
        if signal.getsignal(signal.SIGTERM) is raise_terminated:
            signal.signal(signal.SIGTERM, _SIGTERM_BEFORE)
        _SIGTERM_BEFORE = None


atexit.register(_remove_all_scratch)
