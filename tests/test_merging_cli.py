"""``wiseft merge --method NAME MODEL... --out PATH``: every registered weight-space method
through the command equals ``merge_states``; the formats ``interpolate`` and ``soup`` read
and write; ``--param`` read as YAML; ``--dry-run``; one-line errors (exit 2)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_merging_engine import WEIGHT_SPACE, assert_same_states
from test_merging_files import (
    _inputs,
    checkpoints,  # noqa: F401 - the fixture
)

from wiseft.cli import main
from wiseft.cli.merge import parse_pairs
from wiseft.config import MergeConfig
from wiseft.merge import get_method, merge_states, open_checkpoint

PARAMS = {"dare": ["drop_rate=0.5", "seed=3"], "fisher": ["fisher_floor=0.001"], "linear": ["ramp=[0.2, 0.8]"],
          "slerp": ["t=0.3"], "task_arithmetic": ["scale=0.7"], "ties": ["density=0.5", "normalize=false"]}


def _command(name: str, files, out) -> list[str]:
    base, models, extras = files
    cmd = ["merge", "--method", name, *map(str, models), "--out", str(out)]
    cmd += ["--base", str(base)] if base is not None else []
    for extra, paths in extras.items():
        cmd += [arg for p in paths for arg in ("--extra", f"{extra}={p}")]
    for p in PARAMS.get(name, []):
        cmd += ["--param", p]
    if get_method(name).weighted:
        cmd += ["--weights", *[str(0.5 + i) for i in range(len(models))]]
    return cmd


@pytest.mark.parametrize("name", WEIGHT_SPACE)
def test_every_method_through_the_command_is_merge_states(name, checkpoints, tmp_path, capsys):  # noqa: F811
    files, (mbase, mmodels, mextras) = _inputs(name, checkpoints)
    assert main(_command(name, files, tmp_path / "out.safetensors")) == 0
    assert f"{name} merge of {len(mmodels)} model(s)" in capsys.readouterr().out
    params = get_method(name).make_params(dict(parse_pairs(PARAMS.get(name, []), "--param")))
    weights = [0.5 + i for i in range(len(mmodels))] if get_method(name).weighted else None
    want = merge_states(name, mbase, mmodels, params, weights=weights, extras=mextras)
    assert_same_states(dict(sorted(load_file(str(tmp_path / "out.safetensors")).items())),
                       dict(sorted(want.items())))
    meta = json.loads(open_checkpoint(tmp_path / "out.safetensors").metadata["wiseft"])
    assert meta["merge"]["method"] == name and meta["merge"]["params"] == params.model_dump(mode="json")
    assert meta["parents"] == [str(p) for p in ([files[0]] if files[0] else []) + list(files[1])]


def test_params_are_read_as_yaml_rules_and_ramp_included(checkpoints, tmp_path):  # noqa: F811
    states, paths, _ = checkpoints
    out = tmp_path / "o.safetensors"
    assert main(["merge", "--method", "linear", str(paths[1]), "--base", str(paths[0]), "--out", str(out),
                 "--param", "ramp=[0.2, 0.8]", "--param", 'rules={"*.ln_*": 0.5, "head.*": 1}']) == 0
    want = merge_states("linear", states[0], [states[1]], {"ramp": (0.2, 0.8), "rules": {"*.ln_*": 0.5, "head.*": 1}})
    assert_same_states(dict(sorted(load_file(str(out)).items())), dict(sorted(want.items())))
    assert "alpha" not in json.loads(open_checkpoint(out).metadata["wiseft"])  # no one alpha describes it
    assert main(["merge", "--method", "linear", str(paths[1]), "--base", str(paths[0]), "--out", str(out),
                 "--param", "alpha=0.25"]) == 0
    assert json.loads(open_checkpoint(out).metadata["wiseft"])["alpha"] == 0.25


def test_pt_inputs_are_merged_in_memory_into_safetensors(checkpoints, tmp_path):  # noqa: F811
    states, _, _ = checkpoints
    for i in range(3):
        torch.save(states[i], tmp_path / f"m{i}.pt")
    out = tmp_path / "ties.safetensors"
    assert main(["merge", "--method", "ties", str(tmp_path / "m1.pt"), str(tmp_path / "m2.pt"), "--base",
                 str(tmp_path / "m0.pt"), "--out", str(out), "--param", "density=0.3",
                 "--exclude", "visual.conv1.*", "--keep", "0"]) == 0
    want = merge_states("ties", states[0], states[1:3], {"density": 0.3},
                        settings=MergeConfig(exclude=["visual.conv1.*"], keep=0))
    assert_same_states(dict(sorted(load_file(str(out)).items())), dict(sorted(want.items())))
    assert torch.equal(load_file(str(out))["visual.conv1.weight"], states[0]["visual.conv1.weight"])  # kept: base


def test_dry_run_prints_the_plan_and_the_parameters_without_reading_weights(checkpoints, tmp_path, capsys,
                                                                           monkeypatch):  # noqa: F811
    import wiseft.merge.safetensors as st

    _, paths, _ = checkpoints
    monkeypatch.setattr(st.TensorReader, "read", lambda *a: pytest.fail("a weight was read"))
    args = ["merge", "--method", "ties", str(paths[1]), str(paths[2]), "--base", str(paths[0]), "--out",
            str(tmp_path / "o"), "--param", "density=0.3", "--exclude", "head.*", "--max-shard-size", "2kB",
            "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "method:  ties (Yadav et al. 2023" in out and "tensor by tensor, whole" in out
    assert 'params:  {"density": 0.3, "scale": 1.0, "normalize": true}' in out
    assert "weights: [1.0, 1.0]" in out and "input 0: " + str(paths[0]) in out
    assert "whole:   the largest mixed tensor is 4.29 kB" in out  # c_proj.weight, 37 x 29 fp32: read whole
    assert "memory:  out of core ~16.83 MB of buffers" in out  # (3 inputs + 1) x 4292 B x 3 (half types) + a 16 MiB chunk
    assert "mixed:   12 tensors" in out and "copied:  2 tensors" in out and "shard(s)" in out
    assert not (tmp_path / "o").exists()


def test_a_wiseft_model_directory_stays_one_with_its_metadata(open_clip_spec, tmp_path, capsys):
    from wiseft.backbones import load_backbone
    from wiseft.heads import Classifier, export_model, load_model, zeroshot_head

    bb = load_backbone(open_clip_spec)
    model = Classifier(bb.encoder, zeroshot_head(bb, ["red", "green"], ["a {} photo."], cache=False))
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    meta = {"classnames": ["red", "green"], "templates": ["a {} photo."], "alpha": 0.0}
    zs = export_model(model, bb, meta, tmp_path / "zs")
    theta_1 = {k: v + 0.05 if v.is_floating_point() else v.clone() for k, v in theta_0.items()}
    save_file({k: v.contiguous() for k, v in theta_1.items()}, str(tmp_path / "ft.safetensors"))
    assert main(["merge", "--method", "slerp", str(tmp_path / "ft.safetensors"), "--base", str(zs),
                 "--out", str(tmp_path / "merged"), "--param", "t=0.4"]) == 0
    merged, _, got_meta = load_model(tmp_path / "merged")
    assert_same_states({k: v for k, v in merged.state_dict().items()},
                       merge_states("slerp", theta_0, [theta_1], {"t": 0.4}))
    assert got_meta["classnames"] == ["red", "green"] and got_meta["templates"] == ["a {} photo."]
    assert got_meta["merge"]["method"] == "slerp" and "alpha" not in got_meta


@pytest.mark.parametrize("args, message", [
    (["--method", "tis"], "unknown merge method 'tis'; did you mean 'ties'?"),
    (["--method", "ties", "--base", "b", "--param", "densty=0.2"], "merge method 'ties': densty: Extra inputs are not permitted"),
    (["--method", "ties", "--base", "b", "--param", "density=2"], "merge method 'ties': density: Input should be less than or equal"),
    (["--method", "ties", "--param", "density"], "--param expects KEY=VALUE, got 'density'"),
    (["--method", "slerp"], "merge method 'slerp' takes 1 fine-tuned model(s), got 2"),
    (["--method", "model_stock", "--base", "b", "--weights", "1", "2"],
     "merge method 'model_stock' takes no per-model weights"),
    (["--method", "soup", "--base", "b"], "merge method 'soup' takes no base model"),
    (["--method", "fisher"], "merge method 'fisher' needs one 'fisher' input per model (2), got 0"),
    (["--method", "greedy_soup"], "'greedy_soup' needs evaluate beyond the weights; run it with "
                                  "wiseft.merge.methods.greedy_soup.greedy_soup"),
])
def test_bad_calls_are_one_line_errors_before_any_file_is_read(args, message, tmp_path, capsys):
    missing = [str(tmp_path / "nowhere_a.safetensors"), str(tmp_path / "nowhere_b.safetensors")]
    for dry in ([], ["--dry-run"]):
        assert main(["merge", *missing, "--out", str(tmp_path / "o"), *args, *dry]) == 2
        err = capsys.readouterr().err
        assert err.startswith("wiseft: error: ") and message in err and err.count("\n") == 1, err


def test_list_prints_the_merge_methods(capsys):
    assert main(["list", "merge-methods"]) == 0
    assert capsys.readouterr().out == ("merge-methods: dare, fisher, greedy_soup, linear, model_stock, slerp, soup, "
                                       "task_arithmetic, ties\n")
