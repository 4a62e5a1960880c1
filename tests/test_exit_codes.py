"""Failures a script must tell apart, each one line naming the file and what to do
(issue 24.5): disk full while writing (74), permission denied (77), Ctrl-C (130),
SIGTERM (143), bad input (2); no traceback, no temporary and no empty folder left."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import sigint_default
from safetensors.torch import save_file

from wiseft.cli import main
from wiseft.cli.errors import EXIT_INTERRUPTED, EXIT_IOERR, EXIT_NOPERM, EXIT_TERMINATED
from wiseft.io import atomic_path, write_with
from wiseft.io.atomic import named_io_error


@pytest.fixture
def pair(tmp_path):
    torch.manual_seed(0)
    sd = {f"w{i}": torch.randn(16, 16) for i in range(3)}
    save_file(sd, str(tmp_path / "a.safetensors"))
    save_file({k: v + 1 for k, v in sd.items()}, str(tmp_path / "b.safetensors"))
    return tmp_path / "a.safetensors", tmp_path / "b.safetensors"


def _leftovers(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.name.endswith(".tmp")
                  or (p.is_dir() and not any(p.iterdir())))


def _fail_writes(monkeypatch, err: OSError) -> None:
    """Every write of a merged tensor fails with ``err`` (as a full disk fails a write: no file name)."""
    import wiseft.merge.safetensors as merge_safetensors

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise err

        def close(self):
            self.handle.close()

    start = merge_safetensors.CheckpointWriter.start_shard

    def start_shard(self, i):
        start(self, i)
        self.handle = Full(self.handle)

    monkeypatch.setattr(merge_safetensors.CheckpointWriter, "start_shard", start_shard)


@pytest.mark.parametrize("alphas", [["0.5"], ["0.5", "0.7"]])
def test_disk_full_during_a_merge_is_one_line_and_exit_74(pair, tmp_path, capsys, monkeypatch, alphas):
    _fail_writes(monkeypatch, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "new" / ("merged.safetensors" if len(alphas) == 1 else "sweep")
    args = ["interpolate", str(pair[0]), str(pair[1]), "--out", str(out)]
    for a in alphas:
        args += ["--alpha", a]
    assert main(args) == EXIT_IOERR
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wiseft: error: no space left on the device writing")
    assert str(out) in err[0] and "free space" in err[0]
    assert not (tmp_path / "new").exists() and _leftovers(tmp_path) == []  # no empty folder, no temporary


def test_permission_denied_is_exit_77(pair, tmp_path, capsys, monkeypatch):
    _fail_writes(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    out = tmp_path / "merged.safetensors"
    assert main(["interpolate", str(pair[0]), str(pair[1]), "--alpha", "0.5", "--out", str(out)]) == EXIT_NOPERM
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"wiseft: error: permission denied: {out};")


def test_a_safetensors_error_from_a_full_disk_names_the_file(tmp_path):
    """safetensors reports a full disk as SafetensorError("... Os { code: 28 ... }"), naming no
    file: the write turns it into OSError(ENOSPC) naming the destination, and removes the
    temporary and the folders it made."""
    from safetensors import SafetensorError

    dest = tmp_path / "cache" / "heads" / "x.safetensors"

    def writer(tmp):
        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    with pytest.raises(OSError) as e:
        write_with(dest, writer)
    assert (e.value.errno, e.value.filename) == (errno.ENOSPC, str(dest))
    assert not (tmp_path / "cache").exists()
    assert named_io_error(ValueError("Os { code: 28 }"), dest) is None  # only I/O errors are renamed
    named = OSError(errno.ENOSPC, "full", str(tmp_path / "other"))
    assert named_io_error(named, dest) is None  # an error naming a real file keeps its name


def test_a_directory_write_that_fails_leaves_no_folder(tmp_path):
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / "a" / "b" / "export", directory=True) as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert e.value.filename == str(tmp_path / "a" / "b" / "export")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_disk_full_on_a_real_tmpfs(pair, tmp_path, capsys):
    """The same on a real full file system (a 64 KiB tmpfs), where one can be mounted."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        torch.manual_seed(0)
        big = {"w": torch.randn(256, 256)}  # 256 KiB
        save_file(big, str(tmp_path / "c.safetensors"))
        save_file({"w": big["w"] + 1}, str(tmp_path / "d.safetensors"))
        out = mnt / "out" / "merged.safetensors"
        assert main(["interpolate", str(tmp_path / "c.safetensors"), str(tmp_path / "d.safetensors"),
                     "--alpha", "0.5", "--out", str(out)]) == EXIT_IOERR
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0]
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def _text_run(tiny_bert_dir: Path, tmp_path: Path, epochs: int) -> Path:
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"),
            ("the phone software", "technology")]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows * 8) + "\n")
    manifest = {"kind": "manifest", "path": str(tmp_path / "train.csv")}
    cfg = {"backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
           "data": {"name": "news", "templates": "news", "train": manifest, "test": manifest},
           "finetune": {"lr": 1e-3, "batch_size": 4, "epochs": epochs, "warmup_steps": 1, "save_every_steps": 5},
           "output_dir": str(tmp_path / "run"), "device": "cpu"}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow  # two runs in subprocesses, one stopped mid-training
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, EXIT_INTERRUPTED), (signal.SIGTERM, EXIT_TERMINATED)])
def test_a_stopped_run_prints_one_line_and_the_rerun_completes(tiny_bert_dir, tmp_path, sig, code):
    cfg = _text_run(tiny_bert_dir, tmp_path, epochs=40)  # 400 steps: stopped after a second of them
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WISEFT_CACHE": str(tmp_path / "cache"),
           "WISEFT_SCRATCH": str(tmp_path / "scratch")}
    proc = subprocess.Popen([sys.executable, "-m", "wiseft", "run", str(cfg), "--no-progress"], env=env,
                            stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
    lines = []
    for line in proc.stderr:  # stop it once it trains
        lines.append(line)
        if "global batch" in line:
            time.sleep(1.0)
            proc.send_signal(sig)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == code, "".join(lines) + rest
    assert "Traceback" not in rest
    assert rest.strip().splitlines()[-1].startswith(("wiseft: interrupted", "wiseft: terminated"))
    assert _leftovers(tmp_path / "run") == []
    assert not list((tmp_path / "scratch").glob("*")) if (tmp_path / "scratch").exists() else True
    again = subprocess.run([sys.executable, "-m", "wiseft", "run", str(cfg), "--no-progress", "--no-report"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "resumed from" in again.stderr  # the rerun continued where the stopped one left off
