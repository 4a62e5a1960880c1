"""WebDataset tar shards as a map-style dataset: the layout ImageNet-scale users keep
their data in (``shard-{000000..000999}.tar``, each sample a group of members sharing a
key, ``n01440764_10026.jpg`` beside ``n01440764_10026.cls``).

Training and evaluation need random access (a seeded global-batch plan, a decode-once
input cache), so each shard is indexed once: the offset and size of every member, and
the text of its small label members. A sample's reference is its image member's place
in the shard (:class:`TarMember`); ``load`` reads those bytes and decodes them under the
image folders' policy, so unreadable images are skipped and counted as theirs are.

The index of a shard is cached under ``$WISEFT_CACHE/webdataset`` (default
``~/.cache/wiseft/webdataset``), keyed by the shard's absolute path, size and
modification time, and written atomically; nothing is written beside the data, so
read-only data folders work, and a cache folder that cannot be written only costs a
re-index next time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Sequence

from PIL import Image

from wiseft.data.base import DataError, LabeledDataset, read_classnames, register_dataset, resolve
from wiseft.data.folders import UnreadableImage, decode_image
from wiseft.io import atomic_write

log = logging.getLogger("wiseft")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEYS = ("cls", "txt", "json")
INDEX_VERSION = 1
INLINE_LIMIT = 1 << 16  # label members up to this size are kept in the index, so labels need no second pass
# WebDataset's split of a member name: the key is the path up to the first dot of the file name
_KEY = re.compile(r"^((?:.*/|)[^./][^./]*)\.([^/]*)$")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")


class TarMember(NamedTuple):
    """Where a sample's image lies: its shard, member name, byte offset and size."""

    shard: str
    name: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.shard}[{self.name}]"


def read_member(ref: TarMember) -> bytes:
    """The bytes of one member; an OSError when the shard is gone or ends before them."""
    fd = os.open(ref.shard, os.O_RDONLY)
    try:
        data = os.pread(fd, ref.size, ref.offset)
    finally:
        os.close(fd)
    if len(data) != ref.size:
        raise OSError(f"the shard ends after {len(data)} of its {ref.size} bytes")
    return data


def load_member(ref: TarMember) -> Image.Image:
    """A sample's image as 8-bit RGB, decoded as :func:`wiseft.data.folders.load_image` decodes
    files; a member that cannot be read or decoded raises :class:`UnreadableImage`."""
    try:
        data = read_member(ref)
    except OSError as e:
        raise UnreadableImage(f"cannot read image {ref}: {type(e).__name__}: {e}") from None
    return decode_image(data, ref)


# ---------------------------------------------------------------------------------------
# shard lists


def expand_braces(pattern: str) -> list[str]:
    """Brace expansion as WebDataset's ``braceexpand`` does it: ``{000000..000003}``
    (zero-padded ranges, an optional step ``{0..10..2}``), ``{a,b}``, several and nested
    groups; a group that is neither stays as written.

    Example:
        >>> expand_braces("train-{00..02}.tar")
        ['train-00.tar', 'train-01.tar', 'train-02.tar']
    """
    group = _first_group(pattern)
    if group is None:
        return [pattern]
    i, j = group
    head, body, tail = pattern[:i], pattern[i + 1:j], pattern[j + 1:]
    alternatives = _alternatives(body)
    if alternatives is None:
        return [head + "{" + body + "}" + rest for rest in expand_braces(tail)]
    return [head + a + rest for alt in alternatives for a in expand_braces(alt) for rest in expand_braces(tail)]


def _first_group(pattern: str) -> tuple[int, int] | None:
    """The positions of the first ``{`` and its matching ``}``, or None."""
    start = pattern.find("{")
    if start < 0:
        return None
    depth = 0
    for k in range(start, len(pattern)):
        depth += {"{": 1, "}": -1}.get(pattern[k], 0)
        if depth == 0:
            return start, k
    return None


def _alternatives(body: str) -> list[str] | None:
    """A group's alternatives: its top-level comma-separated parts, or a numeric range."""
    parts, depth, last = [], 0, 0
    for k, c in enumerate(body):
        depth += {"{": 1, "}": -1}.get(c, 0)
        if c == "," and depth == 0:
            parts.append(body[last:k])
            last = k + 1
    if parts:
        return parts + [body[last:]]
    m = _RANGE.match(body)
    if m is None:
        return None
    left, right, step = m[1], m[2], abs(int(m[3] or 1)) or 1
    padded = any(s.lstrip("-").startswith("0") and s.lstrip("-") != "0" for s in (left, right))
    width = max(len(left), len(right)) if padded else 0
    a, b = int(left), int(right)
    values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
    return [f"{v:0{width}d}" for v in values]


