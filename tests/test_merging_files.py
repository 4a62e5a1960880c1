"""The out-of-core engine, ``merge_files.write_merges``/``merge_files``: every registered
method from safetensors checkpoints, bit-identical to ``merging.merge_states`` on the same
weights, elementwise methods cut into chunks, sharded in and out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_merging_engine import WEIGHT_SPACE, assert_same_states, tiny_state

from wiseft.config import MergeConfig
from wiseft.merge import MergeError, get_method, merge_files, merge_states, open_checkpoint, write_merges


def disk_state(seed: int) -> dict[str, torch.Tensor]:
    """``tiny_state`` as a file holds it (a tied pair as two equal tensors), with a tensor
    long enough for several chunks and an empty one."""
    state = {k: v.clone() for k, v in tiny_state(seed).items()}
    g = torch.Generator().manual_seed(100 + seed)
    state["transformer.resblocks.1.mlp.c_proj.weight"] = torch.randn(37, 29, generator=g)
    state["transformer.resblocks.1.mlp.c_proj.bias"] = torch.randn(1001, generator=g).half()
    state["empty"] = torch.zeros(0, 4)
    return state


def save_sharded(state: dict[str, torch.Tensor], directory: Path, shards: int) -> Path:
    """``state`` as a Hugging Face sharded checkpoint in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    names, weight_map = sorted(state), {}
    for i in range(shards):
        part = {k: state[k].contiguous() for k in names[i::shards]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(directory / fname))
        weight_map.update({k: fname for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A base file and three model checkpoints (one sharded), with Fisher-like extras."""
    d = tmp_path_factory.mktemp("ckpts")
    states = [disk_state(i) for i in range(4)]
    save_file(states[0], str(d / "base.safetensors"))
    paths = [d / "base.safetensors"]
    for i, st in enumerate(states[1:], 1):
        paths.append(save_sharded(st, d / f"m{i}", shards=2) if i == 1 else d / f"m{i}.safetensors")
        if i != 1:
            save_file(st, str(paths[-1]))
    extras = []
    for i, st in enumerate(states[1:]):
        f = {k: v.float().abs() + 0.25 * i for k, v in st.items() if v.is_floating_point() and k != "logit_scale"}
        save_file(f, str(d / f"f{i}.safetensors"))
        extras.append((d / f"f{i}.safetensors", f))
    return states, paths, extras


def _inputs(name: str, checkpoints):
    """(base path, model paths, extras paths) and the same as state dicts for ``name``."""
    states, paths, extras = checkpoints
    method = get_method(name)
    n = max(method.min_models, 2 if method.max_models is None else 1)
    files = (paths[0] if method.needs_base else None, paths[1:n + 1],
             {e: [p for p, _ in extras[:n]] for e in method.extras})
    memory = (states[0] if method.needs_base else None, states[1:n + 1],
              {e: [f for _, f in extras[:n]] for e in method.extras})
    return files, memory


@pytest.mark.parametrize("name", WEIGHT_SPACE)
@pytest.mark.parametrize("chunk_bytes", [256, 1 << 20])
def test_every_method_out_of_core_is_merge_states_bit_for_bit(name, chunk_bytes, checkpoints, tmp_path):
    (base, models, extras), (mbase, mmodels, mextras) = _inputs(name, checkpoints)
    settings = MergeConfig(chunk_bytes=chunk_bytes, exclude=["visual.conv1.*"])
    out = merge_files(name, base, models, tmp_path / "out.safetensors", extras=extras, settings=settings)
    got = load_file(str(out))
    want = merge_states(name, mbase, mmodels, extras=mextras, settings=settings)
    assert_same_states(dict(sorted(got.items())), dict(sorted(want.items())))


def test_elementwise_methods_are_read_in_chunks(checkpoints, tmp_path, monkeypatch):
    import wiseft.merge.files as mf

    reads = []
    real = mf._read_elements
    monkeypatch.setattr(mf, "_read_elements", lambda r, c, n, s, k: reads.append((n, s, k)) or real(r, c, n, s, k))
    _, paths, _ = checkpoints
    merge_files("linear", paths[0], paths[1:2], tmp_path / "a.safetensors", {"alpha": 0.3},
                settings=MergeConfig(chunk_bytes=256))
    key = "transformer.resblocks.1.mlp.c_proj.weight"  # 1073 fp32 elements: chunks of 64
    assert [(s, k) for n, s, k in reads if n == key][::2] == [(i, min(64, 1073 - i)) for i in range(0, 1073, 64)]
    reads.clear()
    merge_files("ties", paths[0], paths[1:3], tmp_path / "t.safetensors", settings=MergeConfig(chunk_bytes=256))
    assert {(s, k) for n, s, k in reads if n == key} == {(0, 1073)}  # whole: TIES ranks the whole tensor


def test_several_parameter_sets_in_one_pass_sharded_with_metadata(checkpoints, tmp_path):
    states, paths, _ = checkpoints
    outputs = {tmp_path / "r1": {"ramp": [0.2, 0.8]}, tmp_path / "r2": {"alpha": 0.5, "rules": {"*.ln_*": 1.0}}}
    dests = write_merges("linear", paths[0], [paths[2]], outputs, settings=MergeConfig(max_shard_bytes=3000),
                         metadata={"note": "x"})
    for dest, params in zip(dests, outputs.values()):
        assert (dest / "model.safetensors.index.json").exists()
        ckpt = open_checkpoint(dest)
        assert ckpt.metadata == {"format": "pt", "note": "x"}
        got = {k: load_file(str(f))[k] for k, f in ((k, loc.file) for k, loc in ckpt.locations.items())}
        want = merge_states("linear", states[0], [states[2]], params)
        assert_same_states(dict(sorted(got.items())), dict(sorted(want.items())))


def test_calls_are_checked_before_any_file_is_read(tmp_path):
    missing = tmp_path / "nowhere.safetensors"
    with pytest.raises(MergeError, match="'model_stock' takes 2 or more fine-tuned model"):
        merge_files("model_stock", missing, [missing], tmp_path / "o.safetensors")
    with pytest.raises(MergeError, match="'ties': density"):
        merge_files("ties", missing, [missing], tmp_path / "o.safetensors", {"density": 0})
    assert not (tmp_path / "o.safetensors").exists()


def test_todays_file_merges_are_the_registered_methods_bit_for_bit(checkpoints, tmp_path):
    """interpolate_files and average_files keep their fast paths: the same bits as
    ``linear`` and ``soup`` through the out-of-core method engine."""
    from wiseft.merge import average_files, interpolate_files

    _, paths, _ = checkpoints
    settings = MergeConfig(chunk_bytes=4096, exclude=["visual.conv1.*"])
    for alpha in (0.0, 0.37, 1.0):
        fast = interpolate_files(paths[0], paths[1], tmp_path / "fast.safetensors", alpha, settings)
        engine = merge_files("linear", paths[0], [paths[1]], tmp_path / "engine.safetensors", {"alpha": alpha},
                             settings=settings)
        assert_same_states(load_file(str(fast)), load_file(str(engine)))
    for weights in (None, [0.2, 0.0, 1.3]):
        fast = average_files(paths[1:], tmp_path / "fast.safetensors", weights, settings)
        engine = merge_files("soup", None, paths[1:], tmp_path / "engine.safetensors", weights=weights,
                             settings=settings)
        assert_same_states(load_file(str(fast)), load_file(str(engine)))


def test_fisher_out_of_core_is_fisher_merge(checkpoints, tmp_path):
    from wiseft.merge import fisher_merge

    states, paths, extras = checkpoints
    out = merge_files("fisher", None, paths[1:3], tmp_path / "f.safetensors", {"fisher_floor": 1e-3},
                      weights=[0.3, 0.7], extras={"fisher": [p for p, _ in extras[:2]]},
                      settings=MergeConfig(chunk_bytes=256))
    want = fisher_merge(states[1:3], [f for _, f in extras[:2]], [0.3, 0.7], fisher_floor=1e-3)
    assert_same_states(dict(sorted(load_file(str(out)).items())), dict(sorted(want.items())))
    with pytest.raises(MergeError, match="needs one 'fisher' input per model \\(2\\), got 1"):
        merge_files("fisher", None, paths[1:3], tmp_path / "g.safetensors", extras={"fisher": [extras[0][0]]})
