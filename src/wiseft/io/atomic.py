"""The one I/O layer: atomic writes, stale temporaries, folder locks, and the one
checkpoint resolver.

Every file wiseft leaves goes through :func:`atomic_path` (or its short forms
:func:`atomic_write`, :func:`append_text`): the bytes go to ``.NAME.PID@HOST.RANDOM.tmp``
in the destination's folder, are fsynced, renamed over ``NAME``, and the folder is
fsynced. A reader sees the old file or the new one, never half of one. A process
killed mid-write leaves its temporary behind; the next write into that folder (or
the next lock of it) removes temporaries whose process is gone.

A run directory or training-checkpoint folder is held by one process at a time with
:func:`hold` (``fcntl.flock`` on ``.wiseft.lock``, which holds the PID); the kernel
drops the lock when its holder dies, so a killed run never blocks the next.

Checkpoints on disk are read through :func:`resolve_checkpoint` (safetensors file,
shard index, Hugging Face or wiseft directory, torch file) and :func:`read_torch`
(``torch.load(weights_only=True)``; a pickle that would run code is a named error).

This module imports only the standard library at the top (torch when reading a
torch file), so every other module may use it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import fnmatch
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from wiseft.core import WiseftError

log = logging.getLogger("wiseft")

LOCK_NAME = ".wiseft.lock"
# test hook: SIGKILL this process after a temporary whose destination name matches this
# glob is written and fsynced, before it is renamed (tests/test_faults.py)
KILL_ENV = "WISEFT_FAULT_KILL_IN_WRITE"
_HOST = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "host"
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)@(?P<host>[A-Za-z0-9_-]+)\.[0-9a-f]+\.tmp$")


class LockError(WiseftError):
    """A folder is held by another process; the message names the folder and its PID."""


# ---------------------------------------------------------------------------------------
# atomic writes


def temp_path(dest: str | Path) -> Path:
    """A fresh temporary name next to ``dest`` that names this process:
    ``.NAME.PID@HOST.RANDOM.tmp``."""
    dest = Path(dest)
    return dest.with_name(f".{dest.name}.{os.getpid()}@{_HOST}.{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(folder: str | Path) -> list[Path]:
    """Remove temporaries in ``folder`` left by a process of this host that is gone
    (killed mid-write); return what was removed."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = _TEMP.match(name)
        if not m or m["host"] != _HOST or _alive(int(m["pid"])):
            continue
        p = Path(folder) / name
        with contextlib.suppress(OSError):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
            removed.append(p)
    if removed:
        log.info("removed %d stale temporar%s of killed processes in %s: %s", len(removed),
                 "y" if len(removed) == 1 else "ies", folder, ", ".join(p.name for p in removed))
    return removed


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or new entry in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems cannot fsync a directory
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for root, _, names in os.walk(path):
            for n in names:
                _fsync_file(Path(root) / n)
            fsync_dir(root)
    else:
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fault_hook(dest: Path) -> None:
    pattern = os.environ.get(KILL_ENV)
    if pattern and fnmatch.fnmatch(dest.name, pattern):
        os.kill(os.getpid(), signal.SIGKILL)


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()


_OS_CODE = re.compile(r"\bOs \{ code: (\d+)|\(os error (\d+)\)")


def named_io_error(e: BaseException, dest: str | Path) -> OSError | None:
    """``e`` as an OSError naming ``dest`` (the file the user asked for, not a temporary),
    when ``e`` is an I/O failure: an OSError that names no file or a temporary, or a Rust
    library's I/O error (safetensors' ``SafetensorError``: "Os { code: 28, ... }").
    None for anything else, and for an OSError that already names another file."""
    if isinstance(e, OSError):
        names_a_file = e.filename and not any(_TEMP.match(part) for part in Path(str(e.filename)).parts)
        if e.errno is None or names_a_file:
            return None
        code = e.errno
    else:
        found = _OS_CODE.search(str(e)) if type(e).__name__ == "SafetensorError" else None
        if found is None:
            return None
        code = int(found[1] or found[2])
    return OSError(code, os.strerror(code), str(dest))


@contextlib.contextmanager
def writing(dest: str | Path) -> Iterator[None]:
    """Within it, an I/O failure (disk full, permission denied, ...) is re-raised as an
    OSError naming ``dest`` (:func:`named_io_error`); any other exception passes unchanged."""
    try:
        yield
    except Exception as e:
        named = named_io_error(e, dest)
        if named is None:
            raise
        raise named from e