def shard_paths(urls: str | Path | Sequence[str], base_dir: str | Path | None = None) -> list[Path]:
    """The shards ``urls`` names, in order: a folder (its ``*.tar``, sorted), a brace
    pattern (``shards/train-{000000..000003}.tar``; ``::`` joins several, as in
    open_clip's ``--train-data``), a glob, or a list of these; relative to ``base_dir``.
    A DataError names what matched nothing and the first shard that does not exist."""
    items = [urls] if isinstance(urls, (str, Path)) else list(urls)
    if not items:
        raise DataError("webdataset: urls is empty; name the shards (a folder, a pattern or a list)")
    paths: list[Path] = []
    for item in items:
        for part in (str(item).split("::") if isinstance(item, str) else [item]):
            paths += _matches(part, base_dir)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"webdataset: {len(missing)} of the {len(paths)} shards urls names are not files "
                        f"(urls: {urls!r}); first: {missing[0]}")
    return paths


def _matches(part: str | Path, base_dir: str | Path | None) -> list[Path]:
    """The shards one pattern names (a folder: its ``*.tar``); none is a DataError."""
    folder = resolve(part, base_dir)
    if folder.is_dir():
        found = sorted(folder.glob("*.tar"))
        if not found:
            raise DataError(f"webdataset: no shard matches {str(part)!r}: folder {folder} holds no .tar files")
        return found
    out: list[Path] = []
    for name in expand_braces(str(part)):
        path = resolve(name, base_dir)
        if any(c in name for c in "*?["):
            globbed = sorted(path.parent.glob(path.name))
            if not globbed:
                raise DataError(f"webdataset: no shard matches {name!r} (in {path.parent})")
            out += globbed
        else:
            out.append(path)
    return out


# ---------------------------------------------------------------------------------------
# the shard index


@dataclass(frozen=True)
class ShardIndex:
    """One shard's regular members (name -> (offset, size), in tar order) and the text of
    its small label members (``.cls``, ``.txt``, ``.json``)."""

    shard: str
    members: dict[str, tuple[int, int]]
    texts: dict[str, str]

    def text(self, name: str) -> str:
        """A member's content as text (from the index when it is small)."""
        if name in self.texts:
            return self.texts[name]
        ref = TarMember(self.shard, name, *self.members[name])
        try:
            return read_member(ref).decode("utf-8", errors="replace")
        except OSError as e:
            raise DataError(f"webdataset shard {self.shard}: cannot read member {name!r} ({e})") from None


def index_cache_dir() -> Path:
    """Where shard indexes are cached: ``$WISEFT_CACHE`` or ``~/.cache/wiseft``, then ``webdataset``."""
    return Path(os.environ.get("WISEFT_CACHE", Path.home() / ".cache" / "wiseft")) / "webdataset"


