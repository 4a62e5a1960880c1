"""Contrastive fine-tuning on (query, caption) pairs (issue 27 items 2 and 6): CLIP's
symmetric InfoNCE, both towers and the learned logit scale trained, on tiny open_clip and
Hugging Face CLIP models with generated image-caption pairs and a tiny sentence encoder
on text pairs; the negatives of a torchrun launch are the global batch."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from wiseft.backbones import load_backbone
from wiseft.config import FinetuneConfig
from wiseft.data import LabeledDataset, PairDataset
from wiseft.train import TrainRun, finetune, flyp_model
from wiseft.train.contrastive import ContrastiveError, ContrastiveModel, PairCollate, contrastive_loss
from wiseft.train.data import IGNORE_LABEL

CLASSES = ["red", "green", "blue", "yellow"]
TEMPLATES = ["a photo of a {} square."]
COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
SHAPES = {"square": 28, "small square": 12}
RECIPE = dict(objective="contrastive", lr=3e-3, batch_size=8, epochs=6, warmup_steps=0, save_every_steps=None,
              precision="fp32", weight_decay=0.1)
LN_100 = math.log(100.0)
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def image_pairs() -> PairDataset:
    """Coloured squares of two sizes on grey, each with its caption ("a photo of a red small square")."""
    from PIL import Image

    samples = []
    for colour, rgb in COLOURS.items():
        for shape, side in SHAPES.items():
            img = Image.new("RGB", (40, 40), (128, 128, 128))
            img.paste(Image.new("RGB", (side, side), rgb), ((40 - side) // 2, (40 - side) // 2))
            samples.append((img, f"a photo of a {colour} {shape}"))
    return PairDataset(samples, name="squares", modality="image")


def text_pairs() -> PairDataset:
    heads = {"shares profit market": "business", "film music": "entertainment", "election minister vote": "politics",
             "match goal team": "sports", "phone software": "technology"}
    samples = [(q, f"the news article is about {topic}") for q, topic in heads.items()]
    samples += [(f"the {q}", f"a article of {topic}") for q, topic in heads.items()]
    return PairDataset(samples, name="headlines", modality="text")


def packed(q: torch.Tensor, c: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """What ContrastiveModel.forward gives for these (normalised) embeddings."""
    return torch.cat([q, c, log_scale.reshape(1, 1).expand(len(q), 1)], dim=1)


def by_hand(q: torch.Tensor, c: torch.Tensor, scale: float) -> float:
    """The symmetric InfoNCE summed over pairs, in float64 with explicit softmaxes."""
    s = scale * q.double() @ c.double().t()
    rows = -(s.diagonal() - s.exp().sum(1).log())
    cols = -(s.diagonal() - s.exp().sum(0).log())
    return float((rows.sum() + cols.sum()) / 2)


# -- the loss ----------------------------------------------------------------------------------
def test_loss_is_clips_symmetric_infonce_by_hand_and_learns_its_temperature():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(4, 3, generator=g), dim=-1)
    log_scale = torch.tensor(math.log(10.0), requires_grad=True)
    loss = contrastive_loss(packed(q, c, log_scale), torch.zeros(4, dtype=torch.long))
    assert loss.item() == pytest.approx(by_hand(q, c, 10.0), rel=1e-6)
    swapped = contrastive_loss(packed(c, q, log_scale), torch.zeros(4, dtype=torch.long))
    assert swapped.item() == pytest.approx(loss.item(), rel=1e-6)  # symmetric in queries and captions
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0  # the temperature is learned
    # perfectly matched pairs: a higher scale lowers the loss, so its gradient is negative
    eye = torch.eye(3)
    s = torch.tensor(1.0, requires_grad=True)
    contrastive_loss(packed(eye, eye, s), torch.zeros(3, dtype=torch.long)).backward()
    assert s.grad < 0


def test_placeholders_are_neither_pairs_nor_negatives():
    g = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(5, 3, generator=g), dim=-1)
    s = torch.tensor(1.5)
    labels = torch.tensor([0, IGNORE_LABEL, 0, 0, IGNORE_LABEL])
    keep = labels == 0
    assert contrastive_loss(packed(q, c, s), labels).item() == pytest.approx(by_hand(q[keep], c[keep], s.exp()),
                                                                            rel=1e-6)
    q.requires_grad_(True)
    none = contrastive_loss(packed(q, c, s), torch.full((5,), IGNORE_LABEL))
    none.backward()
    assert none.item() == 0.0 and torch.equal(q.grad, torch.zeros_like(q))  # in the graph, adding nothing


def test_pair_collate_tokenises_captions_and_marks_placeholders(open_clip_spec):
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    pairs = image_pairs().with_transform(backbone.transform_eval)
    batch = [pairs[0], pairs[1], (pairs[2][0], IGNORE_LABEL)]
    inputs, labels = PairCollate(backbone.collate, model.tokenize)(batch)
    assert inputs["inputs"].shape[0] == 3 and inputs["prompts"].shape[0] == 3
    assert labels.tolist() == [0, 0, IGNORE_LABEL]
    assert torch.equal(inputs["prompts"][:2], model.tokenize([pairs[0][1], pairs[1][1]]))


# -- training on each backbone family -----------------------------------------------------------
def _train_and_check(backbone, pairs: PairDataset, tmp_path: Path, **recipe) -> None:
    """A few steps: the loss goes down, both towers (one shared encoder for a text backbone) and
    the logit scale change, the scale stays <= 100, the head is the trained text tower's."""
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    log = tmp_path / "train.jsonl"
    tuned = finetune(model, pairs, backbone, FinetuneConfig(**{**RECIPE, **recipe}),
                     TrainRun(log_path=log, progress=False))
    after = tuned.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.") for k in changed)
    if tuned.text is not None:
        assert any(k.startswith("text.") for k in changed)
    assert "logit_scale" in changed and "head.weight" in changed
    assert after["logit_scale"] <= LN_100
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()]
    assert all(math.isfinite(x) for x in losses)
    per_epoch = len(losses) // RECIPE["epochs"]
    first, last = sum(losses[:per_epoch]), sum(losses[-per_epoch:])
    assert last < first, losses
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the input is untouched
    with torch.no_grad():  # the head: the trained text tower's zero-shot head at the trained scale
        from wiseft.heads import zeroshot_weights

        tower = tuned.text_tower().eval()
        ref = zeroshot_weights(lambda p: tower(tuned.tokenize(list(p))), CLASSES, TEMPLATES)
    torch.testing.assert_close(tuned.head.weight, ref * after["logit_scale"].exp(), rtol=1e-5, atol=1e-5)


