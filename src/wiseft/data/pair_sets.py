"""Pair datasets from files: a manifest of (image or text, caption) records and WebDataset
shards whose samples hold an image and a caption. Both give a
:class:`~wiseft.data.PairDataset`, read by the same data layer as labelled sets: images
decode under the one policy (``load_image``: unreadable ones are skipped and counted
where they are scored or trained on, decompression bombs refused)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from wiseft.data.base import DataError, register_dataset, resolve
from wiseft.data.folders import load_image, read_manifest
from wiseft.data.pairs import PairDataset
from wiseft.data.webdataset import IMAGE_KEYS, TarMember, group_members, index_shard, load_member, shard_paths


@register_dataset("pair_manifest", pairs=True)
def pair_manifest(path: str | Path, *, base_dir=None) -> PairDataset:
    """A CSV (with a header) or JSONL file of records with a ``caption`` and either ``path``
    (an image, relative to the manifest) or ``text`` (a text query: query-document pairs).
    An image listed with several captions is one query with several correct captions
    when it is scored by retrieval.

    Example:
        >>> pairs = build_dataset({"kind": "pair_manifest", "path": "captions.jsonl"})
    """
    file, rows, field = read_manifest(path, base_dir, "pair manifest", "caption")
    samples = []
    for n, r in enumerate(rows, 1):
        caption, query = r.get("caption"), r.get(field)
        if not isinstance(caption, str) or not caption.strip():
            raise DataError(f"pair manifest {file}, record {n}: no caption text (got {caption!r})")
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"pair manifest {file}, record {n}: no {field!r} (got {query!r})")
        samples.append((str(resolve(query, file.parent)) if field == "path" else query, caption))
    return PairDataset(samples, load=load_image if field == "path" else None, name=file.stem,
                       modality="image" if field == "path" else "text")


def _caption(text: str, caption_key: str, caption_field: str) -> str | None:
    """A sample's caption from its ``caption_key`` member's text (``json``: its ``caption_field``)."""
    if caption_key == "json":
        try:
            value = json.loads(text)
        except ValueError as e:
            raise DataError(f"the .json member is not JSON ({e})") from None
        text = value.get(caption_field) if isinstance(value, dict) else None
    return text.strip() if isinstance(text, str) and text.strip() else None


@register_dataset("webdataset_pairs", pairs=True)
def webdataset_pairs(urls: str | Path | Sequence[str], *, caption_key: Literal["txt", "json"] = "txt",
                     caption_field: str = "caption", image_keys: Sequence[str] = IMAGE_KEYS,
                     max_incomplete: float = 0.01, base_dir=None) -> PairDataset:
    """Image-caption pairs from WebDataset tar shards (the layout of LAION/CC-style
    captioned data): each sample is the members sharing a key, an image (``image_keys``,
    the first present) and a caption (``caption_key``: ``txt`` its text, ``json`` the
    ``caption_field`` of an object). Keys without an image or a caption are skipped and
    counted; more than ``max_incomplete`` of them is an error naming the first.

    Example:
        >>> pairs = build_dataset({"kind": "webdataset_pairs", "urls": "shards/cc-{000000..000009}.tar"})
    """
    keys = [k.lower().lstrip(".") for k in image_keys]
    if not keys or not all(keys):
        raise DataError(f"webdataset_pairs: image_keys must name image extensions, got {list(image_keys)!r}")
    if not 0.0 <= max_incomplete <= 1.0:
        raise DataError(f"webdataset_pairs: max_incomplete must be in [0, 1], got {max_incomplete}")
    shards = shard_paths(urls, base_dir)
    samples: list[tuple[TarMember, str]] = []
    incomplete: list[str] = []
    for shard in shards:
        index = index_shard(shard)
        for key, exts in group_members(index).items():
            image = next((exts[e] for e in keys if e in exts), None)
            member = exts.get(caption_key)
            try:
                caption = _caption(index.text(member), caption_key, caption_field) if member else None
            except DataError as e:
                raise DataError(f"webdataset shard {index.shard}, key {key!r}: {e}") from None
            if image is None or caption is None:
                why = "no image" if image is None else f"no caption ({caption_key})"
                incomplete.append(f"webdataset shard {index.shard}, key {key!r} ({why})")
                continue
            samples.append((TarMember(index.shard, image, *index.members[image]), caption))
    total = len(samples) + len(incomplete)
    if len(incomplete) > max_incomplete * total or not samples:
        raise DataError(f"webdataset_pairs: {len(incomplete)} of {total} samples lack an image "
                        f"({', '.join(keys)}) and a caption ({caption_key}), more than max_incomplete = "
                        f"{max_incomplete:g} allows; first: {incomplete[0] if incomplete else shards[0]}")
    return PairDataset(samples, load=load_member, name=shards[0].stem, modality="image")
