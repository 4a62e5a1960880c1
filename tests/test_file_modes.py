"""Outputs honour the umask (issue 24.7): safetensors creates its files 0600 whatever the
umask; every file wiseft writes gets the mode a new file gets (0644 under umask 022,
0664 under 002), whichever writer made it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from wiseft.heads import zeroshot_head
from wiseft.io import atomic_path, atomic_write, save_state, write_with
from wiseft.merge import interpolate_files


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


class _Stub:
    """A backbone stand-in for the head cache: fixed text embeddings, no model."""
    logit_scale = 10.0

    @staticmethod
    def fingerprint():
        return "stub-modes"

    @staticmethod
    def encode_text(prompts):
        return torch.tensor([[float(len(p)), 1.0, 2.0] for p in prompts])


def test_every_output_follows_the_umask(tmp_path, umask, monkeypatch):
    want = 0o666 & ~umask
    monkeypatch.setenv("WISEFT_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_file({"w": torch.zeros(4)}, str(a))
    save_file({"w": torch.ones(4)}, str(b))
    outputs = [
        save_state(tmp_path / "state.safetensors", {"w": torch.zeros(2)}),
        interpolate_files(a, b, tmp_path / "merged.safetensors", 0.5),
        interpolate_files(a, b, tmp_path / "sharded", 0.5),  # a folder of shards
        write_with(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(1)}, str(tmp))),
        atomic_write(tmp_path / "config.yaml", "x: 1\n"),
    ]
    zeroshot_head(_Stub(), ["cat", "dog"], ["a {}."])
    outputs += list((tmp_path / "cache" / "heads").glob("*.safetensors"))
    with atomic_path(tmp_path / "export", directory=True) as tmp:
        save_file({"w": torch.zeros(1)}, str(tmp / "model.safetensors"))
        (tmp / "sub").mkdir()
        save_file({"w": torch.zeros(1)}, str(tmp / "sub" / "model.safetensors"))
    outputs.append(tmp_path / "export")
    files = [f for p in outputs for f in ([p] if p.is_file() else [q for q in p.rglob("*") if q.is_file()])]
    assert len(files) >= 8
    wrong = {str(f.relative_to(tmp_path)): oct(_mode(f)) for f in files if _mode(f) != want}
    assert not wrong, (oct(want), wrong)
