"""Checkpoints that describe themselves: safetensors weights with JSON metadata,
written atomically; export to the backbone family's own format; reading state
dicts written by other tools (open_clip training checkpoints, Hugging Face dirs).

``load_state`` is the one loader of weights (every merge and soup reads through it);
resumable training state, a different format, is ``train.checkpoints.load_training_state``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from wiseft.core import WiseftError
from wiseft.io.atomic import atomic_path

MODEL_FILE = "model.safetensors"
META_FILE = "wiseft.json"
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(WiseftError):
    """A checkpoint cannot be read; the message names the file and what is wrong."""


def save_state(path: str | Path, state: dict[str, torch.Tensor], meta: dict[str, Any] | None = None) -> Path:
    """Write a state dict as safetensors with ``meta`` as JSON in the header, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        save_file(shareless(state), str(tmp), metadata={"wiseft": json.dumps(meta or {})})
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The wiseft metadata of a safetensors file or model directory ({} if none)."""
    path = Path(path)
    if path.is_dir():
        return json.loads((path / META_FILE).read_text()) if (path / META_FILE).exists() else {}
    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("wiseft", "{}"))


StateSource = str | Path | Mapping[str, torch.Tensor]


def load_state(path: StateSource) -> dict[str, torch.Tensor]:
    """A state dict from a wiseft model dir, a Hugging Face dir (single or sharded), a
    .safetensors file, or a torch file (read with ``weights_only=True``); ``state_dict``
    and ``model`` wrappers and ``module.``/``_orig_mod.`` prefixes are removed, and NaN or
    Inf weights refused (NonFiniteError). A state dict already in memory comes back as it
    is, its tensors detached (not copied, not checked), so callers take either."""
    if isinstance(path, Mapping):
        return {k: v.detach() for k, v in path.items()}
    kind, files = resolve_checkpoint(path, CheckpointError)  # the one resolver: every format
    if kind == "safetensors":
        state = {k: v for f in files for k, v in _load_safetensors(f).items()}
    else:
        state = {k: v for f in files for k, v in _torch_state(f).items()}
    check_finite(state, f"checkpoint {path}")  # NaN/Inf weights (a diverged fine-tune) never enter
    return state


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise CheckpointError(f"cannot read {file} as safetensors (truncated or damaged): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of one torch file (``torch.load(weights_only=True)``)."""
    obj = read_torch(path, CheckpointError)
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict of tensors")
    return {_strip(k): v for k, v in obj.items()}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


INDEX_SUFFIX = ".safetensors.index.json"


SAFETENSORS_SINGLE_NAMES = ("model.safetensors", "open_clip_model.safetensors")


TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def safetensors_files(path: str | Path, error: type[Exception] = ValueError) -> tuple[list[Path], Path]:
    """(files, the path that names the checkpoint) of a safetensors checkpoint: one
    file, a shard index, or a directory holding either; ``error`` when there is none."""
    path = Path(path)
    if path.is_dir():
        for name in SAFETENSORS_SINGLE_NAMES:
            if (path / name).is_file():
                return [path / name], path
        index = sorted(path.glob("*" + INDEX_SUFFIX))
        singles = sorted(path.glob("*.safetensors"))
        if len(index) == 1:
            path = index[0]
        elif len(singles) == 1:
            return singles, path
        else:
            raise error(f"{path} holds no safetensors checkpoint (model.safetensors, one *.safetensors "
                        f"file, or one *{INDEX_SUFFIX})")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise error(f"cannot read the shard index {path}: {e!r}") from None
        return [path.parent / f for f in dict.fromkeys(weight_map.values())], path
    if path.suffix == ".safetensors" and path.is_file():
        return [path], path
    raise error(f"{path} is not a safetensors file, shard index or directory with one")


def resolve_checkpoint(path: str | Path, error: type[Exception] = ValueError) -> tuple[str, list[Path]]:
    """``("safetensors", files)`` or ``("torch", files)`` for a checkpoint path: a
    safetensors file, shard index or directory with either (wiseft or Hugging Face),
    a directory with ``pytorch_model.bin`` or its index, or a torch file."""
    path = Path(path)
    if not path.exists():
        raise error(f"checkpoint {path} does not exist")
    try:
        return "safetensors", safetensors_files(path, error)[0]
    except error:
        pass
    if path.is_dir():
        if (path / "pytorch_model.bin").is_file():
            return "torch", [path / "pytorch_model.bin"]
        index = path / "pytorch_model.bin.index.json"
        if index.is_file():
            try:
                files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise error(f"cannot read the shard index {index}: {e!r}") from None
            return "torch", [path / f for f in files]
        raise error(f"{path} is a directory with no weights (model.safetensors, a *.safetensors file or "
                    "index, pytorch_model.bin or its index)")
    return "torch", [path]


