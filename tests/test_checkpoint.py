"""Reading state dicts in other tools' layouts."""

import json

import pytest
import torch
from safetensors.torch import save_file

from wiseft.checkpoint import CheckpointError, load_state


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
