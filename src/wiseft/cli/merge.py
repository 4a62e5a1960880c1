"""``wiseft merge``: any registered merge method over checkpoint files, reading and writing
what ``wiseft interpolate`` and ``wiseft soup`` read and write.

Safetensors inputs (files, shard indexes, directories) are merged out of core
(``merge.write_merges``); any other input (a ``.pt`` file) is loaded and merged in
memory (``merge_states``). When the first input (the base, or the first model without
one) is a wiseft model directory, the output is one too, its metadata kept, as
``wiseft interpolate`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from wiseft.config import MergeConfig
from wiseft.heads import export_model, load_model
from wiseft.io import META_FILE, load_state, save_state
from wiseft.merge import (
    MergeCall,
    MergeError,
    check_call,
    is_safetensors_checkpoint,
    merge_states,
    open_checkpoint,
    plan_method_files,
    write_merges,
)

if TYPE_CHECKING:
    import torch


def parse_pairs(pairs: Sequence[str], flag: str) -> list[tuple[str, Any]]:
    """``KEY=VALUE`` strings as (key, value) pairs, each value read as YAML (``0.2`` a
    float, ``[0.2, 0.8]`` a list, ``{"*.ln_*": 0.5}`` a mapping, ``true`` a bool);
    MergeError naming ``flag`` for a pair without ``=`` or a value YAML cannot read."""
    out = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise MergeError(f"{flag} expects KEY=VALUE, got {pair!r}")
        try:
            out.append((key.strip(), yaml.safe_load(value)))
        except yaml.YAMLError as e:
            raise MergeError(f"{flag} {key.strip()}: cannot read {value!r} as a value ({e.__class__.__name__})") \
                from None
    return out


@dataclass(frozen=True)
class MergeJob:
    """One merge of checkpoint files: ``method`` over ``base`` (theta_0, or None for a
    method without one) and ``models``, into ``out``. ``params`` the method's parameters;
    ``weights`` one per model; ``extras`` the per-model checkpoints a method declares
    (``{"fisher": ("f_a.safetensors", "f_b.safetensors")}``); ``settings`` the tensors
    to mix, shards and chunks (``keep``: 0 is the base when there is one).

    Example:
        >>> run_merge(MergeJob("ties", ("ft_a/", "ft_b/"), "merged/", base="zs/", params={"density": 0.2}))
    """

    method: str
    models: tuple[str, ...]
    out: str
    base: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    weights: tuple[float, ...] | None = None
    extras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    settings: MergeConfig = MergeConfig()

    @property
    def inputs(self) -> list[str]:
        """The base (when given), then the models: the plan's input order."""
        return ([self.base] if self.base is not None else []) + list(self.models)

    def check(self) -> MergeCall:
        """The method, model count, base, weights, extras and parameters checked, no file read."""
        return check_call(self.method, self.base is not None, len(self.models), self.params, weights=self.weights,
                          extras=self.extras, settings=self.settings)


def describe_merge(job: MergeJob) -> str:
    """What ``run_merge(job)`` would do, from the checkpoints' headers alone: the method
    and its parameters, the tensors mixed, copied and dropped, bytes, shards and memory."""
    job.check()
    files = job.inputs + [p for ps in job.extras.values() for p in ps]
    not_files = [p for p in files if not is_safetensors_checkpoint(p)]
    if not_files:
        raise MergeError(f"--dry-run reads safetensors headers; {not_files[0]} is no safetensors file, shard index "
                         "or directory holding them")
    return plan_method_files(job.method, job.base, job.models, job.params, weights=job.weights,
                             extras=job.extras, settings=job.settings).summary()


def _provenance(job: MergeJob, call: MergeCall, inherited: Mapping[str, Any]) -> dict[str, Any]:
    """The output's wiseft metadata: the first input's, with the merge that made it and
    its parents; ``alpha`` only for a linear merge with one global alpha."""
    meta = {k: v for k, v in inherited.items() if k not in ("alpha", "temperature")}
    params = call.params.model_dump(mode="json")
    meta["merge"] = {"method": call.method.name, "params": params, "base": job.base, "models": list(job.models),
                     **({"weights": list(call.weights)} if call.method.weighted else {})}
    meta["parents"] = job.inputs
    if call.method.name == "linear" and not params["rules"] and params["ramp"] is None:
        meta["alpha"] = params["alpha"]
    return meta


def _merge_model_dir(job: MergeJob, call: MergeCall) -> Path:
    """The merge when the first input is a wiseft model directory: exported as one, with
    its metadata (class names, templates, backbone) kept."""
    model, backbone, meta = load_model(job.inputs[0])
    first = model.state_dict()  # merge_states reads it and returns new tensors before load_state_dict writes
    merged = _merge_in_memory(job, call, [first] + [load_state(p) for p in job.inputs[1:]])
    differ = set(merged) ^ set(first)
    if differ:
        raise MergeError(f"the merge of {job.inputs[0]} gives no model of its kind: tensor {sorted(differ)[0]!r} "
                         "is missing or new (a wiseft model keeps every tensor; drop --include/--exclude)")
    model.load_state_dict(merged)
    return export_model(model, backbone, _provenance(job, call, meta), job.out)


def run_merge(job: MergeJob) -> Path:
    """Merge ``job``'s checkpoints and write the result: a wiseft model directory when the
    first input is one; else (sharded) safetensors, out of core when every input is a
    safetensors checkpoint, in memory otherwise. Returns the output's path.

    Example:
        >>> run_merge(MergeJob("linear", ("ft.safetensors",), "out.safetensors", base="zs.safetensors",
        ...                    params={"ramp": [0.2, 0.8]}))
    """
    call = job.check()
    if (Path(job.inputs[0]) / META_FILE).exists():
        return _merge_model_dir(job, call)
    files = job.inputs + [p for ps in job.extras.values() for p in ps]
    if all(is_safetensors_checkpoint(p) for p in files):
        inherited = json.loads(open_checkpoint(job.inputs[0]).metadata.get("wiseft", "{}"))
        meta = {"wiseft": json.dumps(_provenance(job, call, inherited))}
        return write_merges(call.method, job.base, job.models, {job.out: call.params}, weights=call.weights,
                            extras=job.extras, settings=job.settings, metadata=meta)[0]
    merged = _merge_in_memory(job, call, [load_state(p) for p in job.inputs])
    return save_state(job.out, merged, _provenance(job, call, {}))


def _merge_in_memory(job: MergeJob, call: MergeCall, states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``merge_states`` of ``job``'s inputs as loaded (``states``, in ``job.inputs`` order:
    the base first where the method takes one) and its extras."""
    base, models = (states[0], states[1:]) if call.has_base else (None, states)
    return merge_states(call.method, base, models, call.params, weights=call.weights,
                        extras={e: [load_state(p) for p in ps] for e, ps in job.extras.items()},
                        settings=job.settings)