def _first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[:limit] + "..."


PICKLE_HINT = ("convert it to safetensors once, in a Python you trust: sd = torch.load(PATH, weights_only=False); "
               "safetensors.torch.save_file(sd.get('state_dict', sd), 'model.safetensors')")


def read_torch(path: str | Path, error: type[Exception] = ValueError, *, hint: str | None = None,
               mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU. A pickle that would run code (or
    a damaged file) is ``error`` in one line naming the file; ``hint`` says how to
    convert it (default: to safetensors)."""
    import pickle

    import torch

    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(e))
        if not found:
            raise error(f"cannot read {path} as a torch checkpoint (truncated or damaged): "
                        f"{_first_line(e)}") from None
        raise error(f"{path} is a pickle that would run code when loaded (it calls {found[1]}); wiseft "
                    f"reads torch files with weights_only=True only; {hint or PICKLE_HINT}") from None
    except Exception as e:  # noqa: BLE001 - torch raises several types for a file that is not a checkpoint
        if mmap:  # an old (non-zip) torch file cannot be memory-mapped: read it plainly
            return read_torch(path, error, hint=hint)
        raise error(f"cannot read {path} as a torch checkpoint (truncated, damaged or not a torch file): "
                    f"{_first_line(e)}") from None


def check_torch_file(path: str | Path | None, error: type[Exception] = ValueError) -> None:
    """If ``path`` is a local torch file (.pt/.pth/.bin/.ckpt), check it loads with
    ``weights_only=True`` (memory-mapped where it can) before another library opens it."""
    if not path:
        return
    p = Path(str(path)).expanduser()
    if p.suffix.lower() in TORCH_SUFFIXES and p.is_file():
        read_torch(p, error, mmap=True)


class NonFiniteError(WiseftError):
    """Weights hold NaN or Inf; the message names where they are and the first such tensor."""


def _is_mask(t: torch.Tensor) -> bool:
    """An additive mask (or a chunk of one): 0 where attending, -inf where masked."""
    return bool(((t == 0) | (t == float("-inf"))).all())


def first_nonfinite(state: StateDict) -> str | None:
    """The first tensor of ``state`` holding a NaN or an Inf, or None. An additive mask
    (entries 0 and -inf only, e.g. a causal attention mask) is not a fault."""
    for name, t in state.items():
        if (t.is_floating_point() or t.is_complex()) and t.device.type != "meta" and not all_finite(t):
            t = t.detach()  # the sum was not finite: a NaN or Inf, or only an overflow
            if not bool(torch.isfinite(t).all()) and not _is_mask(t):
                return name
    return None


def check_finite(state: StateDict, what: str) -> None:
    """Raise NonFiniteError naming ``what`` and its first tensor holding NaN or Inf."""
    name = first_nonfinite(state)
    if name is not None:
        t = state[name].detach()
        n_nan, n_inf = int(t.isnan().sum()), int(t.isinf().sum())
        raise NonFiniteError(f"{what}: tensor {name!r} holds {n_nan} NaN and {n_inf} Inf values "
                             f"(of {t.numel()}); the weights are broken (a diverged fine-tune?)")


StateDict = Mapping[str, torch.Tensor]


def all_finite(t: torch.Tensor) -> bool:
    """Whether ``t`` holds no NaN or Inf, from one cheap reduction (a sum: NaN or Inf
    anywhere makes it non-finite; an overflow to Inf only sends the caller to the
    exact check)."""
    if t.numel() == 0:
        return True
    return bool(t.sum(dtype=torch.float32 if t.dtype.itemsize < 4 else None).isfinite().all())


def shareless(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous, and no two entries sharing storage."""
    seen: set[int] = set()
    out = {}
    for k, v in state.items():
        v = v.detach().contiguous()
        key = v.untyped_storage().data_ptr() if v.numel() else id(v)
        out[k] = v.clone() if key in seen else v
        seen.add(key)
    return out
