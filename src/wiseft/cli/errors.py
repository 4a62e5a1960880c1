"""The one place a command's failure becomes a line and an exit code: wiseft's named
errors and bad input (2), I/O failures (74), permissions (77), Ctrl-C (130) and SIGTERM
(143); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import errno
import signal
import sys
from typing import Callable

from wiseft.core import WiseftError, configure_logging
from wiseft.io import Terminated, on_main_thread, raise_terminated


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is reported as one line (``wiseft: error: ...``, exit code 2) rather than
    a traceback: wiseft's named errors (``WiseftError``), a missing file or optional
    dependency, and plain ValueErrors that checks outside the library raise."""
    return isinstance(e, (WiseftError, FileNotFoundError, ImportError, ValueError))


# exit codes scripts can tell apart (docs/reliability.md); 1 is a bug (a traceback)
EXIT_USAGE = 2            # bad input: config, arguments, data, a checkpoint that does not read


EXIT_IOERR = 74           # EX_IOERR: writing or reading failed (disk full, quota, read-only, I/O error)


EXIT_NOPERM = 77          # EX_NOPERM: permission denied on a file or folder


EXIT_INTERRUPTED = 130    # 128 + SIGINT: Ctrl-C


EXIT_TERMINATED = 143     # 128 + SIGTERM


def describe_os_error(e: OSError) -> tuple[str, int]:
    """The one line and the exit code of an I/O failure, naming the file and what to do."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied:{where}; give this user write access there (or choose another output "
                "folder) and run the command again", EXIT_NOPERM)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device writing{where}; nothing half-written was left: free space "
                "there (or choose another output folder) and run the command again", EXIT_IOERR)
    if e.errno == errno.EROFS:
        return f"read-only file system:{where}; choose a writable output folder", EXIT_IOERR
    return f"I/O error on{where}: {e.strerror or e}; check the disk and run the command again", EXIT_IOERR


def call_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``fn(args)`` with the command line's logging. A user's error (:func:`is_user_error`)
    prints one line on stderr and returns 2; an I/O failure one line and 74 (77: permission
    denied); Ctrl-C one line and 130, SIGTERM 143. Anything else (a bug) raises."""
    configure_logging()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread() else None
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("wiseft: interrupted; every file written so far is whole (temporaries are removed): run the same "
              "command again to continue (fine-tunes resume from their last checkpoint)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("wiseft: terminated (SIGTERM); every file written so far is whole: run the same command again "
              "to continue", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, FileNotFoundError):
            message, code = describe_os_error(e)  # disk full, permission denied, ...: 74 or 77
        elif is_user_error(e):
            message, code = str(e), EXIT_USAGE
        else:
            raise
        print(f"wiseft: error: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
