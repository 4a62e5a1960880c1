"""The input cache's memory-mapped scratch file (issue 24.6): named for its process,
removed when its cache goes, at exit, on Ctrl-C or an error mid-decode and on SIGTERM;
one a killed process (SIGKILL) left is removed by the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import sigint_default

from wiseft.io import release_scratch, scratch_dir, scratch_file
from wiseft.io.atomic import _HOST, _TEMP

# decodes a set into a memory-mapped cache, one input at a time, slowly (so a signal lands mid-decode)
DECODE = textwrap.dedent("""
    import sys, time, torch
    from types import SimpleNamespace
    from wiseft.data import LabeledDataset
    from wiseft.evaluation import build_input_cache

    def slow(x):
        print("decoding", flush=True)
        time.sleep(float(sys.argv[2]))
        return torch.zeros(8, dtype=torch.uint8)

    ds = LabeledDataset([(str(i), 0) for i in range(int(sys.argv[3]))], ["a"], name="slow/set")
    bb = SimpleNamespace(transform_eval=slow, collate=None)
    cache = build_input_cache(ds, bb, batch_size=1, num_workers=0, mode="disk", cache_dir=sys.argv[1],
                              progress=False)
    print("built", cache.path, flush=True)
    if sys.argv[4] == "raise":
        raise KeyboardInterrupt
""")


def _decode(tmp_path: Path, delay: float, n: int, then: str = "") -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", DECODE, str(tmp_path / "scratch"), str(delay), str(n), then or "-"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=sigint_default)


def test_a_scratch_file_names_its_process_and_goes_when_released(tmp_path):
    path = scratch_file("inputs-x/y.u8", tmp_path)
    m = _TEMP.match(path.name)
    assert m and int(m["pid"]) == os.getpid() and m["host"] == _HOST and m["name"] == "inputs-x-y.u8"
    assert path.parent == tmp_path
    release_scratch(path)
    assert not path.exists()
    assert scratch_dir().name == "wiseft-scratch"


def test_a_dead_process_scratch_is_removed_by_the_next(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".inputs-a.u8.{int(dead.stdout)}@{_HOST}.0badc0de.tmp"
    stale.write_bytes(b"x" * 100)
    mine = scratch_file("inputs-b.u8", tmp_path)
    assert not stale.exists() and mine.exists()
    release_scratch(mine)


@pytest.mark.slow  # subprocesses
@pytest.mark.parametrize("how", ["sigterm", "sigint", "exception after the build", "normal exit"])
def test_the_memmap_is_removed_on_signals_and_at_exit(tmp_path, how):
    proc = _decode(tmp_path, 0.3 if how in ("sigterm", "sigint") else 0.0, 50 if how in ("sigterm", "sigint") else 3,
                   "raise" if how.startswith("exception") else "")
    if how in ("sigterm", "sigint"):
        for _ in range(3):  # the file exists once the first input is decoded
            assert proc.stdout.readline().strip() == "decoding"
        assert [p for p in (tmp_path / "scratch").iterdir()], "no scratch file mid-decode"
        proc.send_signal(signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    if how == "sigterm":
        assert proc.returncode == 143, err[-2000:]
    elif how != "normal exit":
        assert proc.returncode != 0
    else:
        assert proc.returncode == 0 and "built" in out, err[-2000:]
    assert list((tmp_path / "scratch").iterdir()) == []