def test_open_clip_trains_both_towers_on_image_caption_pairs(open_clip_spec, tmp_path):
    _train_and_check(load_backbone(open_clip_spec), image_pairs(), tmp_path)


def test_hf_clip_trains_both_towers_on_image_caption_pairs(tiny_hf_clip_dir, tmp_path):
    _train_and_check(load_backbone({"family": "hf_clip", "name": str(tiny_hf_clip_dir)}), image_pairs(), tmp_path)


def test_sentence_encoder_trains_on_text_pairs(tiny_bert_dir, tmp_path):
    backbone = load_backbone({"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16})
    _train_and_check(backbone, text_pairs(), tmp_path, batch_size=5)


def test_logit_scale_is_clamped_into_1_to_100_after_every_optimizer_step(open_clip_spec):
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    towers = ContrastiveModel(model)
    for start, clamped in [(5.0, LN_100), (-0.5, 0.0), (2.0, 2.0)]:
        with torch.no_grad():
            model.logit_scale.fill_(start)
        towers.clamp_logit_scale()
        assert model.logit_scale.item() == pytest.approx(clamped)  # shared: the classifier's own parameter
    with torch.no_grad():
        model.logit_scale.fill_(LN_100)  # a pretrained CLIP's scale sits at the cap
    seen = []
    real = ContrastiveModel.clamp_logit_scale

    def spy(self):
        before = self.logit_scale.item()
        real(self)
        seen.append((before, self.logit_scale.item()))

    ContrastiveModel.clamp_logit_scale = spy
    try:
        finetune(model, image_pairs(), backbone, FinetuneConfig(**{**RECIPE, "batch_size": 4, "epochs": 2}),
                 TrainRun(progress=False))
    finally:
        ContrastiveModel.clamp_logit_scale = real
    assert len(seen) == 4  # after each optimizer step: 8 pairs, batch 4, 2 epochs
    assert all(after <= LN_100 and after == min(before, LN_100) for before, after in seen)


# -- errors ---------------------------------------------------------------------------------------
def test_config_errors_name_the_field():
    with pytest.raises(ValidationError, match="objective: contrastive .*mode: e2e, not mode: 'linear'"):
        FinetuneConfig(objective="contrastive", mode="linear")
    with pytest.raises(ValidationError, match="shots_per_class: applies to class labels"):
        FinetuneConfig(objective="contrastive", shots_per_class=4)
    with pytest.raises(ValidationError, match="label_smoothing: applies to class labels"):
        FinetuneConfig(objective="contrastive", label_smoothing=0.1)
    assert FinetuneConfig(objective="contrastive").model_dump()["objective"] == "contrastive"
    assert "objective" not in FinetuneConfig().model_dump()


def test_training_set_must_match_the_objective(open_clip_spec, tiny_bert_dir):
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    labelled = LabeledDataset([(img, 0) for img, _ in image_pairs().samples], CLASSES)
    with pytest.raises(ContrastiveError, match="pairs .*not a LabeledDataset"):
        finetune(model, labelled, backbone, FinetuneConfig(**RECIPE), TrainRun(progress=False))
    for objective in ("ce", "flyp"):
        with pytest.raises(ContrastiveError, match=f"objective {objective} needs class labels.*'squares'"):
            finetune(model, image_pairs(), backbone, FinetuneConfig(**{**RECIPE, "objective": objective}),
                     TrainRun(progress=False))
    with pytest.raises(ContrastiveError, match="queries are texts .*encodes images"):
        finetune(model, text_pairs(), backbone, FinetuneConfig(**RECIPE), TrainRun(progress=False))
    from wiseft.heads import build_zeroshot_model
    from wiseft.train.flyp import FlypError

    plain = build_zeroshot_model(backbone, CLASSES, TEMPLATES, cache=False)
    with pytest.raises(FlypError, match="objective contrastive trains a PromptClassifier"):
        finetune(plain, image_pairs(), backbone, FinetuneConfig(**RECIPE), TrainRun(progress=False))


# -- torchrun: the negatives are the global batch ------------------------------------------------
GLOO_SCRIPT = r'''
import json, math, os, sys
import torch, torch.distributed as dist
from wiseft.runtime import current
from wiseft.train.contrastive import contrastive_loss, unpack
from wiseft.train.data import IGNORE_LABEL
from wiseft.train.flyp import flyp_loss

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()


class Towers(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder, self.text = torch.nn.Linear(6, 4), torch.nn.Linear(5, 4)
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(7.0)))

    def forward(self, x):
        q = torch.nn.functional.normalize(self.encoder(x["q"]), dim=-1)
        c = torch.nn.functional.normalize(self.text(x["c"]), dim=-1)
        return torch.cat([q, c, self.logit_scale.reshape(1, 1).expand(len(q), 1)], 1)


g = torch.Generator().manual_seed(1)
Q, C = torch.randn(7, 6, generator=g, dtype=torch.float64), torch.randn(7, 5, generator=g, dtype=torch.float64)
# (this rank's rows, whether it holds a placeholder instead): uneven, and one rank with none
cases = {"even": ([[0, 1, 2], [3, 4, 5]], 6), "uneven": ([[0, 1, 2, 3], [4, 5, 6]], 7),
         "placeholder": ([[0, 1, 2], []], 3)}
out = {}
for name, (split, total) in cases.items():
    model = Towers().double()
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    rows = split[rank]
    ph = not rows
    idx = rows or [0]
    labels = torch.full((len(idx),), IGNORE_LABEL) if ph else torch.zeros(len(idx), dtype=torch.long)
    weight = 0.0 if ph else world / total  # the loop's per-sample weight (0: a placeholder)
    loss = contrastive_loss(ddp({"q": Q[idx], "c": C[idx]}), labels) * weight
    loss.backward()
    summed = loss.detach().clone()
    dist.all_reduce(summed)
    out[name] = {"loss": summed.item() / world, "grads": {n: p.grad.tolist() for n, p in model.named_parameters()}}
    # one process, the whole global batch, weight 1/total (the InfoNCE of its logits, no gathering)
    one = Towers().double()
    all_rows = sorted(split[0] + split[1])
    q, c, log_scale = unpack(one({"q": Q[all_rows], "c": C[all_rows]}))
    ref = flyp_loss(log_scale.exp() * q @ c.t())
    (ref / total).backward()
    out[name]["one_loss"] = ref.item() / total
    out[name]["one_grads"] = {n: p.grad.tolist() for n, p in one.named_parameters()}
if rank == 0:
    print("RESULT " + json.dumps(out))
dist.destroy_process_group()
'''


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
@pytest.mark.slow  # two torchrun processes
def test_two_gloo_processes_give_one_process_loss_and_gradients_on_the_global_batch(tmp_path):
    script = tmp_path / "gloo.py"
    script.write_text(GLOO_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RANK", None)
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    for name, r in result.items():
        assert r["loss"] == pytest.approx(r["one_loss"], rel=1e-12), name
        for p, grad in r["grads"].items():  # after DDP's averaging
            torch.testing.assert_close(torch.tensor(grad), torch.tensor(r["one_grads"][p]), rtol=1e-10,
                                       atol=1e-12, msg=f"{name}: {p}")


TRAIN_SCRIPT = r'''
import json, os, sys
import open_clip
open_clip.add_model_config(os.environ["OC_DIR"])
sys.path.insert(0, os.environ["TESTS_DIR"])
from safetensors.torch import save_file
from test_contrastive import CLASSES, TEMPLATES, image_pairs
from wiseft.backbones import load_backbone
from wiseft.config import FinetuneConfig
from wiseft.runtime import init_distributed
from wiseft.train import TrainRun, finetune, flyp_model

info, _ = init_distributed("cpu")
backbone = load_backbone(json.loads(os.environ["SPEC"]))
model = flyp_model(backbone, CLASSES, TEMPLATES)
cfg = FinetuneConfig(**json.loads(os.environ["RECIPE"]))
tuned = finetune(model, image_pairs().subset(range(7)), backbone, cfg, TrainRun(progress=False))
if info.main:
    save_file({k: v.contiguous() for k, v in tuned.state_dict().items()}, os.environ["OUT"])
'''


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
@pytest.mark.slow  # a torchrun launch and a one-process run
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_fine_tune_reaches_one_process_weights_on_the_same_global_batches(open_clip_spec, tmp_path,
                                                                                  parallel):
    """Through the training loop: 7 pairs in global batches of 6 (3 per process), then of 1
    (the second process holds a placeholder), two epochs, logit scale clamped: the weights of
    two gloo DDP processes equal one process's with the whole global batch in one forward
    pass. FSDP is refused with a clear error (it cannot shard the 0-dim logit scale)."""
    from conftest import TINY_CONFIG, TINY_OPEN_CLIP
    from safetensors.torch import load_file

    (tmp_path / "oc").mkdir()
    (tmp_path / "oc" / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(TINY_CONFIG))
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    recipe = {**RECIPE, "batch_size": 6, "epochs": 2, "warmup_steps": 1, "lr": 1e-3, "parallel": parallel}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OC_DIR": str(tmp_path / "oc"), "SPEC": json.dumps(open_clip_spec),
           "TESTS_DIR": str(Path(__file__).parent), "WISEFT_CACHE": str(tmp_path / "cache")}
    env.pop("RANK", None)
    for name, launch in [("two", [TORCHRUN, "--standalone", "--nproc_per_node", "2"]), ("one", [sys.executable])]:
        proc = subprocess.run([*launch, str(script)], env={**env, "RECIPE": json.dumps(recipe),
                                                           "OUT": str(tmp_path / f"{name}.safetensors")},
                              capture_output=True, text=True, timeout=300)
        if parallel == "fsdp":  # FSDP2 refuses the 0-dim logit scale: a clear error, before any step
            assert proc.returncode != 0 and "needs parallel: ddp: FSDP cannot shard the learned logit scale" \
                in proc.stderr, proc.stderr[-3000:]
            return
        assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    for k in one:
        a, b = two[k], one[k]
        if k.endswith("attn.in_proj_bias"):  # the key bias: zero true gradient, Adam amplifies rounding noise
            third = a.numel() // 3
            a, b = torch.cat([a[:third], a[2 * third:]]), torch.cat([b[:third], b[2 * third:]])
        # the same to rounding: a near-zero gradient's rounding noise becomes an lr-sized Adam step,
        # so the tolerance is set by the tensor's scale (measured: 1e-5 at most, of weights of 0.1 to 8)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4 * float(b.abs().max()) + 1e-7, msg=k)


def backbone_scale(spec: dict) -> float:
    return load_backbone(spec).logit_scale


def test_the_bbc_pairs_example_validates():
    from wiseft.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "bbc_pairs.yaml")
    assert cfg.finetune.objective == "contrastive" and cfg.finetune.mode == "e2e"
    assert cfg.data.train["view"] == cfg.data.test["view"] == "pairs"
    assert {s["view"] for s in cfg.data.shifts.values()} == {"article", "headline"}
    assert cfg.finetune.precision == cfg.evaluation.precision == "fp32"


def test_the_time_estimate_times_pair_sets(open_clip_spec, tiny_bert_dir):
    """The plan's estimate times a training step and an evaluation batch of a pair set (its
    queries and its captions), where it used to give up on the captions."""
    from wiseft.heads import build_zeroshot_model
    from wiseft.pipeline.estimate import _eval_seconds, _train_seconds

    text = load_backbone({"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16})
    for backbone, pairs in [(load_backbone(open_clip_spec), image_pairs()), (text, text_pairs())]:
        model = build_zeroshot_model(backbone, CLASSES, TEMPLATES, cache=False)
        theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
        assert _train_seconds(model, theta_0, pairs, backbone, "fp32", 8) > 0
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in theta_0.items())
        forward, decode = _eval_seconds(model, pairs, backbone, "fp32")
        assert forward > 0 and decode >= 0


def test_a_resumed_contrastive_fine_tune_ends_where_an_uninterrupted_one_does(open_clip_spec, tmp_path):
    """Resuming from a mid-run checkpoint (optimizer, RNG, the clamped logit scale) repeats the
    uninterrupted run bit for bit."""
    backbone = load_backbone(open_clip_spec)
    model = flyp_model(backbone, CLASSES, TEMPLATES)
    cfg = FinetuneConfig(**{**RECIPE, "batch_size": 4, "epochs": 2, "save_every_steps": 1, "keep_last": 10})
    straight = finetune(model, image_pairs(), backbone, cfg, TrainRun(checkpoint_dir=tmp_path / "a", progress=False))
    middle = sorted((tmp_path / "a" / "contrastive").glob("*step_00000003.pt"))
    assert len(middle) == 1
    resumed = finetune(model, image_pairs(), backbone, cfg,
                       TrainRun(checkpoint_dir=tmp_path / "b", resume=middle[0], progress=False))
    written = sorted(p.name for p in (tmp_path / "b" / "contrastive").glob("*.pt"))
    assert written == ["epoch_002_step_00000004.pt"]  # it went on from step 3, not from the start
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
