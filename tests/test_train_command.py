"""``wiseft train`` (and ``torchrun -m wiseft.train``) writes the weights ``wiseft run``
writes, for every recipe: a LoRA fine-tune's head and adapter factors, and a FLYP
fine-tune of the model with its text tower; a later ``wiseft run`` reuses them."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

from wiseft.config import parse_config
from wiseft.io import load_state
from wiseft.pipeline import run, train_from_config

pytestmark = pytest.mark.slow  # two fine-tunes per recipe

RECIPES = {"lora": {"mode": "lora", "lora": {"rank": 2}},
           "flyp": {"mode": "e2e", "objective": "flyp"}}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_wiseft_train_writes_what_wiseft_run_writes_and_run_reuses_it(open_clip_spec, image_data, tmp_path, recipe,
                                                                       caplog):
    finetune = {"lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1, **RECIPES[recipe]}
    raw = lambda out: run_config(open_clip_spec, image_data, tmp_path / out, finetune=finetune,  # noqa: E731
                                 alphas=[0.0, 1.0])
    trained = load_state(train_from_config(parse_config(raw("train")), progress=False)["finetuned"])
    alone = run(parse_config(raw("run")), progress=False)
    reference = load_state(alone.run_dir / "checkpoints" / "finetuned.safetensors")
    assert trained.keys() == reference.keys()
    assert all(torch.equal(trained[k], reference[k]) for k in reference)
    with caplog.at_level("INFO", logger="wiseft"):
        again = run(parse_config(raw("train")), progress=False)  # the directory wiseft train wrote
    assert "finetuned: reusing" in caplog.text
    key = lambda r: (r.model, r.alpha, r.dataset, r.metric, r.value)  # noqa: E731
    assert sorted(map(key, again.records)) == sorted(map(key, alone.records))