def index_shard(path: str | Path) -> ShardIndex:
    """The index of one shard, read from the cache when the shard's size and
    modification time are those it was made from, else scanned and cached."""
    path = Path(path).absolute()
    st = path.stat()
    stamp = {"version": INDEX_VERSION, "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    cache = index_cache_dir() / f"{path.stem}-{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.json"
    index = _read_cached(cache, stamp)
    if index is None:
        index = {**stamp, **_scan(path)}
        index["sha256"] = _index_checksum(index)
        try:
            atomic_write(cache, json.dumps(index))
        except OSError as e:  # a cache folder that cannot be written: the index lives in memory only
            log.warning("cannot cache the index of %s in %s (%s); it is rebuilt next time", path, cache.parent, e)
    return ShardIndex(str(path), {n: (o, s) for n, o, s in index["members"]}, index["texts"])


def _read_cached(cache: Path, stamp: dict[str, Any]) -> dict[str, Any] | None:
    """A cached index whose stamp matches, or None (missing, stale or damaged)."""
    try:
        index = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or any(index.get(k) != v for k, v in stamp.items()):
        return None
    if not isinstance(index.get("members"), list) or not isinstance(index.get("texts"), dict):
        return None
    if index.get("sha256") != _index_checksum(index):  # edited, damaged, or written before the checksum
        log.warning("the cached index %s does not match its checksum; rebuilding it", cache)
        return None
    return index


def _index_checksum(index: dict[str, Any]) -> str:
    """SHA-256 of a shard index's content (members and label texts, canonical JSON)."""
    body = json.dumps([index["members"], index["texts"]], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(body.encode()).hexdigest()


def _scan(path: Path) -> dict[str, Any]:
    """Read a shard's member headers (and its small label members) once."""
    members, texts, seen = [], {}, set()
    try:
        with tarfile.open(path, "r:") as tar:
            for m in tar:
                if not m.isreg() or m.issparse():
                    continue
                if m.name in seen:
                    raise DataError(f"webdataset shard {path} holds member {m.name!r} twice; keep one")
                seen.add(m.name)
                members.append([m.name, m.offset_data, m.size])
                parts = split_name(m.name)
                if parts and parts[1] in LABEL_KEYS and m.size <= INLINE_LIMIT:
                    texts[m.name] = tar.extractfile(m).read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"webdataset shard {path} is not a readable uncompressed tar file "
                        f"({type(e).__name__}: {e}); shards must be plain .tar files (random access)") from None
    return {"members": members, "texts": texts}


def split_name(name: str) -> tuple[str, str] | None:
    """(key, extension) of a member name as WebDataset splits it (the key is the path up
    to the first dot of the file name; the extension is lower-cased), or None for a name
    without one (``README``, ``.hidden``)."""
    m = _KEY.match(name)
    return (m[1], m[2].lower()) if m else None


def group_members(index: ShardIndex) -> dict[str, dict[str, str]]:
    """key -> {extension: member name}, keys in tar order; a member given twice is a DataError."""
    groups: dict[str, dict[str, str]] = {}
    for name in index.members:
        parts = split_name(name)
        if parts is None:
            continue
        key, ext = parts
        group = groups.setdefault(key, {})
        if ext in group:
            raise DataError(f"webdataset shard {index.shard}: key {key!r} has two {ext!r} members "
                            f"({group[ext]!r} and {name!r})")
        group[ext] = name
    return groups


# ---------------------------------------------------------------------------------------
# labels


@dataclass(frozen=True)
class LabelReader:
    """Reads a sample's label from its ``label_key`` member: ``cls`` an integer class
    index as text, ``txt`` a class name, ``json`` the ``field`` of an object (an index or
    a name). An empty member, or a JSON object without the field, is no label (None)."""

    label_key: Literal["cls", "txt", "json"]
    field: str = "label"

    def read(self, text: str) -> int | str | None:
        """The label in ``text`` (an int index or a str name), or None; a DataError says what is wrong
        (the caller names the sample)."""
        text = text.strip()
        if not text:
            return None
        if self.label_key == "txt":
            return text
        if self.label_key == "cls":
            if not re.fullmatch(r"-?\d+", text):
                raise DataError(f"the .cls member holds {text[:40]!r}, not an integer class index")
            return int(text)
        try:
            obj = json.loads(text)
        except ValueError as e:
            raise DataError(f"the .json member is not JSON ({e})") from None
        if not isinstance(obj, dict):
            raise DataError(f"the .json member is not an object, got {text[:40]!r}")
        value = obj.get(self.field)
        if value is None or isinstance(value, (int, str)) and not isinstance(value, bool):
            return value
        raise DataError(f".json field {self.field!r} is {value!r}, not a class index or name")


def to_label(raw: int | str, names: Sequence[str], index: dict[str, int]) -> int:
    """A raw label as an index into ``names``; out of range or unknown is a DataError (the
    caller names the sample)."""
    if isinstance(raw, int):
        if not 0 <= raw < len(names):
            raise DataError(f"label {raw} is out of range for the {len(names)} class names "
                            f"(0..{len(names) - 1})")
        return raw
    if raw not in index:
        raise DataError(f"label {raw!r} is not one of the {len(names)} class names")
    return index[raw]


# ---------------------------------------------------------------------------------------
# the dataset kind


@dataclass
class _Found:
    """Samples found so far: (image reference, raw label), and the incomplete keys."""

    samples: list[tuple[TarMember, int | str]]
    incomplete: int = 0
    first_incomplete: str = ""

    def skip(self, where: str) -> None:
        self.incomplete += 1
        self.first_incomplete = self.first_incomplete or where


def _where(shard: str, key: str) -> str:
    """How an error names a sample: ``webdataset shard PATH, key 'KEY'``."""
    return f"webdataset shard {shard}, key {key!r}"


def _sample_where(ref: TarMember) -> str:
    return _where(ref.shard, split_name(ref.name)[0])


def _collect(shards: Sequence[Path], image_keys: Sequence[str], reader: LabelReader) -> _Found:
    """Every key of every shard with an image and a label, in shard and tar order."""
    found = _Found([])
    for shard in shards:
        index = index_shard(shard)
        for key, exts in group_members(index).items():  # a sample's name is formatted only for a message
            image = next((exts[e] for e in image_keys if e in exts), None)
            label = exts.get(reader.label_key)
            try:
                raw = reader.read(index.text(label)) if label is not None else None
            except DataError as e:
                raise DataError(f"{_where(index.shard, key)}: {e}") from None
            if image is None or raw is None:
                why = "no image" if image is None else "no label"
                found.skip(f"{_where(index.shard, key)} ({why}; members: {', '.join(sorted(exts))})")
                continue
            found.samples.append((TarMember(index.shard, image, *index.members[image]), raw))
    return found


def _check_incomplete(found: _Found, max_incomplete: float, image_keys: Sequence[str], label_key: str,
                      shards: Sequence[Path]) -> None:
    """Log keys without an image or a label; more than ``max_incomplete`` of them is a DataError."""
    total = len(found.samples) + found.incomplete
    what = f"an image ({', '.join(image_keys)}) and a label ({label_key})"
    if found.incomplete > max_incomplete * total:
        raise DataError(f"webdataset: {found.incomplete} of {total} samples ({found.incomplete / total:.1%}) lack "
                        f"{what}, more than max_incomplete = {max_incomplete:g} allows; first: "
                        f"{found.first_incomplete}")
    if not found.samples:
        raise DataError(f"webdataset: the {len(shards)} shards (first: {shards[0]}) hold no sample with {what}")
    if found.incomplete:
        log.warning("webdataset: %d of %d samples lack %s, skipped (first: %s)", found.incomplete, total, what,
                    found.first_incomplete)


def _labelled(found: _Found, classnames: list[str] | None,
              label_key: str) -> tuple[list[tuple[TarMember, int]], list[str]]:
    """(samples with integer labels, class names): without ``classnames`` the sorted label names."""
    if classnames is None:
        ints = [ref for ref, raw in found.samples if isinstance(raw, int)]
        if ints:
            raise DataError(f"{_sample_where(ints[0])}: labels ({label_key}) are class "
                            "indices; give classnames (a list, or a file with one name per line)")
        classnames = sorted({raw for _, raw in found.samples})
    index = {c: i for i, c in enumerate(classnames)}
    samples = []
    for ref, raw in found.samples:
        try:
            samples.append((ref, to_label(raw, classnames, index)))
        except DataError as e:
            raise DataError(f"{_sample_where(ref)}: {e}") from None
    return samples, classnames


def _options(image_keys: Sequence[str], label_key: str, label_field: str | None,
             max_incomplete: float) -> tuple[list[str], LabelReader]:
    """The checked image extensions and label reader."""
    keys = [k.lower().lstrip(".") for k in image_keys]
    if not keys or not all(keys):
        raise DataError(f"webdataset: image_keys must name image extensions (e.g. {list(IMAGE_KEYS)}), "
                        f"got {list(image_keys)!r}")
    if label_field is not None and label_key != "json":
        raise DataError(f"webdataset: label_field is read only with label_key: json (label_key is {label_key!r})")
    if not 0.0 <= max_incomplete <= 1.0:
        raise DataError(f"webdataset: max_incomplete must be in [0, 1], got {max_incomplete}")
    return keys, LabelReader(label_key, label_field or "label")


@register_dataset("webdataset", declared_classes=True)
def webdataset(urls: str | Path | Sequence[str], classnames: Sequence[str] | str | Path | None = None, *,
               label_key: Literal["cls", "txt", "json"] = "cls", label_field: str | None = None,
               image_keys: Sequence[str] = IMAGE_KEYS, max_incomplete: float = 0.01,
               base_dir=None) -> LabeledDataset:
    """WebDataset tar shards: each sample is the members sharing a key, an image
    (``image_keys``, the first present) and a label (``label_key``: ``cls`` an integer
    index into ``classnames``, ``txt`` a class name, ``json`` the ``label_field`` of an
    object, default ``label``). Without ``classnames`` the sorted label names are the
    classes (integer labels need them). Keys without an image or a label are skipped
    and counted; more than ``max_incomplete`` of them is an error naming the first.

    Example:
        >>> train = build_dataset({"kind": "webdataset", "urls": "shards/train-{000000..000003}.tar",
        ...                        "classnames": "classnames.txt"})
    """
    keys, reader = _options(image_keys, label_key, label_field, max_incomplete)
    shards = shard_paths(urls, base_dir)
    names = read_classnames(classnames, base_dir)
    found = _collect(shards, keys, reader)
    _check_incomplete(found, max_incomplete, keys, label_key, shards)
    samples, names = _labelled(found, names, label_key)
    name = re.sub(r"[-_.]?\d+$", "", shards[0].stem) or shards[0].parent.name
    return LabeledDataset(samples, names, load=load_member, name=name)
