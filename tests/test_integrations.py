"""wiseft.integrations: a real Hugging Face ``Trainer.train()`` and a real Lightning
``Trainer.fit()`` with the callback, and ``wiseft.track`` in a hand-written loop, write the
records ``wiseft run`` writes on the same fine-tune (same weights in, same records out);
under DDP only rank 0 writes; a plain module with an evaluation function; the errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import run_config

import wiseft
from wiseft.integrations import IntegrationError
from wiseft.io import load_state, read_records

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def values(records) -> dict:
    return {(r.model, r.alpha, r.dataset, r.metric): r.value for r in records}


def eval_config(spec: dict, image_data: Path, out: Path) -> dict:
    """The run's config: the tiny colour sets, three alphas."""
    return run_config(spec, image_data, out, alphas=[0.0, 0.5, 1.0])


def same_as_wiseft_run(out: Path, records, tmp_path: Path) -> None:
    """``wiseft run`` on the callback's config, with its fine-tuned weights (the checkpoint the
    callback left where ``wiseft run`` reuses a finished fine-tune), writes the same records."""
    cfg = wiseft.load_config(out / "config.yaml", {"output_dir": str(tmp_path / "wiseft_run")})
    (tmp_path / "wiseft_run" / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "checkpoints" / "finetuned.safetensors", tmp_path / "wiseft_run" / "checkpoints")
    result = wiseft.run(cfg, progress=False)
    assert values(result.records) == values(records)
    assert values(read_records(out)) == values(records)


def clip_batches(model_dir: Path, image_data: Path, n: int = 12) -> list[dict]:
    """(image, caption) examples of the colour training set as CLIPModel takes them."""
    from PIL import Image
    from transformers import CLIPProcessor

    processor = CLIPProcessor.from_pretrained(model_dir)
    files = sorted((image_data / "train").glob("*/*.png"))[::3][:n]
    out = []
    for f in files:
        enc = processor(text=[f"a photo of a {f.parent.name}."], images=Image.open(f), return_tensors="pt",
                        padding="max_length", max_length=16, truncation=True)
        out.append({k: v[0] for k, v in enc.items()})
    return out


def collate(items: list[dict]) -> dict:
    return {**{k: torch.stack([i[k] for i in items]) for k in items[0]}, "return_loss": True}


def test_trainer_train_writes_the_records_wiseft_run_writes(tiny_hf_clip_dir, image_data, tmp_path):
    from transformers import CLIPModel, Trainer, TrainingArguments

    from wiseft.integrations.transformers import WiseftCallback

    model = CLIPModel.from_pretrained(tiny_hf_clip_dir)
    spec = {"family": "hf_clip", "name": str(tiny_hf_clip_dir)}
    out = tmp_path / "run"
    callback = WiseftCallback(eval_config(spec, image_data, out))
    args = TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=3, per_device_train_batch_size=4,
                             learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no",
                             logging_strategy="no", remove_unused_columns=False, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=clip_batches(tiny_hf_clip_dir, image_data),
                      data_collator=collate, callbacks=[callback])
    trainer.train()
    result = callback.result
    assert {"results.jsonl", "summary.md", "config.yaml", "export", "report"} <= {
        p.name for p in out.iterdir()}
    assert set(result.selected_alpha) == {"finetuned"}
    theta_1 = load_state(out / "checkpoints" / "finetuned.safetensors")
    # the user's model is left as trained (not at the last alpha swept)
    vision = {k[len("encoder.vision_model."):]: v for k, v in theta_1.items() if k.startswith("encoder.vision_model.")}
    assert all(torch.equal(v, model.vision_model.state_dict()[k]) for k, v in vision.items())
    assert not torch.equal(theta_1["encoder.vision_model.post_layernorm.weight"],
                           CLIPModel.from_pretrained(tiny_hf_clip_dir).vision_model.post_layernorm.weight)
    same_as_wiseft_run(out, result.records, tmp_path)


class _LitCE:
    """A LightningModule training wiseft's Classifier (encoder + zero-shot head) with cross-entropy."""

    @staticmethod
    def build(classifier):
        import lightning

        class Lit(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.classifier = classifier

            def training_step(self, batch, _):
                x, y = batch
                return torch.nn.functional.cross_entropy(self.classifier(x), y)

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.05)

        return Lit()


def test_lightning_fit_writes_the_records_wiseft_run_writes(open_clip_spec, image_data, tmp_path):
    import lightning

    from wiseft.integrations.lightning import WiseftCallback
    from wiseft.pipeline import prepare_data

    out = tmp_path / "run"
    config = eval_config(open_clip_spec, image_data, out)
    backbone = wiseft.load_backbone(open_clip_spec)
    data = prepare_data(wiseft.RunConfig.model_validate(config))
    classifier = wiseft.build_zeroshot_model(backbone, data.classnames, data.templates)
    loader = torch.utils.data.DataLoader(_Transformed(data.train, backbone.transform_eval), batch_size=8,
                                         collate_fn=backbone.collate, shuffle=False)
    callback = WiseftCallback(config, backbone=backbone)
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_steps=3, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                callbacks=[callback])
    trainer.fit(_LitCE.build(classifier), loader)
    result = callback.result
    assert (out / "report" / "index.html").exists() and (out / "export" / "wiseft.json").exists()
    same_as_wiseft_run(out, result.records, tmp_path)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, ds, transform):
        self.ds, self.transform = ds, transform

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        x, y = self.ds[i]
        return self.transform(x), y


