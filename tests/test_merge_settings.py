"""The merge stage's one settings object (MergeConfig): every merge function takes it, the
loose keywords of before issue 14 still work and give the same bits, and the names
issue 14 replaced are aliases of the new ones."""

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from wiseft.config import MergeConfig, parse_size
from wiseft.io import load_state
from wiseft.merge import (
    Interpolator,
    MergeError,
    average_files,
    greedy_soup,
    interpolate,
    interpolate_files,
    plan_files,
    weighted_average,
    write_interpolations,
)


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"enc.w": torch.randn(6, 5, generator=g), "enc.h": torch.randn(7, generator=g).half(),
            "steps": torch.tensor(seed), "head.weight": torch.randn(3, 5, generator=g)}


@pytest.fixture
def files(tmp_path):
    states = [_state(i) for i in range(3)]
    for i, s in enumerate(states):
        save_file(s, str(tmp_path / f"m{i}.safetensors"))
    return tmp_path, states


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


def test_merge_config_defaults_and_a_misspelt_field():
    assert MergeConfig() == MergeConfig(include=None, exclude=(), keep=None, allow_extrapolation=False,
                                        max_shard_bytes=None, chunk_bytes=16 << 20)
    base = MergeConfig(exclude=["head.*"], keep=0)
    assert base.exclude == ("head.*",)  # lists become tuples: the object is frozen and hashable
    assert MergeConfig(exclude=None).exclude == ()  # exclude=None meant "none" before
    with pytest.raises(ValidationError, match="exclud"):
        MergeConfig(exclud=["head.*"])  # a misspelt field is named, not ignored
    with pytest.raises(ValidationError):
        base.keep = 2  # frozen


def test_shard_bytes_parsed_when_read():
    assert MergeConfig().shard_bytes is None
    assert MergeConfig(max_shard_bytes="5GB").shard_bytes == 5_000_000_000
    assert MergeConfig(max_shard_bytes="2KiB").shard_bytes == 2048
    assert MergeConfig(max_shard_bytes=1234).shard_bytes == 1234
    assert parse_size("1e3") == 1000
    with pytest.raises(ValueError, match="cannot read 'lots' as a size"):
        MergeConfig(max_shard_bytes="lots").shard_bytes


def test_in_memory_merges_take_the_settings_object():
    a, b, c = _state(0), _state(1), _state(2)
    settings = MergeConfig(exclude=["head.*"], keep=0)
    merged = interpolate(a, b, 0.3, settings)
    assert torch.equal(merged["head.weight"], a["head.weight"])  # kept from input 0
    assert torch.equal(merged["enc.w"], torch.lerp(a["enc.w"], b["enc.w"], 0.3))
    _same(Interpolator(a, b, settings).merge(0.3), merged)
    with pytest.raises(ValueError, match="outside"):
        interpolate(a, b, 1.5, settings)
    out = interpolate(a, b, 1.5, MergeConfig(allow_extrapolation=True))
    assert torch.equal(out["enc.w"], torch.lerp(a["enc.w"], b["enc.w"], 1.5))
    soup = weighted_average([a, b, c], [1.0, 2.0, 1.0], MergeConfig(exclude=["head.*"], keep=2))
    assert torch.equal(soup["head.weight"], c["head.weight"])


def test_default_keep_is_each_operations_own():
    a, b = _state(0), _state(1)
    only_enc = MergeConfig(include=["enc.*"])
    assert torch.equal(interpolate(a, b, 0.5, only_enc)["head.weight"], b["head.weight"])  # interpolation: 1
    assert torch.equal(weighted_average([a, b], None, only_enc)["head.weight"], a["head.weight"])  # average: 0


def test_out_of_core_merges_take_the_settings_object(files):
    d, (a, b, c) = files
    settings = MergeConfig(exclude=["head.*"], keep=0, chunk_bytes=4096)
    m0, m1, m2 = (d / f"m{i}.safetensors" for i in range(3))
    paths = write_interpolations(m0, m1, {0.3: d / "x.safetensors", 0.7: d / "y"}, settings)
    _same(load_state(paths[0]), interpolate(a, b, 0.3, settings))
    _same(load_state(paths[1]), interpolate(a, b, 0.7, settings))
    _same(load_file(interpolate_files(m0, m1, d / "z.safetensors", 0.3, settings)), load_file(paths[0]))
    out = average_files([m0, m1, m2], d / "avg.safetensors", [1.0, 2.0, 1.0], settings)
    _same(load_file(out), weighted_average([a, b, c], [1.0, 2.0, 1.0], settings))
    plan = plan_files([m0, m1], MergeConfig(exclude=["head.*"], max_shard_bytes="1kB"))
    assert plan.max_shard_bytes == 1000 and plan.count("mix") == 2 and plan.count("copy") == 2


def test_one_settings_object_and_no_loose_keywords(files):
    d, _ = files
    m0, m1 = d / "m0.safetensors", d / "m1.safetensors"
    new = write_interpolations(m0, m1, {0.4: d / "new"}, MergeConfig(exclude=["head.*"], max_shard_bytes=200),
                               metadata={"k": "v"})
    assert len(list(new[0].glob("*.safetensors"))) > 1  # sharded at 200 bytes
    _same(load_state(new[0]), interpolate(load_state(m0), load_state(m1), 0.4, MergeConfig(exclude=["head.*"])))
    with pytest.raises(TypeError, match="exclude"):  # the loose keyword form is gone (CHANGELOG 0.2.0)
        write_interpolations(m0, m1, {0.4: d / "old"}, exclude=["head.*"])
    assert not hasattr(Interpolator, "sweep")  # Interpolator.states is the one name
    with pytest.raises(MergeError, match=r"keep=5 is not an input index \(0..1\)"):
        write_interpolations(m0, m1, {0.4: d / "q"}, MergeConfig(keep=5))
    assert not (d / "q").exists()


def test_greedy_soup_takes_paths_and_states_alike(files):
    d, states = files
    by_state = greedy_soup(states, lambda th: float(th["enc.w"].sum()), scores=[3.0, 2.0, 1.0])
    by_path = greedy_soup([d / f"m{i}.safetensors" for i in range(3)], lambda th: float(th["enc.w"].sum()),
                          scores=[3.0, 2.0, 1.0])
    assert by_state.chosen == by_path.chosen
    _same(by_state.state, by_path.state)
