"""Where a parameter sits in the network, as a depth in [0, 1], from its name alone."""

from __future__ import annotations

import re
from typing import Iterable

# A numbered block: ``resblocks.3`` (open_clip), ``layers.3`` (HF CLIP, Llama), ``layer.3``
# (BERT's ``encoder.layer.3``), ``blocks.3`` (timm), ``h.3`` (GPT-2), or block 1 of ResNet
# stage 2, ``layer2.1`` (torchvision, open_clip's ModifiedResNet). The first in a name wins.
BLOCK = re.compile(r"(?:^|\.)(?:(resblocks|layers|layer|blocks|h)\.(\d+)|(layer)(\d+)\.(\d+))(?=\.|$)")
# outside the blocks, these come before them: embeddings, the patch or ResNet stem, the pre-norm
EMBEDDING = re.compile(r"embed|(?:^|\.)(?:wte|wpe|cls_token|ln_pre|pre_layrnorm|stem|conv\d|bn\d)(?:\.|_|$)")


def _block(key: str) -> tuple[str, tuple[int, ...]] | None:
    """(tower, block index) of a block's parameter, or None outside the blocks. The tower
    is the name up to the block container, e.g. ``visual.transformer.resblocks``."""
    m = BLOCK.search(key)
    if m is None:
        return None
    if m.group(1):
        return key[: m.start()] + "." + m.group(1), (int(m.group(2)),)
    return key[: m.start()] + "." + m.group(3), (int(m.group(4)), int(m.group(5)))


def layer_depths(keys: Iterable[str]) -> dict[str, float]:
    """Each parameter name's depth in [0, 1]: 0 before the first block (embeddings, patch
    or ResNet stem, pre-norm), 1 after the last (final norm, projection, head, logit
    scale), and the i-th (from 0) of a tower's L blocks at (i + 1) / (L + 1).

    Blocks are numbered containers (``resblocks.N``, ``layers.N``, ``layer.N``, so
    ``encoder.layer.N`` too, ``blocks.N``, ``h.N``, and ResNet's ``layerS.N``). Each
    container prefix is its own tower with its own L, so an image tower of 12 blocks and
    a text tower of 6 both run from 0 to 1.

    Example:
        >>> layer_depths(["visual.conv1.weight", "visual.transformer.resblocks.0.attn.in_proj_weight",
        ...               "visual.transformer.resblocks.1.attn.in_proj_weight", "visual.proj"])
        {'visual.conv1.weight': 0.0, 'visual.transformer.resblocks.0.attn.in_proj_weight': 0.333...,
         'visual.transformer.resblocks.1.attn.in_proj_weight': 0.666..., 'visual.proj': 1.0}
    """
    keys = list(keys)
    blocks = {k: b for k in keys if (b := _block(k)) is not None}
    towers: dict[str, list[tuple[int, ...]]] = {}
    for tower, index in blocks.values():
        towers.setdefault(tower, []).append(index)
    rank = {t: {index: i for i, index in enumerate(sorted(set(indices)))} for t, indices in towers.items()}
    depths = {}
    for key in keys:
        if key in blocks:
            tower, index = blocks[key]
            depths[key] = (rank[tower][index] + 1) / (len(rank[tower]) + 1)
        else:
            depths[key] = 0.0 if EMBEDDING.search(key) else 1.0
    return depths
