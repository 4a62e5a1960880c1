"""The command line: one subcommand per library call, and the one place errors become
exit codes."""

from __future__ import annotations

from wiseft.core import front_door

# submodule -> the names it defines that this package exports
_SOURCES = {
    "app": ["main"],
}
__all__, __getattr__, __dir__ = front_door(__name__, _SOURCES)
