"""The command line that started this process's work, as typed, for what a run writes
about itself (the model card's "made by" line). The ``wiseft`` command sets it; a run
started from Python has none, and says which call made it instead."""

from __future__ import annotations

import contextlib
import shlex
from contextvars import ContextVar
from typing import Iterator, Sequence

_COMMAND: ContextVar[str | None] = ContextVar("wiseft_command", default=None)


@contextlib.contextmanager
def invoked_as(argv: Sequence[str], prog: str = "wiseft") -> Iterator[str]:
    """While the block runs, :func:`current_command` is ``prog`` (as given: ``wiseft``,
    ``python -m wiseft``) then ``argv`` quoted as a shell would need them
    (``wiseft run cfg.yaml --set finetune.lr=1e-5``).

    Example:
        >>> with invoked_as(["demo", "--quick"]):
        ...     current_command()
        'wiseft demo --quick'
    """
    line = " ".join([prog, shlex.join(argv)]) if argv else prog
    token = _COMMAND.set(line)
    try:
        yield line
    finally:
        _COMMAND.reset(token)


def current_command() -> str | None:
    """The command line set by :func:`invoked_as` around the running command, or None
    (the work was started from Python)."""
    return _COMMAND.get()