def test_track_in_a_hand_written_loop(tiny_hf_clip_dir, image_data, tmp_path):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(tiny_hf_clip_dir)
    batch = collate(clip_batches(tiny_hf_clip_dir, image_data, n=6))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = tmp_path / "run"
    with wiseft.track(model, eval_config({"family": "hf_clip", "name": str(tiny_hf_clip_dir)}, image_data, out)) as t:
        for _ in range(2):
            model.train()
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        t.epoch_end(1)
        result = t.finish()
    models = {r.model for r in result.records}
    assert {"finetuned", "finetuned-epoch1"} <= models
    assert values(read_records(out)) == values(result.records)
    assert model.training  # its modes as they were


def test_plain_module_with_an_evaluation_function(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    model = torch.nn.Linear(4, 2)

    def evaluate(m):
        acc = lambda xs, ys: (m(xs).argmax(1) == ys).float().mean().item()  # noqa: E731
        return {"toy": {"top1": acc(x[:32], y[:32])}, "toy-val": {"top1": acc(x[32:], y[32:])}}

    with wiseft.track(model, evaluate=evaluate, output_dir=tmp_path / "run", alphas=[0, 0.5, 1]) as t:
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        for _ in range(20):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        result = t.finish()
    recs = read_records(tmp_path / "run")
    assert {(r.alpha, r.dataset, r.role) for r in recs} == {(a, d, role) for a in (0.0, 0.5, 1.0)
                                                            for d, role in (("toy", "reference"),
                                                                            ("toy-val", "validation"))}
    assert result.selected_alpha["finetuned"] in (0.0, 0.5, 1.0)
    assert (tmp_path / "run" / "summary.md").exists()
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()


def test_a_state_dict_not_matching_theta_0_names_the_key(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 2))
    other = tmp_path / "other.safetensors"
    from wiseft.io import save_state

    save_state(other, {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(3)})
    t = wiseft.track(model, evaluate=lambda m: {}, output_dir=tmp_path / "run", pretrained=other)
    with pytest.raises(IntegrationError, match=r"'0.bias' is \(2,\) in the model but \(3,\)"):
        t.start()
    save_state(other, {"0.weight": torch.zeros(2, 4), "1.bias": torch.zeros(2)})
    t = wiseft.track(model, evaluate=lambda m: {}, output_dir=tmp_path / "run2", pretrained=other)
    with pytest.raises(IntegrationError, match="'0.bias'"):
        t.start()


def test_a_model_wiseft_cannot_wrap_says_what_to_pass(tmp_path, image_data, open_clip_spec):
    with pytest.raises(IntegrationError, match="evaluate="):
        wiseft.track(torch.nn.Linear(2, 2), {"data": eval_config(open_clip_spec, image_data, tmp_path)["data"]})


