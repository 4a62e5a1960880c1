"""Wrapping a model for training on several processes: DDP or FSDP over the initialised
process group, after freezing the parameters the output never reaches (a BERT pooler, say),
which DDP would otherwise wait for."""

from __future__ import annotations

import torch

from wiseft.runtime import current


def freeze_unreached(module: torch.nn.Module, inputs) -> list[str]:
    """Freeze (``requires_grad=False``) the trainable parameters of ``module`` that its
    output on ``inputs`` does not depend on, and return their names.

    DDP expects a gradient for every trainable parameter each step; a parameter the
    forward pass never reaches (BERT's pooler under a sentence encoder's mean pooling)
    stops it. One backward pass over a probe batch finds them once, so DDP keeps its
    cheaper default (no graph search every step). Freezing changes nothing a step does:
    the optimizer skips a parameter without a gradient, in one process too. The probe
    runs in eval mode (no batch-norm statistics move) and leaves every RNG as it was."""
    trainable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    if not trainable:
        return []
    was_training = module.training
    module.eval()
    try:
        devices = sorted({p.device.index or 0 for _, p in trainable if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            out = module(inputs)
            out.float().sum().backward()
        unused = [n for n, p in trainable if p.grad is None]
    finally:
        for _, p in trainable:
            p.grad = None
        module.train(was_training)
    for n, p in trainable:
        if n in unused:
            p.requires_grad_(False)
    return unused


def wrap_model(module: torch.nn.Module, parallel: str, device: torch.device) -> torch.nn.Module:
    """DDP, or FSDP2 (``fully_shard``) on each block of every ``ModuleList`` and the root.
    One process: the module unchanged."""
    if not current().enabled:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for sub in list(module.modules()):
            if isinstance(sub, torch.nn.ModuleList):
                for block in sub:
                    if any(p.requires_grad for p in block.parameters()):
                        fully_shard(block)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index] if device.type == "cuda" else None
    return DDP(module, device_ids=ids)
