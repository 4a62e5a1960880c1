"""Reading state dicts in other tools' layouts."""

import json

import pytest
import torch
from safetensors.torch import save_file

from wiseft.io import CheckpointError, load_state


def test_sharded_safetensors_and_torch_directories(tmp_path):
    a, b = {"x.weight": torch.ones(2, 3)}, {"y.bias": torch.arange(4.0)}
    shards = tmp_path / "sharded"
    shards.mkdir()
    save_file(a, str(shards / "model-00001-of-00002.safetensors"))
    save_file(b, str(shards / "model-00002-of-00002.safetensors"))
    weight_map = {"x.weight": "model-00001-of-00002.safetensors", "y.bias": "model-00002-of-00002.safetensors"}
    (shards / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for path in (shards, shards / "model.safetensors.index.json"):
        state = load_state(path)
        assert state.keys() == {"x.weight", "y.bias"} and torch.equal(state["y.bias"], b["y.bias"])

    hf = tmp_path / "torch_dir"
    hf.mkdir()
    torch.save({"module.x.weight": a["x.weight"]}, hf / "pytorch_model.bin")
    assert torch.equal(load_state(hf)["x.weight"], a["x.weight"])

    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no weights"):
        load_state(tmp_path / "empty")


def test_load_state_is_the_one_weights_loader_and_takes_state_dicts_in_memory():
    """Merges and soups take paths or state dicts through ``load_state``; one in memory
    comes back as it is (detached, not copied), whatever it holds."""
    w = torch.nn.Parameter(torch.tensor([1.0, float("nan")]))
    state = load_state({"w": w})
    assert not state["w"].requires_grad and state["w"].data_ptr() == w.data_ptr()
    assert torch.equal(state["w"][:1], torch.tensor([1.0]))


def test_training_state_is_another_format_with_its_own_loader(tmp_path):
    from wiseft.train import ResumeError, load_training_state
    from wiseft.train.checkpoints import FORMAT

    weights = {"x.weight": torch.ones(2, 3)}
    save_file(weights, str(tmp_path / "w.safetensors"))
    torch.save(weights, tmp_path / "w.pt")
    torch.save({"format": FORMAT, "stage": "finetune", "step": 3}, tmp_path / "step_00000003.pt")
    assert load_training_state(tmp_path / "step_00000003.pt")["step"] == 3
    with pytest.raises(ResumeError, match="a safetensors file holds weights only"):
        load_training_state(tmp_path / "w.safetensors")
    with pytest.raises(ResumeError, match="w.pt is not a wiseft training checkpoint"):
        load_training_state(tmp_path / "w.pt")
    assert torch.equal(load_state(tmp_path / "w.pt")["x.weight"], weights["x.weight"])


def test_check_same_trajectory_names_the_stage_or_the_first_changed_field():
    from pathlib import Path

    from wiseft.train import ResumeError
    from wiseft.train.checkpoints import check_same_trajectory

    state = {"stage": "finetune", "config": {"lr": 1e-3, "seed": 0, "epochs": 2, "num_workers": 4}}
    path = Path("ckpt/step_00000003.pt")
    check_same_trajectory(state, {"lr": 1e-3, "seed": 0, "epochs": 2, "num_workers": 0}, "finetune", path)
    with pytest.raises(ResumeError, match=r"step_00000003.pt belongs to stage 'finetune', not 'lp'"):
        check_same_trajectory(state, {"lr": 1e-3, "seed": 0, "epochs": 2}, "lp", path)
    with pytest.raises(ResumeError, match=r"finetune.lr was 0.001 there, now 0.002"):
        check_same_trajectory(state, {"lr": 2e-3, "seed": 1, "epochs": 2}, "finetune", path)
