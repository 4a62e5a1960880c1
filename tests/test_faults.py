"""Faults: a process killed in the middle of each kind of write, two runs on one
directory, damaged caches, and pickled torch files that would run code."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, TINY_OPEN_CLIP, run_config

from wiseft.cli import main
from wiseft.config import load_config
from wiseft.io import CheckpointError, check_torch_file, hold, load_state, read_records
from wiseft.io.atomic import KILL_ENV, LOCK_NAME, LockError
from wiseft.pipeline import checkpoint_paths
from wiseft.train import ResumeError, load_training_state
from wiseft.train.checkpoints import FORMAT

pytestmark = pytest.mark.slow  # subprocesses killed mid-write, concurrent runs

# A stand-in backbone for the head cache: deterministic text embeddings, no model.
STUB = """
import torch
from types import SimpleNamespace
def _embed(prompts):
    return torch.tensor([[float(sum(map(ord, p)) % 97), float(len(p)), 1.0, 2.0] for p in prompts])
stub = SimpleNamespace(fingerprint=lambda: "stub", encode_text=_embed, logit_scale=10.0)
"""

# kind -> (destination name, code writing version ``v`` into ``folder``, reader of the version(s) there)
WRITERS = {
    "text (config.yaml, summary.md)": (
        "config.yaml", "from wiseft.io.atomic import atomic_write\natomic_write(folder / 'config.yaml', f'v: {v}')",
        lambda d: yaml.safe_load((d / "config.yaml").read_text())["v"]),
    "report table": (
        "table.md", "from wiseft.io import atomic_write  # the report writes every file through it\n"
        "atomic_write(folder / 'table.md', str(v))",
        lambda d: int((d / "table.md").read_text())),
    "records (append)": (
        "results.jsonl",
        "from wiseft.core import Record\nfrom wiseft.io import append_records\n"
        "append_records(folder / 'results.jsonl', [Record('m', 0.5, 'd', 'reference', 'top1', float(v))])",
        lambda d: [r.value for r in read_records(d / "results.jsonl")]),
    "weights (save_state)": (
        "w.safetensors",
        "import torch\nfrom wiseft.io.checkpoint import save_state\n"
        "save_state(folder / 'w.safetensors', {'x': torch.full((4,), float(v))})",
        lambda d: load_state(d / "w.safetensors")["x"][0].item()),
    "training checkpoint": (
        "step_00000007.pt",
        "from wiseft.train.checkpoints import FORMAT, CheckpointDir\n"
        "CheckpointDir(folder).save({'format': FORMAT, 'v': v}, 7, None)",
        lambda d: load_training_state(d / "step_00000007.pt")["v"]),
    "merged file (out of core)": (
        "m.safetensors",
        "import torch\nfrom wiseft.io.checkpoint import save_state\nfrom wiseft.merge import write_interpolations\nfrom wiseft.config import MergeConfig\n"
        "save_state(folder / 'in' / 'a.safetensors', {'x': torch.zeros(4)})\n"
        "save_state(folder / 'in' / 'b.safetensors', {'x': torch.full((4,), 2.0 * v)})\n"
        "write_interpolations(folder / 'in' / 'a.safetensors', folder / 'in' / 'b.safetensors', {0.5: folder / 'm.safetensors'})",
        lambda d: load_state(d / "m.safetensors")["x"][0].item()),
    "merged directory (shards)": (
        "mdir",
        "import torch\nfrom wiseft.io.checkpoint import save_state\nfrom wiseft.merge import write_interpolations\nfrom wiseft.config import MergeConfig\n"
        "save_state(folder / 'in' / 'a.safetensors', {'x': torch.zeros(4), 'y': torch.zeros(4)})\n"
        "save_state(folder / 'in' / 'b.safetensors', {'x': torch.full((4,), 2.0 * v), 'y': torch.ones(4)})\n"
        "write_interpolations(folder / 'in' / 'a.safetensors', folder / 'in' / 'b.safetensors', {0.5: folder / 'mdir'},"
        " MergeConfig(max_shard_bytes=16))",
        lambda d: load_state(d / "mdir")["x"][0].item()),
}


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != KILL_ENV}
    return {**env, **extra}


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=_env(**env), capture_output=True, text=True)


def _write_code(code: str, folder: Path, v: int) -> str:
    return f"from pathlib import Path\nfolder = Path({str(folder)!r})\nv = {v}\n{code}\n"


def _temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_kill_during_a_write_keeps_the_old_file_and_the_next_write_removes_the_temporary(kind, tmp_path):
    name, code, read = WRITERS[kind]
    exec(_write_code(code, tmp_path, 1), {})
    before = read(tmp_path)

    killed = _python(_write_code(code, tmp_path, 2), **{KILL_ENV: name})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert read(tmp_path) == before  # the old file is whole
    stale = _temporaries(tmp_path)
    assert stale and all(f".{os.getpid()}@" not in p.name for p in stale)  # the killed process's, by PID

    exec(_write_code(code, tmp_path, 3), {})
    assert read(tmp_path) == ([1.0, 3.0] if kind.startswith("records") else 3)
    assert _temporaries(tmp_path) == []  # the dead process's temporary is gone


def test_kill_during_a_head_cache_write_then_the_next_run_writes_it(tmp_path):
    code = STUB + "from wiseft.heads import zeroshot_head\nzeroshot_head(stub, ['cat', 'dog'], ['a {}.'])\n"
    cache = tmp_path / "cache"
    killed = _python(code, WISEFT_CACHE=str(cache), **{KILL_ENV: "*.safetensors"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.suffix for p in (cache / "heads").iterdir()] == [".tmp"]
    assert _python(code, WISEFT_CACHE=str(cache)).returncode == 0
    (entry,) = (cache / "heads").iterdir()
    assert entry.suffix == ".safetensors"


def test_a_truncated_head_cache_is_rebuilt_not_trusted(tmp_path, monkeypatch, caplog):
    from wiseft.heads import head_cache_dir, zeroshot_head

    scope: dict = {}
    exec(STUB, scope)
    stub = scope["stub"]
    fresh = zeroshot_head(stub, ["cat", "dog"], ["a {}."]).weight.detach().clone()
    (entry,) = head_cache_dir().iterdir()
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="wiseft"):
        again = zeroshot_head(stub, ["cat", "dog"], ["a {}."]).weight.detach()
    assert "damaged" in caplog.text
    torch.testing.assert_close(again, fresh)
    torch.testing.assert_close(zeroshot_head(stub, ["cat", "dog"], ["a {}."]).weight.detach(), fresh)  # rewritten

    # a whole file of the wrong shape (another class list under a colliding key) is not trusted either
    from safetensors.torch import save_file

    save_file({"weight": torch.ones(5, 4)}, str(entry))
    torch.testing.assert_close(zeroshot_head(stub, ["cat", "dog"], ["a {}."]).weight.detach(), fresh)


def test_a_torn_last_line_of_the_training_log_is_dropped(tmp_path):
    from wiseft.train import MetricLog

    path = tmp_path / "train.jsonl"
    path.write_text('{"stage": "e2e", "step": 0, "loss": 1.0}\n{"stage": "e2e", "st')
    log = MetricLog(path)
    log.truncate("e2e", 5)  # reads the log: the torn line is no row
    log.write(stage="e2e", step=1, loss=0.5)
    log.close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1]


# ---------------------------------------------------------------------------------------
# locks

HOLDER = ("import sys, time\nfrom wiseft.io.atomic import hold\n"
          "hold(sys.argv[1], sys.argv[2]).acquire()\nprint('held', flush=True)\ntime.sleep(120)\n")


def _hold_in_subprocess(folder: Path, what: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder), what], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def test_a_folder_lock_names_its_holder_and_a_dead_holder_does_not_block(tmp_path):
    holder = _hold_in_subprocess(tmp_path, "run directory")
    try:
        with pytest.raises(LockError, match=f"run directory {tmp_path} is in use by process {holder.pid}"):
            hold(tmp_path, "run directory").acquire()
    finally:
        _kill(holder)
    assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(holder.pid)  # left behind by the dead holder...
    with hold(tmp_path, "run directory"):  # ...and blocks nothing
        assert (tmp_path / LOCK_NAME).read_text().split()[0] == str(os.getpid())


def _config(open_clip_spec, image_data, tmp_path, **finetune) -> Path:
    cfg = run_config(open_clip_spec, image_data, tmp_path / "run")
    cfg["data"].pop("shifts")
    cfg["finetune"].update({"epochs": 1, **finetune})
    cfg["alphas"] = [0.0, 0.5, 1.0]
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_a_run_on_a_held_run_directory_fails_naming_the_pid_and_writes_nothing(open_clip_spec, image_data,
                                                                               tmp_path, capsys):
    cfg_path = _config(open_clip_spec, image_data, tmp_path)
    run_dir = tmp_path / "run"
    holder = _hold_in_subprocess(run_dir, "run directory")
    try:
        assert main(["run", str(cfg_path), "--no-progress", "--no-report"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("wiseft: error:") and f"in use by process {holder.pid}" in err and "\n" not in err
        assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_NAME]
        # the training-checkpoint folder is held the same way (``wiseft train`` goes straight there)
        _, train_dir = checkpoint_paths(load_config(cfg_path), "finetuned")
        trainer = _hold_in_subprocess(train_dir, "training-checkpoint folder")
        try:
            assert main(["train", str(cfg_path), "--no-progress"]) == 2
            err = capsys.readouterr().err
            assert f"training-checkpoint folder {train_dir} is in use by process {trainer.pid}" in err
        finally:
            _kill(trainer)
    finally:
        _kill(holder)


def _entry(tmp_path: Path) -> str:
    """``wiseft``'s main in a script that first registers the tiny open_clip architecture."""
    (tmp_path / "oc").mkdir(exist_ok=True)
    (tmp_path / "oc" / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    script = tmp_path / "entry.py"
    script.write_text(f"import sys, open_clip\nopen_clip.add_model_config({str(tmp_path / 'oc')!r})\n"
                      "from wiseft.cli.app import main\nsys.exit(main())\n")
    return str(script)


def test_two_runs_on_one_directory_the_second_fails_and_records_are_not_doubled(open_clip_spec, image_data,
                                                                                 tmp_path, capsys):
    cfg_path = _config(open_clip_spec, image_data, tmp_path, epochs=3)
    run_dir = tmp_path / "run"
    first = subprocess.Popen([sys.executable, _entry(tmp_path), "run", str(cfg_path), "--no-progress",
                              "--no-report"], env=_env(OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    lock = run_dir / LOCK_NAME
    deadline = time.monotonic() + 300
    while not (lock.exists() and lock.read_text().split()[:1] == [str(first.pid)]):  # the first holds it now
        assert first.poll() is None and time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.02)
    assert main(["run", str(cfg_path), "--no-progress", "--no-report"]) == 2
    assert f"in use by process {first.pid}" in capsys.readouterr().err
    _, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-3000:]
    records = read_records(run_dir)
    keys = [(r.model, r.alpha, r.dataset, r.metric) for r in records]
    assert len(keys) == len(set(keys))


def test_kill_while_writing_a_training_checkpoint_then_the_next_run_cleans_up(open_clip_spec, image_data,
                                                                               tmp_path):
    cfg_path = _config(open_clip_spec, image_data, tmp_path)
    killed = subprocess.run([sys.executable, _entry(tmp_path), "run", str(cfg_path), "--no-progress", "--no-report"],
                            env=_env(**{KILL_ENV: "*_step_*.pt"}), capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert [p for p in _temporaries(run_dir) if ".pt." in p.name]
    assert main(["run", str(cfg_path), "--no-progress", "--no-report"]) == 0
    assert _temporaries(run_dir) == []
    assert read_records(run_dir)


# ---------------------------------------------------------------------------------------
# pickles that would run code


def _pickled(path: Path, payload: dict) -> Path:
    torch.save({**payload, "args": argparse.Namespace(lr=0.1)}, path)  # Namespace: not a plain container
    return path


def test_a_pickled_pretrained_file_is_a_named_error_before_anything_is_written(open_clip_spec, image_data,
                                                                              tmp_path, capsys):
    from safetensors.torch import load_file

    state = load_file(open_clip_spec["pretrained"])
    pt = _pickled(tmp_path / "clip.pt", {"state_dict": state})
    cfg_path = _config({**open_clip_spec, "pretrained": str(pt)}, image_data, tmp_path)
    assert main(["run", str(cfg_path), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wiseft: error:") and "\n" not in err
    assert f"{pt} is a pickle that would run code" in err and "argparse.Namespace" in err and "safetensors" in err
    assert not (tmp_path / "run").exists()  # no config.yaml, no run directory

    plain = tmp_path / "plain.pt"  # a torch file of plain tensors passes the check (and is read memory-mapped)
    torch.save({"state_dict": state}, plain)
    check_torch_file(plain)


def test_a_pickled_resume_checkpoint_is_a_named_error_and_no_config_is_written(open_clip_spec, image_data,
                                                                              tmp_path, capsys):
    cfg_path = _config(open_clip_spec, image_data, tmp_path)
    _, train_dir = checkpoint_paths(load_config(cfg_path), "finetuned")
    (train_dir / "e2e").mkdir(parents=True)
    bad = _pickled(train_dir / "e2e" / "step_00000002.pt", {"format": FORMAT, "step": 2})
    assert main(["run", str(cfg_path), "--no-progress", "--no-report"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wiseft: error:") and "\n" not in err
    assert f"{bad} is a pickle that would run code" in err
    assert not (tmp_path / "run" / "config.yaml").exists()

    with pytest.raises(ResumeError, match="pickle that would run code"):
        load_training_state(bad)
    with pytest.raises(CheckpointError, match="pickle that would run code .*convert it to safetensors"):
        load_state(bad)


def test_a_truncated_checkpoint_is_a_named_error(tmp_path):
    from wiseft.io import save_state

    good = save_state(tmp_path / "w.safetensors", {"x": torch.ones(64)})
    good.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        load_state(good)
    pt = tmp_path / "w.pt"
    torch.save({"x": torch.ones(64)}, pt)
    pt.write_bytes(pt.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated, damaged"):
        load_state(pt)
    with pytest.raises(ResumeError, match="truncated, damaged"):
        load_training_state(pt)


def test_kill_during_a_report_plot_write_keeps_the_old_plot(tmp_path):
    code = ("from pathlib import Path\nfrom matplotlib.figure import Figure\nfrom wiseft.report.plots import save_figure\n"
            "fig = Figure(figsize=(2, 2)); fig.add_subplot().plot([0, 1], [0, {v}])\n"
            f"save_figure(fig, Path({str(tmp_path)!r}), 'scatter')\n")
    assert _python(code.format(v=1)).returncode == 0
    before = (tmp_path / "scatter.png").read_bytes()
    killed = _python(code.format(v=2), **{KILL_ENV: "*.png"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (tmp_path / "scatter.png").read_bytes() == before and _temporaries(tmp_path)
    assert _python(code.format(v=3)).returncode == 0
    assert _temporaries(tmp_path) == [] and (tmp_path / "scatter.png").read_bytes() != before
