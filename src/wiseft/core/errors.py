"""The one base class of wiseft's named errors.

Every error wiseft raises for bad input or a fault it detects (a config field, a
dataset, a checkpoint, a merge, a lock, non-finite weights, a diverged fine-tune)
derives from :class:`WiseftError`, so one ``except WiseftError`` catches them all and
the command line reports each as one line (``wiseft: error: ...``, exit code 2). It is
a ``ValueError``, as the named errors were before, so existing handlers still work.
This module imports nothing, so the command line can use it before torch loads.
"""

from __future__ import annotations


class WiseftError(ValueError):
    """Bad input or a detected fault; the message names the file, field or tensor."""