def _umask() -> int:
    """The process's umask, read without changing it where /proc tells it (threads may be
    creating files meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _honour_umask(path: Path) -> None:
    """Give the files a writer made in ``path`` the mode a new file gets (0666 less the
    umask): some writers (safetensors) create theirs 0600 whatever the umask."""
    mode = 0o666 & ~_umask()
    files = [Path(root) / n for root, _, names in os.walk(path) for n in names] if path.is_dir() else [path]
    for f in files:
        if not f.is_symlink() and (f.stat().st_mode & 0o777) != mode:
            os.chmod(f, mode)


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    created = []
    p = folder
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    folder.mkdir(parents=True, exist_ok=True)
    return created


@contextlib.contextmanager
def atomic_path(dest: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``dest`` (an empty folder when ``directory``);
    what the block writes there is fsynced and renamed over ``dest`` when it ends
    without error, with the mode the umask gives a new file; when it raises, the
    temporary and the folders made for it are removed, and an I/O failure (disk full,
    permission denied) is an OSError naming ``dest``. A directory replaces an old one
    (exchanged in one step where the kernel can)."""
    dest = Path(dest)
    with writing(dest):
        created = _make_parents(dest.parent)
    tmp = temp_path(dest)
    ok = False
    try:
        with writing(dest):
            clean_stale(dest.parent)
            if directory:
                tmp.mkdir()
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            yield tmp
            _honour_umask(tmp)
            _fsync_tree(tmp)
            _fault_hook(dest)
            if directory and dest.exists():
                _replace_dir(tmp, dest)
            else:
                os.replace(tmp, dest)
            fsync_dir(dest.parent)
            ok = True
    finally:
        if tmp.exists() or tmp.is_symlink():
            _remove(tmp)
        if not ok:
            for folder in created:  # deepest first; a folder something else wrote into stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Put directory ``tmp`` at ``dest`` where a directory already is: an atomic
    exchange (renameat2) where available, else move the old one to a temporary name
    first (a kill in between leaves it there, removed as stale by the next write)."""
    if _exchange(tmp, dest):
        _remove(tmp)  # now the old directory
        return
    old = temp_path(dest)
    os.replace(dest, old)
    os.replace(tmp, dest)
    _remove(old)


def _exchange(a: Path, b: Path) -> bool:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def atomic_write(dest: str | Path, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write text or bytes to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding=encoding)
        else:
            tmp.write_bytes(data)
    return Path(dest)


def append_text(dest: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Append ``text`` to ``dest`` (created if missing) by writing the old content plus
    the new to a temporary and renaming it: a kill leaves the old file whole."""
    dest = Path(dest)
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as out:
            if dest.exists():
                with open(dest, "rb") as src:
                    shutil.copyfileobj(src, out)
            out.write(text.encode(encoding))
    return dest


def open_append(path: str | Path, encoding: str = "utf-8", newline: str | None = None):
    """Open a line log for appending, first dropping a torn last line (a writer killed
    mid-line); write whole lines and flush after each."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError), open(path, "r+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end:
            f.seek(end - 1)
            if f.read(1) != b"\n":  # torn: cut back to the end of the last whole line
                pos = end
                while pos > 0:
                    start = max(0, pos - (1 << 16))
                    f.seek(start)
                    cut = f.read(pos - start).rfind(b"\n")
                    if cut >= 0:
                        pos = start + cut + 1
                        break
                    pos = start
                log.warning("%s ended in a torn line (a writer was killed); dropped %d bytes", path, end - pos)
                f.truncate(pos)
    return open(path, "a", encoding=encoding, newline=newline)


# ---------------------------------------------------------------------------------------
# locks


def _holder(path: Path) -> str:
    try:
        pid = path.read_text().split()[0]
        return f"process {pid}"
    except (OSError, IndexError):
        return "another process"


class FolderLock:
    """An advisory lock (``fcntl.flock``) on ``FOLDER/.wiseft.lock``, which holds the
    holder's PID. Released by :meth:`release`, or by the kernel when the holder dies."""

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "FolderLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            for attempt in range(10):  # a moment's grace for another process's check_free probe
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if attempt == 9:
                        raise
                    time.sleep(0.05)
        except BlockingIOError:
            os.close(fd)
            raise LockError(f"{self.what} {self.folder} is in use by {_holder(self.path)} (lock {self.path}); "
                            "wait for it to finish, or choose another output_dir") from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {_HOST}\n".encode())
        os.fsync(fd)
        self.fd = fd
        clean_stale(self.folder)
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def hold(folder: str | Path, what: str = "folder") -> FolderLock:
    """``with hold(run_dir, "run directory"):`` - the folder is this process's until the
    block ends; another process gets a LockError naming the holder's PID."""
    return FolderLock(folder, what)


def check_free(folder: str | Path, what: str = "folder") -> None:
    """Raise LockError if another process holds ``folder`` now; writes nothing (a cheap
    check before expensive work; :func:`hold` is what keeps the folder)."""
    path = Path(folder) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise LockError(f"{what} {folder} is in use by {_holder(path)} (lock {path}); "
                        "wait for it to finish, or choose another output_dir") from None
    finally:
        os.close(fd)


def clear_dir(folder: str | Path) -> None:
    """Remove everything in ``folder`` but its lock file."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name != LOCK_NAME:
                _remove(p)


# ---------------------------------------------------------------------------------------
# the checkpoint resolver


def write_with(dest: str | Path, writer: Callable[[Path], Any]) -> Path:
    """``writer(tmp)`` writes the file at a temporary path; then it is renamed to ``dest``."""
    with atomic_path(dest) as tmp:
        writer(tmp)
    return Path(dest)
