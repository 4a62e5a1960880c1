"""Out-of-core merging of safetensors files: bit-identical to the in-memory engine,
sharded in and out, headers-only planning, and a merge under a hard memory cap."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from wiseft.cli import main
from wiseft.config import MergeConfig
from wiseft.io import load_state
from wiseft.merge import (
    MergeError,
    average_files,
    interpolate,
    interpolate_files,
    open_checkpoint,
    plan_files,
    weighted_average,
    write_interpolations,
)


def _state(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "enc.w": torch.randn(37, 29, generator=g),
        "enc.h": torch.randn(1001, generator=g).half(),
        "enc.bf": torch.randn(513, generator=g).bfloat16(),
        "enc.d": torch.randn(7, generator=g).double(),
        "bn.count": torch.tensor(seed + 3),
        "mask": torch.rand(5, generator=g) > 0.5,
        "empty": torch.zeros(0, 4),
        "head.weight": torch.randn(3, 29, generator=g),
    }


def _save_sharded(state: dict, directory: Path, shards: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        part = {k: state[k].contiguous() for k in names[i::shards]}
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(directory / fname))
        weight_map.update({k: fname for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return directory


def _assert_same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    a, b = _state(0), _state(1)
    save_file(a, str(d / "a.safetensors"))
    _save_sharded(b, d / "b", shards=3)
    return d, a, b


@settings(max_examples=12, deadline=None)
@given(alphas=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=3, unique=True),
       chunk=st.sampled_from([4096, 8192, 1 << 20]))
def test_out_of_core_is_bit_identical_to_in_memory(files, tmp_path_factory, alphas, chunk):
    d, a, b = files
    out = tmp_path_factory.mktemp("out")
    dests = {al: out / f"{i}.safetensors" for i, al in enumerate(alphas)}
    write_interpolations(d / "a.safetensors", d / "b", dests, MergeConfig(chunk_bytes=chunk))
    for al, dest in dests.items():
        _assert_same(load_file(str(dest)), interpolate(a, b, al))


def test_sharded_output_with_index_and_exact_ends(files, tmp_path):
    d, a, b = files
    dests = write_interpolations(d / "b" / "model.safetensors.index.json", d / "a.safetensors",
                                 {0.0: tmp_path / "a0", 1.0: tmp_path / "a1"},
                                 MergeConfig(max_shard_bytes=2000, chunk_bytes=4096), metadata={"note": "x"})
    shards = sorted(p.name for p in dests[0].glob("*.safetensors"))
    assert len(shards) > 1 and (dests[0] / "model.safetensors.index.json").exists()
    _assert_same(load_state(dests[0]), b)
    _assert_same(load_state(dests[1]), {**a, "bn.count": b["bn.count"], "mask": b["mask"]})  # int/bool: input 0
    assert open_checkpoint(dests[0]).metadata == {"format": "pt", "note": "x"}


def test_selective_file_merge_and_errors_name_the_tensor(tmp_path):
    a, b = _state(0), _state(1)
    b["head.weight"] = torch.randn(5, 29)
    save_file(a, str(tmp_path / "a.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    with pytest.raises(MergeError, match=r"'head.weight' has shape \(3, 29\).*\(5, 29\)"):
        interpolate_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "o.safetensors", 0.5)
    assert not list(tmp_path.glob("*o.safetensors*"))  # nothing half-written
    out = interpolate_files(tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "o.safetensors",
                            0.5, MergeConfig(exclude=["head.*"]))
    _assert_same(load_file(str(out)), interpolate(a, b, 0.5, MergeConfig(exclude=["head.*"])))


def test_average_files_matches_weighted_average(files, tmp_path):
    d, a, b = files
    c = _state(2)
    save_file(c, str(tmp_path / "c.safetensors"))
    out = average_files([d / "a.safetensors", d / "b", tmp_path / "c.safetensors"], tmp_path / "soup.safetensors",
                        [1.0, 2.0, 0.5], MergeConfig(chunk_bytes=4096))
    _assert_same(load_file(str(out)), weighted_average([a, b, c], [1.0, 2.0, 0.5]))


def test_plan_reads_headers_only(files):
    d, a, b = files
    plan = plan_files([d / "a.safetensors", d / "b"], MergeConfig(exclude=["head.*"]))
    assert plan.count("mix") == 5 and plan.count("copy") == 3  # 2 buffers + the head
    assert plan.output_bytes == sum(v.numel() * v.element_size() for v in b.values())
    assert "mixed:   5 tensors" in plan.summary()


def test_cli_interpolate_soup_and_dry_run(files, tmp_path, capsys):
    d, a, b = files
    args = ["interpolate", str(d / "a.safetensors"), str(d / "b"), "--alpha", "0.25", "--alpha", "0.75",
            "--out", str(tmp_path / "sweep")]
    assert main(args + ["--dry-run"]) == 0
    assert "memory:" in capsys.readouterr().out and not (tmp_path / "sweep").exists()
    assert main(args) == 0
    _assert_same(load_file(str(tmp_path / "sweep" / "alpha_0.75.safetensors")), interpolate(a, b, 0.75))
    meta = json.loads(open_checkpoint(tmp_path / "sweep" / "alpha_0.25.safetensors").metadata["wiseft"])
    assert meta["alpha"] == 0.25
    assert main(["soup", str(d / "a.safetensors"), str(d / "b"), "--out", str(tmp_path / "s.safetensors")]) == 0
    _assert_same(load_file(str(tmp_path / "s.safetensors")), weighted_average([a, b]))
    assert main(["soup", str(d / "a.safetensors"), str(d / "b"), "--out", "x", "--dry-run"]) == 0
    bad = {**b, "head.weight": torch.zeros(4, 29)}
    save_file(bad, str(tmp_path / "bad.safetensors"))
    assert main(["interpolate", str(d / "a.safetensors"), str(tmp_path / "bad.safetensors"), "--alpha", "0.5",
                 "--out", str(tmp_path / "o.safetensors"), "--dry-run"]) == 2
    assert "'head.weight'" in capsys.readouterr().err


_CAPPED = textwrap.dedent("""
    import json, resource, sys, torch
    from wiseft.io.checkpoint import load_state
    from wiseft.config import MergeConfig
    from wiseft.merge.files import interpolate_files
    torch.set_num_threads(1)
    torch.lerp(torch.ones(8), torch.zeros(8), 0.5)
    vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize"))
    cap = vm + int(sys.argv[4])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    interpolate_files(sys.argv[1], sys.argv[2], sys.argv[3], 0.3, MergeConfig(chunk_bytes=1 << 20))
    try:
        load_state(sys.argv[1])
        loaded = "loaded"
    except Exception as e:  # the whole model does not fit under the cap
        loaded = type(e).__name__
    print(json.dumps({"loaded": loaded}))
""")


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_sharded_merge_under_a_memory_cap_smaller_than_one_model(tmp_path):
    g = torch.Generator().manual_seed(0)
    models = []
    for m in range(2):
        state = {f"layer{i}.weight": torch.randn(1 << 20, generator=g) for i in range(12)}  # 12 x 4 MB
        state["layer0.scale"] = torch.randn(1000, generator=g).bfloat16()
        state["steps"] = torch.tensor(m)
        _save_sharded(state, tmp_path / f"m{m}", shards=3)
        models.append(state)
    model_bytes = 48 << 20
    headroom = 24 << 20  # half of one model; loading either model whole cannot fit
    res = subprocess.run([sys.executable, "-c", _CAPPED, str(tmp_path / "m0"), str(tmp_path / "m1"),
                          str(tmp_path / "out"), str(headroom)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads(res.stdout.strip().splitlines()[-1])["loaded"] != "loaded"
    assert headroom < model_bytes
    _assert_same(load_state(tmp_path / "out"), interpolate(models[0], models[1], 0.3))