@pytest.mark.parametrize("module, extra", [("transformers", "trainer"), ("lightning", "lightning")])
def test_a_missing_framework_names_the_extra(module, extra):
    code = textwrap.dedent(f"""
        import sys
        sys.modules[{module!r}] = None  # not installed
        try:
            import wiseft.integrations.{module}
        except ImportError as e:
            print(e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")}).stdout
    assert f"pip install 'wiseft[{extra}]'" in out


def test_importing_wiseft_imports_no_framework():
    # the front doors load nothing heavy; wiseft.track itself loads torch, never a framework
    code = ("import sys, wiseft, wiseft.integrations; heavy = lambda: [m for m in ('transformers', 'lightning', "
            "'torch') if m in sys.modules]; print(heavy()); wiseft.track; print(heavy())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert out.stdout.split("\n")[:2] == ["[]", "['torch']"], out.stderr[-2000:]


DDP_SCRIPT = r'''
import os, sys
import torch
from transformers import CLIPModel
import wiseft
from wiseft.runtime import init_distributed
sys.path.insert(0, sys.argv[3])
from test_integrations import clip_batches, collate, eval_config
from pathlib import Path

info, _ = init_distributed("cpu")
model_dir, image_data = Path(sys.argv[1]), Path(sys.argv[4])
model = CLIPModel.from_pretrained(model_dir)
ddp = torch.nn.parallel.DistributedDataParallel(model)
batch = collate(clip_batches(model_dir, image_data, n=8)[info.rank::2])
out = Path(sys.argv[2]) / f"rank{info.rank}"  # each process names its own folder: only rank 0's may appear
opt = torch.optim.SGD(ddp.parameters(), lr=1e-2)
with wiseft.track(model, eval_config({"family": "hf_clip", "name": str(model_dir)}, image_data, out)) as t:
    for _ in range(2):
        ddp(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    result = t.finish()
print(f"rank {info.rank}: {len(result.records)} records, alpha {result.selected_alpha}")
'''


@pytest.mark.slow  # a torchrun launch of two gloo processes
@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
def test_under_ddp_only_rank_0_writes(tiny_hf_clip_dir, image_data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
           "OMP_NUM_THREADS": "1", "WISEFT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script), str(tiny_hf_clip_dir),
                           str(tmp_path), str(ROOT / "tests"), str(image_data)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (tmp_path / "rank0" / "results.jsonl").exists() and (tmp_path / "rank0" / "report" / "index.html").exists()
    assert not (tmp_path / "rank1").exists()  # rank 1 swept its shard and wrote nothing
    assert "rank 1:" in proc.stdout and "rank 0:" in proc.stdout


def _text_config(tiny_bert_dir: Path, tmp_path: Path) -> dict:
    rows = [("the shares market profit", "business"), ("the film music", "entertainment"),
            ("the election vote", "politics"), ("the match goal team", "sports"), ("the phone software", "technology")]
    (tmp_path / "train.csv").write_text("text,label\n" + "\n".join(f"{t},{y}" for t, y in rows * 4) + "\n")
    (tmp_path / "heads.csv").write_text("text,label\n" + "\n".join(f"{t.split()[-1]},{y}" for t, y in rows) + "\n")
    return {"backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
            "data": {"name": "news", "templates": "news", "train": {"kind": "manifest", "path": str(tmp_path / "train.csv")},
                     "test": {"kind": "manifest", "path": str(tmp_path / "train.csv")},
                     "shifts": {"last-word": {"kind": "manifest", "path": str(tmp_path / "heads.csv")}},
                     "validation_fraction": 0.25},
            "alphas": [0.0, 0.5, 1.0], "output_dir": str(tmp_path / "run"), "device": "cpu"}


@pytest.mark.parametrize("family", ["open_clip", "siglip", "sentence_transformer"])
def test_each_family_in_memory_gives_the_records_of_wiseft_run(family, request, image_data, tmp_path):
    """A family's model as its own library loads it, changed while tracked (a stand-in for
    training), then swept: the records of ``wiseft run`` on the same weights."""
    if family == "open_clip":
        import open_clip

        spec = request.getfixturevalue("open_clip_spec")
        model = open_clip.create_model(spec["name"], pretrained=spec["pretrained"])
        config = eval_config(spec, image_data, tmp_path / "run")
    elif family == "siglip":
        from transformers import SiglipModel

        d = request.getfixturevalue("tiny_hf_siglip_dir")
        model = SiglipModel.from_pretrained(d)
        config = eval_config({"family": "hf_clip", "name": str(d)}, image_data, tmp_path / "run")
    else:
        from sentence_transformers import SentenceTransformer

        d = request.getfixturevalue("tiny_bert_dir")
        model = SentenceTransformer(str(d), device="cpu")
        config = _text_config(d, tmp_path)
    g = torch.Generator().manual_seed(0)
    with wiseft.track(model, config, export=False, report=False) as t:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=g))
        result = t.finish()
    assert {r.model for r in result.records} >= {"finetuned"}
    same_as_wiseft_run(tmp_path / "run", result.records, tmp_path)


def test_theta_0_from_a_named_pretrained_source(tiny_hf_clip_dir, image_data, tmp_path):
    """``pretrained=``: theta_0 is the spec's model, not the model as tracking starts (here
    already changed): the records are still ``wiseft run``'s, whose theta_0 is the spec's."""
    from transformers import CLIPModel

    spec = {"family": "hf_clip", "name": str(tiny_hf_clip_dir)}
    model = CLIPModel.from_pretrained(tiny_hf_clip_dir)
    with torch.no_grad():
        model.vision_model.post_layernorm.weight.mul_(1.5)  # trained before tracking began
    with wiseft.track(model, eval_config(spec, image_data, tmp_path / "run"), pretrained=spec, export=False,
                      report=False) as t:
        result = t.finish()
    pretrained = CLIPModel.from_pretrained(tiny_hf_clip_dir).vision_model.post_layernorm.weight
    assert torch.equal(t.theta_0["encoder.vision_model.post_layernorm.weight"], pretrained)
    same_as_wiseft_run(tmp_path / "run", result.records, tmp_path)


def test_a_model_of_a_library_but_no_family_says_what_to_pass(tiny_bert_dir, image_data, tmp_path, open_clip_spec):
    from transformers import BertModel

    with pytest.raises(IntegrationError, match=r"BertModel as a hf_clip model.*evaluate="):
        wiseft.track(BertModel.from_pretrained(tiny_bert_dir),
                     {"data": eval_config(open_clip_spec, image_data, tmp_path)["data"]})
