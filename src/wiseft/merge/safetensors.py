"""Safetensors checkpoints as the out-of-core engine reads and writes them: the headers of
an input (``open_checkpoint``: one file, a shard index, or a directory holding either),
``TensorReader`` for byte ranges of its tensors, and ``CheckpointWriter`` for an output,
one file or a directory of shards with a Hugging Face index, written to a temporary name
and renamed at the end. No weight is read here that the caller did not ask for.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from wiseft.io import INDEX_SUFFIX, atomic_path, safetensors_files, writing
from wiseft.merge.plan import MergeError, Step, TensorSpec

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}
CODES = {v: k for k, v in DTYPES.items()}
DEFAULT_SHARD_BYTES = 5 << 30


@dataclass(frozen=True)
class Location:
    """Where a tensor's bytes are: the file, and the offset in it."""

    file: Path
    offset: int  # absolute byte offset of the tensor in ``file``


@dataclass
class SafetensorsCheckpoint:
    """The headers of a safetensors checkpoint: one file or a Hugging Face sharded set."""

    path: Path
    specs: dict[str, TensorSpec]
    locations: dict[str, Location]
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.specs.values())


def is_safetensors_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors checkpoint: one file, a shard index, or a
    directory holding either (``wiseft.io.safetensors_files``)."""
    try:
        safetensors_files(path, MergeError)
        return True
    except MergeError:
        return False


def _read_header(file: Path) -> tuple[dict, int]:
    try:
        with open(file, "rb") as f:
            raw = f.read(8)
            (n,) = struct.unpack("<Q", raw) if len(raw) == 8 else (None,)
            if n is None or n > 100_000_000:
                raise MergeError(f"{file} is not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        raise MergeError(f"cannot read the safetensors header of {file}: {e}") from None
    return header, 8 + n


def open_checkpoint(path: str | Path) -> SafetensorsCheckpoint:
    """Read only the headers of a safetensors checkpoint (file, index or directory)."""
    files, name = safetensors_files(path, MergeError)
    specs, locations, metadata = {}, {}, {}
    for file in files:
        header, start = _read_header(file)
        size = file.stat().st_size
        if not metadata:
            metadata = dict(header.get("__metadata__") or {})
        for k, v in header.items():
            if k == "__metadata__":
                continue
            if k in specs:
                raise MergeError(f"tensor {k!r} appears twice in {name} (second time in {file.name})")
            if v.get("dtype") not in DTYPES:
                raise MergeError(f"tensor {k!r} in {file} has unsupported dtype {v.get('dtype')!r}")
            spec = TensorSpec(tuple(int(s) for s in v["shape"]), DTYPES[v["dtype"]])
            begin, end = v["data_offsets"]
            if end - begin != spec.nbytes or start + end > size:
                raise MergeError(f"tensor {k!r} in {file} has offsets {begin}..{end} that do not match "
                                 f"its shape {spec.shape} {v['dtype']} or the file size")
            specs[k], locations[k] = spec, Location(file, start + begin)
    return SafetensorsCheckpoint(Path(path), specs, locations, metadata)


def shard_steps(steps: Sequence[Step], max_shard_bytes: int) -> list[list[Step]]:
    """``steps`` (in output order) cut into shards of at most ``max_shard_bytes`` each (a
    tensor larger than that is a shard of its own)."""
    shards: list[list[Step]] = [[]]
    size = 0
    for s in steps:
        if shards[-1] and size + s.spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.spec.nbytes
    return shards


def _header_bytes(steps: Sequence[Step], metadata: Mapping[str, str]) -> bytes:
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for s in steps:
        header[s.name] = {"dtype": CODES[s.spec.dtype], "shape": list(s.spec.shape),
                          "data_offsets": [offset, offset + s.spec.nbytes]}
        offset += s.spec.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw


class CheckpointWriter:
    """One merged checkpoint being written: a single file, or a directory of shards
    with a Hugging Face index. Files go to a temporary place and are renamed at the end."""

    def __init__(self, dest: Path, shards: list[list[Step]], metadata: Mapping[str, str], single_file: bool):
        self.dest, self.shards, self.metadata = dest, shards, metadata
        if single_file and len(shards) > 1:
            raise MergeError(f"{dest} would need {len(shards)} shards; give a directory to write shards")
        # the I/O layer's temporary (a file, or a folder of shards): fsynced and renamed by commit()
        self._atomic = atomic_path(dest, directory=not single_file)
        self.tmp = self._atomic.__enter__()
        if single_file:
            self.files = [self.tmp]
        else:
            n = len(shards)
            names = ["model.safetensors"] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors"
                                                          for i in range(n)]
            self.files = [self.tmp / nm for nm in names]
        self.single_file = single_file
        self.handle = None
        self.shard = -1

    def start_shard(self, i: int) -> None:
        self.close_shard()
        self.shard = i
        with writing(self.dest):  # disk full here is an error naming the output, not its temporary
            self.handle = open(self.files[i], "wb")
            header = _header_bytes(self.shards[i], self.metadata)
            try:  # reserving the blocks up front makes writing several times faster on ext4
                os.posix_fallocate(self.handle.fileno(), 0, len(header) + sum(s.spec.nbytes for s in self.shards[i]))
            except (AttributeError, OSError):
                pass
            self.handle.write(header)

    def write(self, data: torch.Tensor) -> None:
        with writing(self.dest):
            self.handle.write(memoryview(data.numpy()))

    def close_shard(self) -> None:
        if self.handle is not None:
            handle, self.handle = self.handle, None
            with writing(self.dest):
                handle.close()

    def commit(self) -> Path:
        self.close_shard()
        if not self.single_file and len(self.files) > 1:
            weight_map = {s.name: f.name for f, shard in zip(self.files, self.shards) for s in shard}
            total = sum(s.spec.nbytes for shard in self.shards for s in shard)
            (self.tmp / ("model" + INDEX_SUFFIX)).write_text(
                json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
        self._atomic.__exit__(None, None, None)  # fsync, rename over dest (an old directory in one step)
        return self.dest

    def abort(self) -> None:
        with contextlib.suppress(OSError):  # a full disk fails the close too: the temporary goes anyway
            self.close_shard()
        with contextlib.suppress(MergeError):
            self._atomic.__exit__(MergeError, MergeError("aborted"), None)  # removes the temporary


class TensorReader:
    """Reads byte ranges of tensors into caller buffers with plain ``readinto``."""

    def __init__(self):
        self.handles: dict[Path, object] = {}

    def read(self, loc: Location, start: int, buf: torch.Tensor) -> None:
        f = self.handles.get(loc.file)
        if f is None:
            f = self.handles[loc.file] = open(loc.file, "rb", buffering=0)
        f.seek(loc.offset + start)
        view, done = memoryview(buf.numpy()), 0
        while done < len(view):
            n = f.readinto(view[done:])
            if not n:
                raise MergeError(f"{loc.file} ended early")
            done += n

    def close(self) -> None:
        for f in self.handles.values():
            f.close()
