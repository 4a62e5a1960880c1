"""Distributed evaluation: under torchrun each process scores its chunks of every set and
the gathered records equal a one-process run's (issue 17.1). The chunks are the batches of
a one-process run, so a sharded batch holds the inputs a one-process batch holds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIG, TINY_OPEN_CLIP, run_config

from wiseft.evaluation import InputCache, build_input_cache
from wiseft.evaluation.cache import Shard
from wiseft.runtime import all_gather_rows

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
needs_torchrun = pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")

# one process or each process of a torchrun launch: four sweeps (cached, naive re-decoding,
# linear from features, three alphas per pass) and the first 7 rows of the reference set's outputs (the bf16 check's read)
SWEEPS = r'''
import dataclasses, json, os, sys
import torch
if os.environ.get("OC_DIR"):
    import open_clip
    open_clip.add_model_config(os.environ["OC_DIR"])
from wiseft.backbones import load_backbone
from wiseft.config import load_config
from wiseft.evaluation import SweepSettings, sweep
from wiseft.heads import build_zeroshot_model
from wiseft.pipeline import prepare_data
from wiseft.runtime.distributed import all_gather_objects, current, init_distributed

cfg = load_config(sys.argv[1])
info, device = init_distributed("cpu")
data = prepare_data(cfg)
backbone = load_backbone(cfg.backbone)
model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=False)
theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
g = torch.Generator().manual_seed(0)
theta_1 = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in theta_0.items()}
head_only = {k: theta_1[k] if k.startswith("head.") else v for k, v in theta_0.items()}
out = {}
for name, theta, settings in [("cached", theta_1, {}), ("naive", theta_1, {"cache": False}),
                              ("linear", head_only, {"linear": True}), ("grouped", theta_1, {"alphas_per_pass": 3})]:
    s = SweepSettings(batch_size=4, progress=False, model_name=name, **settings)
    sets = [es for es in data.evalsets if not es.skipped] if name == "naive" else data.evalsets  # it reads
    out[name] = [dataclasses.asdict(r) for r in sweep(model, theta_0, theta, sets, [0.0, 0.5, 1.0],  # every input
                                                      backbone, settings=s)]
model.load_state_dict(theta_0)
reference = data.evalsets[0]
out["first_rows"] = reference._cache.outputs(model, 4, device, "fp32", limit=7).tolist()
out["skipped"] = {es.name: es.skipped for es in data.evalsets}
out["world"] = current().world
out["held"] = all_gather_objects([k for k, *_ in reference._cache.pieces(4)])  # the chunks each process read
if info.main:
    with open(sys.argv[2], "w") as f:
        json.dump(out, f)
'''


def _env(tmp_path: Path, **extra) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WISEFT_CACHE": str(tmp_path / "cache"), **extra}
    env.pop("RANK", None)
    return env


def _sweeps(cfg: dict, tmp_path: Path, env: dict) -> tuple[dict, dict]:
    """The script's output from one process and from two torchrun (gloo) processes."""
    cfg_path, script = tmp_path / "cfg.yaml", tmp_path / "sweeps.py"
    cfg_path.write_text(yaml.safe_dump(cfg))
    script.write_text(SWEEPS)
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    proc = subprocess.run([sys.executable, str(script), str(cfg_path), str(one)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), str(cfg_path), str(two)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(one.read_text()), json.loads(two.read_text())


def _assert_same(one: dict, two: dict) -> None:
    assert (one["world"], two["world"]) == (1, 2)
    chunks = one["held"][0]
    assert two["held"] == [chunks[0::2], chunks[1::2]]  # each process read every other chunk, no more
    for key in ("cached", "naive", "linear", "grouped", "first_rows", "skipped"):
        assert one[key] == two[key], key  # every record, every field, to the last bit of each value


def _broken_test_set(image_data: Path, root: Path) -> Path:
    """The colours test set (18 images) and one unreadable file: 19 inputs, 5 chunks of 4."""
    shutil.copytree(image_data / "test", root)
    (root / "green" / "002b.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.mark.slow  # four subprocesses
@needs_torchrun
def test_two_processes_score_images_as_one(open_clip_spec, image_data, tmp_path):
    cfg = run_config(open_clip_spec, image_data, tmp_path / "run", evaluation={"batch_size": 4})
    cfg["data"]["test"]["root"] = str(_broken_test_set(image_data, tmp_path / "test"))
    cfg["data"]["max_unreadable"] = 0.1
    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    one, two = _sweeps(cfg, tmp_path, _env(tmp_path, OC_DIR=str(tmp_path / "oc")))
    _assert_same(one, two)
    assert len(one["skipped"]["colors"]) == 1 and "002b.jpg" in one["skipped"]["colors"][0]
    assert {r["dataset"] for r in one["cached"]} == {"colors", "noise", "subset", "colors-val"}
    assert len(one["first_rows"]) == 7 and one["held"] == [[0, 1, 2, 3, 4]]
    assert all(r["provenance"]["alphas_per_pass"] == 3 for r in one["grouped"])  # vmapped, rows gathered


@pytest.mark.slow  # four subprocesses
@needs_torchrun
def test_two_processes_score_text_as_one(tiny_bert_dir, tmp_path):
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"), ("the phone software", "technology")]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows * 4) + "\n")
    (tmp_path / "heads.csv").write_text("text,label\n" + "\n".join(f"{t.split()[-1]},{y}" for t, y in rows) + "\n")
    cfg = {"backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
           "data": {"name": "news", "templates": "news", "train": {"kind": "manifest", "path": str(tmp_path / "train.csv")},
                    "test": {"kind": "manifest", "path": str(tmp_path / "train.csv")},
                    "shifts": {"last-word": {"kind": "manifest", "path": str(tmp_path / "heads.csv")}},
                    "validation_fraction": 0.25},
           "output_dir": str(tmp_path / "run"), "device": "cpu"}
    one, two = _sweeps(cfg, tmp_path, _env(tmp_path))
    _assert_same(one, two)
    assert {r["dataset"] for r in one["naive"]} == {"news", "last-word", "news-val"}


def test_shard_chunks_go_round_robin():
    assert Shard(4, 0, 2).chunks(19) == [[0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18]]
    assert Shard(4, 1, 2).chunks(19) == [[4, 5, 6, 7], [12, 13, 14, 15]]
    assert Shard(4, 2, 3).chunks(6) == []  # more processes than chunks: nothing to read
    assert Shard(4).chunks(0) == [] and Shard(4).count(9) == 3


def test_one_process_gather_is_the_identity():
    local = torch.arange(6.0).reshape(3, 2)
    assert Shard(2).gather(local, [2, 1]) is local
    assert all_gather_rows(local)[0] is local


def test_a_one_process_cache_reads_in_chunks_of_the_set(open_clip_spec, image_data, tmp_path):
    # a skipped input shortens its chunk instead of shifting every later batch: the batches
    # are those a process of a torchrun launch reads, so the outputs are the same bits
    from wiseft.backbones import load_backbone
    from wiseft.data.folders import image_folder

    root = _broken_test_set(image_data, tmp_path / "test")
    ds = image_folder(root)
    ds.max_unreadable = 0.1
    backbone = load_backbone(open_clip_spec)
    cache = build_input_cache(ds, backbone, batch_size=4, progress=False)
    broken = [i for i, (ref, _) in enumerate(ds.samples) if str(ref).endswith("002b.jpg")]
    assert len(cache.index) == 18 and broken and broken[0] not in cache.index.tolist()
    expected = [4, 4, 4, 4, 3]  # 19 inputs
    expected[broken[0] // 4] -= 1
    assert [rows for _, _, rows, _ in cache.pieces(4)] == expected
    assert [rows for _, _, rows, _ in cache.pieces(6)] == [len([i for i in cache.index.tolist() if k * 6 <= i < k * 6 + 6])
                                                             for k in range(4)]
    encode = backbone.encoder.eval()
    whole = cache.outputs(encode, 4, torch.device("cpu"), "fp32")
    assert whole.shape[0] == 18
    assert torch.equal(cache.outputs(encode, 4, torch.device("cpu"), "fp32", limit=5), whole[:5])
    labels = torch.cat([y for _, y in cache.batches(4)])
    assert torch.equal(labels, cache.labels)


def test_an_empty_cache_has_no_chunks():
    cache = InputCache(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), [])
    assert list(cache.pieces(4)) == [] and cache.chunk_sizes(4).tolist() == []


@pytest.mark.slow  # a torchrun launch of the whole job, then one process
@needs_torchrun
def test_torchrun_wiseft_run_trains_and_sweeps_as_one_process(tiny_hf_clip_dir, image_data, tmp_path):
    # `torchrun -m wiseft run`: both processes fine-tune (DDP) and score their chunks; rank 0 writes.
    # A one-process rerun in the same directory reuses those weights, and its records are the same.
    spec = {"family": "hf_clip", "name": str(tiny_hf_clip_dir)}
    cfg = run_config(spec, image_data, tmp_path / "run", evaluation={"batch_size": 4},
                     finetune={"mode": "e2e", "lr": 1e-3, "batch_size": 8, "epochs": 1, "warmup_steps": 1})
    cfg["data"]["test"]["root"] = str(_broken_test_set(image_data, tmp_path / "test"))
    cfg["data"]["max_unreadable"] = 0.1
    cfg["alphas"] = [0.0, 0.5, 1.0]
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = _env(tmp_path)
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "wiseft", "run", str(cfg_path),
                          "--no-progress", "--no-report"], env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "8 = 4 per device x 2 devices x 1 accumulation" in two.stderr
    assert two.stdout.count("selected alpha") == 1  # rank 0 reports
    results = tmp_path / "run" / "results.jsonl"
    sharded = [json.loads(line) for line in results.read_text().splitlines()]
    one = subprocess.run([sys.executable, "-m", "wiseft", "run", str(cfg_path), "--no-progress", "--no-report"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    assert "finetuned: reusing" in one.stderr
    single = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(single) == 45 and sharded == single  # every record, every field
    assert any(r["dataset"] == "colors" and r["provenance"].get("skipped_inputs") == 1 for r in single)


def test_under_torchrun_only_rank_0_logs_progress(monkeypatch):
    import logging

    from wiseft.core import configure_logging

    logger = logging.getLogger("wiseft")
    before = logger.level
    try:
        for rank, level in (("1", logging.WARNING), ("0", logging.INFO)):
            monkeypatch.setenv("RANK", rank)
            configure_logging()
            assert logger.level == level
    finally:
        logger.setLevel(before)


MIXED = r'''
import sys
import torch
from wiseft.data.base import LabeledDataset
from wiseft.evaluation import EvalSet, sweep
from wiseft.heads import Classifier
from wiseft.runtime.distributed import DistributedError, init_distributed

info, _ = init_distributed("cpu")
torch.manual_seed(info.rank if sys.argv[1] == "weights" else 0)  # "weights": each process its own random model
model = Classifier(torch.nn.Linear(4, 4), torch.nn.Linear(4, 3))
theta = {k: v.clone() for k, v in model.state_dict().items()}
n = 8 + (info.rank if sys.argv[1] == "data" else 0)  # "data": rank 1 sees one input more
data = LabeledDataset([(torch.full((4,), float(i)), i % 3) for i in range(n)], ["a", "b", "c"], name="numbers")
backbone = type("B", (), {"transform_eval": staticmethod(lambda x: x), "collate": None})()
try:
    sweep(model, theta, theta, [EvalSet("numbers", "reference", data)], [0.0, 1.0], backbone)
except DistributedError as e:
    print(f"rank {info.rank}: {e}")
    sys.exit(3)
'''


@pytest.mark.slow  # two torchrun launches
@needs_torchrun
@pytest.mark.parametrize("differ, what", [("weights", "the weights swept (finetuned)"),
                                          ("data", "evaluation set 'numbers' (its inputs and labels)")])
def test_processes_that_hold_different_weights_or_data_stop_with_a_named_error(tmp_path, differ, what):
    # gathered rows from different models or different sets would be records of nothing
    script = tmp_path / "mixed.py"
    script.write_text(MIXED)
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), differ],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert f"rank 0: {what} differs between the processes of this torchrun launch (rank 0 and rank 1)" in proc.stdout


def test_processes_on_one_machine_share_its_memory_budget_and_cores(monkeypatch):
    # under torchrun, 'auto' caches in memory within half the available memory shared by the
    # launch's processes on this machine, and the default loader workers share its cores
    from wiseft.evaluation import cache as ev
    from wiseft.runtime.distributed import DistInfo

    monkeypatch.setattr(ev, "available_memory", lambda: 800)
    monkeypatch.setattr(ev, "current", lambda: DistInfo(0, 8, 0))
    monkeypatch.setattr("wiseft.runtime.distributed.current", lambda: DistInfo(0, 8, 0))
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    example = torch.zeros(10, dtype=torch.uint8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert ev._allocate(example, 40, "auto", None, None, "x")[1] is None  # 400 bytes: in memory within 400
    assert ev.loader_workers(None, 1000) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    data, path = ev._allocate(example, 40, "auto", None, None, "x")  # 400 bytes over 100: a file
    assert path is not None and data.shape == (40, 10)
    path.unlink()
    assert ev.loader_workers(None, 1000) == 4 and ev.loader_workers(3, 1000) == 3


def test_text_batches_are_read_in_the_chunks_they_were_collated_in():
    # text is cached as collated batches, one per decoded chunk: reading with another batch
    # size still pairs each batch with its own labels
    from types import SimpleNamespace

    from wiseft.data import LabeledDataset

    ds = LabeledDataset([(f"text {i}", i % 3) for i in range(10)], ["a", "b", "c"], name="texts")
    backbone = SimpleNamespace(transform_eval=lambda x: x,
                               collate=lambda rows: ([x for x, _ in rows], torch.tensor([y for _, y in rows])))
    cache = build_input_cache(ds, backbone, batch_size=4, progress=False)
    for size in (2, 4, 16):
        read = list(cache.batches(size))
        assert [len(x) for x, _ in read] == [4, 4, 2]
        assert torch.equal(torch.cat([y for _, y in read]), cache.labels)
        assert [x[0] for x, _ in read] == ["text 0", "text 4", "text 8"]


FEATURES = r'''
import sys
import torch
from wiseft.config.finetune import FinetuneConfig
from wiseft.data.base import LabeledDataset
from wiseft.runtime.distributed import init_distributed
from wiseft.train.engine import sharded_features
from wiseft.train.features import compute_features

info, _ = init_distributed("cpu")
torch.manual_seed(0)
encoder = torch.nn.Linear(4, 3)
data = LabeledDataset([(torch.randn(4, generator=torch.Generator().manual_seed(i)), i % 3) for i in range(7)],
                      ["a", "b", "c"], name="numbers")
backbone = type("B", (), {"transform_eval": staticmethod(lambda x: x),
                          "collate": staticmethod(lambda rows: (torch.stack([x for x, _ in rows]),
                                                                torch.tensor([y for _, y in rows])))})()
feats, labels = sharded_features(encoder, data, backbone, 2, FinetuneConfig(), progress=False)
ref_feats, ref_labels = compute_features(encoder, data, backbone, 2, progress=False)
assert torch.equal(labels, ref_labels), (labels, ref_labels)
torch.testing.assert_close(feats, ref_feats, rtol=1e-6, atol=1e-7)
print(f"rank {info.rank}: {len(labels)} rows, as one process")
'''


@pytest.mark.slow  # a torchrun launch
@needs_torchrun
def test_features_of_a_linear_fine_tune_are_gathered_in_order(tmp_path):
    # mode linear under torchrun: each process encodes every world-th example, the rows come back in order
    script = tmp_path / "features.py"
    script.write_text(FEATURES)
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0: 7 rows, as one process" in proc.stdout and "rank 1: 7 rows, as one process" in proc.stdout
