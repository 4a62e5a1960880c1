"""Training throughput and peak memory: wiseft's loop against a plain loop.

The plain loop is written the way the reference WiSE-FT implementation trains: a
shuffled DataLoader, fp32, per-step cosine lr, cross-entropy, backward, gradient
clipping at 1.0, AdamW step (torch's default implementation), no compile. wiseft's loop
runs on the same data, batch and steps through ``wiseft.train.Trainer`` (global-batch
plan, per-sample seeding when the data is random, fused AdamW, metrics every step).
``plain+fused`` is the plain loop with ``AdamW(fused=True)``, to show what the optimizer
kernel alone is worth. Rows with data ``flip`` apply a random horizontal flip to every
sample (drawn from torch's RNG, so wiseft seeds each sample for exact resume); ``fixed``
data draws nothing.

Separate processes on a shared VM differ in speed by up to 25%, and the machine has
slow spells lasting seconds, which would swamp the differences measured here. So every
configuration is compared with the plain fp32 loop on the same data **step by step**:
both train their own copy of the same randomly initialised model in one process, taking
turns, one optimizer step each (the plain loop's step runs inside wiseft's metrics
callback), and each pair of steps gives a ratio of step times. A configuration's
throughput is the batch over its median step time (median over rounds); its ratio is the
median over every pair of steps, with a distribution-free 95% interval. Peak memory comes
from a separate process per configuration (max RSS on CPU, ``max_memory_allocated`` on
GPU); MFU (GPU only) counts training FLOPs as 3x the forward pass.

    python benchmarks/train.py                       # CPU: tiny model and ViT-B/32
    python benchmarks/train.py --device cuda --batch 256 --steps 20

``--lora`` compares LoRA fine-tuning (``finetune.mode: lora``: peft adapters with the
family's default targets, rank 8, and the full head) with end-to-end on a randomly
initialised ViT-B/32 and on MiniLM (all-MiniLM-L6-v2), the same way: the two train their
own copy in one process, taking turns step by step, and their ratio of step times is the
median over the pairs; peak memory comes from one process per mode.

    python benchmarks/train.py --lora                # CPU: ViT-B/32 (batch 16) and MiniLM (batch 32)
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Iterator

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu import count_flops, peak_tflops  # noqa: E402

TINY = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16,
                                         "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
MODELS = {"tiny": ("wiseft-bench-tiny", 32), "vit-b-32": ("ViT-B-32", 224)}
# dense bf16 peak FLOP/s for model FLOPs utilisation


def build_model(name: str, num_classes: int = 1000) -> tuple[torch.nn.Module, int]:
    """A randomly initialised open_clip image tower with a linear head, and its input size."""
    import open_clip

    from wiseft.heads import Classifier

    arch, size = MODELS[name]
    if name == "tiny":
        open_clip.factory._MODEL_CONFIGS[arch] = TINY
    torch.manual_seed(0)
    clip = open_clip.create_model(arch, pretrained=None)
    dim = clip.visual.output_dim
    return Classifier(clip.visual, torch.nn.Linear(dim, num_classes)), size


class Images(torch.utils.data.Dataset):
    def __init__(self, n: int, size: int, num_classes: int = 1000, flip: bool = False):
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.flip and torch.rand(()) < 0.5:  # a random transform, drawing from torch's RNG
            x = x.flip(-1)
        return x, int(self.y[i])


def plain_steps(model, data, batch: int, steps: int, device, fused: bool = False) -> Iterator[None]:
    """The reference-style loop, one optimizer step per ``next()``."""
    from wiseft.train import cosine_lr

    loader = torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-5, weight_decay=0.1, fused=fused or None)
    model.train()
    for i, (x, y) in enumerate(loader):
        for g in opt.param_groups:
            g["lr"] = cosine_lr(i, 3e-5, 2, steps)
        opt.zero_grad()
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        _sync(device)
        yield


class _TakeTurns:
    """Stands in for wiseft's metrics log (written after every step): records the time of
    the step just done, then runs one step of the partner loop and records that."""

    def __init__(self, partner: Iterator[None] | None, device):
        self.partner, self.device = partner, device
        self.own: list[float] = []
        self.other: list[float] = []
        self.last = time.perf_counter()

    def write(self, **row):
        _sync(self.device)
        now = time.perf_counter()
        self.own.append(now - self.last)
        if self.partner is not None:
            next(self.partner)
            self.last = time.perf_counter()
            self.other.append(self.last - now)
        else:
            self.last = now

    def truncate(self, *a):
        pass

    def close(self):
        pass


def wiseft_loop(model, data, batch: int, steps: int, device, precision: str, metrics) -> None:
    from wiseft.backbones.base import image_collate
    from wiseft.train import Stage, Trainer
    from wiseft.train.engine import FinetuneConfig

    cfg = FinetuneConfig(batch_size=batch, epochs=1, warmup_steps=2, precision=precision, save_every_steps=None)
    assert -(-len(data) // batch) == steps
    Trainer(model, data, image_collate, cfg, Stage("bench", 1, 3e-5), metrics=metrics, progress=False).fit()


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_config(model, size: int, spec: dict, device, paired: bool = True) -> tuple[list[float], list[float]]:
    """One run of ``spec`` on a fresh copy of ``model``, taking turns step by step with the
    plain fp32 loop on the same data (on another fresh copy) unless ``paired`` is false:
    (this configuration's step times, the plain loop's), warm-up steps dropped."""
    warm, steps, batch = spec["warmup"], spec["steps"] + spec["warmup"], spec["batch"]
    data = Images(batch * steps, size, flip=spec["data"] == "flip")
    partner = plain_steps(copy.deepcopy(model), data, batch, steps, device) if paired else None
    clock = _TakeTurns(partner, device)
    own = copy.deepcopy(model)
    if spec["loop"] == "wiseft":
        wiseft_loop(own, data, batch, steps, device, spec["precision"], clock)
    else:
        for _ in plain_steps(own, data, batch, steps, device, fused=spec["loop"] == "plain+fused"):
            clock.write()
    return clock.own[warm:], clock.other[warm:]


def run_model(job: dict) -> list[dict]:
    """Every configuration of one model, ``rounds`` times each, in this process."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    model, size = build_model(job["model"])
    model.to(device)
    out = []
    for spec in job["specs"]:
        own, plain, ratios = [], [], []
        for _ in range(job["rounds"]):
            o, p = run_config(model, size, spec, device)
            own.append(spec["batch"] / statistics.median(o))
            plain.append(spec["batch"] / statistics.median(p))
            ratios += [b / a for a, b in zip(o, p)]  # plain step time / this step time
        ratios.sort()
        lo, hi = median_interval(len(ratios))
        row = {**{k: v for k, v in job.items() if k != "specs"}, **spec, "samples_per_s": statistics.median(own),
               "plain_samples_per_s": statistics.median(plain), "rounds": own,
               "ratio": statistics.median(ratios), "ratio_ci": (ratios[lo], ratios[hi]), "pairs": len(ratios)}
        print(f"# {job['model']} {spec['loop']} {spec['precision']} {spec['data']}: {row['samples_per_s']:.1f} "
              f"samples/s, {row['ratio']:.3f}x the plain loop", file=sys.stderr, flush=True)
        if device.type == "cuda":
            peak, _ = peak_tflops(device, None)  # gpu.py's data-sheet table and FLOP count, one of each
            if peak:
                row["mfu"] = row["samples_per_s"] * count_flops(model, size, device, train=True) / (peak * 1e12)
        out.append(row)
    return out


def median_interval(n: int, level: float = 0.95) -> tuple[int, int]:
    """Indices (k, n-1-k) into n sorted values of a distribution-free interval for the
    median: the largest k whose coverage 1 - 2 P(Binomial(n, 1/2) <= k) is at least
    ``level``; the whole range when n is too small to reach it (n < 6 at 95%)."""
    cdf = lambda k: sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n  # noqa: E731
    k = 0
    while k + 1 <= (n - 1) // 2 and 1 - 2 * cdf(k + 1) >= level:
        k += 1
    return k, n - 1 - k


def peak_memory(job: dict) -> float:
    """Peak memory (GiB) of a process that runs one configuration once, unpaired: max RSS
    on CPU, ``max_memory_allocated`` on GPU."""
    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    model, size = build_model(job["model"])
    model.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    run_config(model, size, {**job["specs"][0], "steps": 2}, device, paired=False)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30


LORA_MODELS = {"tiny": "open_clip", "vit-b-32": "open_clip", "minilm": "sentence_transformer"}


def lora_pair(name: str, batch: int, modes: tuple[str, ...] = ("e2e", "lora")
              ) -> tuple[dict[str, torch.nn.Module], tuple, torch.Tensor]:
    """The classifier in each of ``modes``: 'e2e' as built, 'lora' with adapters by
    ``wiseft.train.lora.inject_lora`` (on a copy only when both are asked for, so a
    process measuring one mode's peak memory holds one model), and one fixed batch of
    inputs and labels."""
    from wiseft.config import LoraConfig
    from wiseft.heads import Classifier
    from wiseft.train.lora import inject_lora

    if name == "minilm":
        from wiseft.backbones import load_backbone

        backbone = load_backbone({"family": "sentence_transformer", "name": "packaged:all-MiniLM-L6-v2",
                                  "max_length": 64})
        model = Classifier(backbone.encoder, torch.nn.Linear(384, 5))
        words = "the market film election match phone profit music vote goal software team".split()
        g = torch.Generator().manual_seed(0)
        texts = [" ".join(words[i] for i in torch.randint(0, len(words), (48,), generator=g)) for _ in range(batch)]
        inputs, labels = backbone.collate([(t, i % 5) for i, t in enumerate(texts)])
    else:
        model, size = build_model(name)
        inputs, labels = torch.rand(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    out = {"e2e": model} if "e2e" in modes else {}
    if "lora" in modes:
        lora = copy.deepcopy(model) if out else model
        inject_lora(lora.encoder, LORA_MODELS[name], LoraConfig())
        out["lora"] = lora
    return {k: m.train() for k, m in out.items()}, inputs, labels


def lora_step(model: torch.nn.Module, opt: torch.optim.Optimizer, inputs, labels: torch.Tensor) -> float:
    """Seconds of one training step (forward, backward, AdamW)."""
    start = time.perf_counter()
    loss = F.cross_entropy(model(inputs), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - start


def lora_rates(job: dict) -> dict:
    """Step times of LoRA and e2e taking turns; the ratio (LoRA / e2e) per pair of steps."""
    torch.set_num_threads(job["threads"])
    models, inputs, labels = lora_pair(job["model"], job["batch"])
    opts = {k: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5) for k, m in models.items()}
    times: dict[str, list[float]] = {"e2e": [], "lora": []}
    for step in range(job["warmup"] + job["steps"]):
        for k in ("e2e", "lora"):
            t = lora_step(models[k], opts[k], inputs, labels)
            if step >= job["warmup"]:
                times[k].append(t)
    ratios = sorted(a / b for a, b in zip(times["lora"], times["e2e"]))
    lo, hi = median_interval(len(ratios))
    trainable = {k: sum(p.numel() for p in m.parameters() if p.requires_grad) for k, m in models.items()}
    return {**job, "e2e_s": statistics.median(times["e2e"]), "lora_s": statistics.median(times["lora"]),
            "ratio": statistics.median(ratios), "ratio_ci": (ratios[lo], ratios[hi]), "trainable": trainable}


def lora_peak(job: dict) -> float:
    """Peak memory (GiB, max RSS) of a process training one mode for two steps."""
    torch.set_num_threads(job["threads"])
    models, inputs, labels = lora_pair(job["model"], job["batch"], (job["mode"],))
    model = models[job["mode"]]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    for _ in range(2):
        lora_step(model, opt, inputs, labels)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2 ** 30


def lora_table(rows: list[dict]) -> str:
    lines = [f"device: cpu ({platform.processor() or platform.machine()}), threads {rows[0]['threads']}, "
             f"torch {torch.__version__}", "",
             "| model | batch | steps | trainable e2e / LoRA | step s e2e / LoRA | LoRA / e2e step time [95% CI] | "
             "peak GiB e2e / LoRA | LoRA / e2e peak memory |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['steps']} | {r['trainable']['e2e']:,} / "
                     f"{r['trainable']['lora']:,} | {r['e2e_s']:.3f} / {r['lora_s']:.3f} | {r['ratio']:.3f}x "
                     f"[{r['ratio_ci'][0]:.3f}, {r['ratio_ci'][1]:.3f}] | {r['peak']['e2e']:.2f} / "
                     f"{r['peak']['lora']:.2f} | {r['peak']['lora'] / r['peak']['e2e']:.3f}x |")
    return "\n".join(lines)


def lora_main(args) -> int:
    """LoRA against e2e on each model: step-time ratio in one process, peak memory per process."""
    rows = []
    for model in args.lora_models:
        job = {"model": model, "threads": args.threads, "batch": args.batch or (16 if model == "vit-b-32" else 32),
               "steps": args.steps or 8, "warmup": args.warmup}
        row = _child("lora-rates", job)
        row["peak"] = {mode: _child("lora-peak", {**job, "mode": mode}) for mode in ("e2e", "lora")}
        print(f"# {model}: LoRA step {row['ratio']:.3f}x e2e, peak memory "
              f"{row['peak']['lora'] / row['peak']['e2e']:.3f}x", file=sys.stderr, flush=True)
        rows.append(row)
    print(lora_table(rows))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=["tiny", "vit-b-32"], choices=sorted(MODELS))
    p.add_argument("--batch", type=int, help="default: 256; 16 for ViT-B/32 on CPU")
    p.add_argument("--steps", type=int, help="timed steps per run (default: 30; 8 for ViT-B/32 on CPU)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, help="runs of every configuration (default: 10; 2 for ViT-B/32 on CPU)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--lora", action="store_true", help="LoRA against end-to-end instead (CPU)")
    p.add_argument("--lora-models", nargs="+", default=["vit-b-32", "minilm"], choices=sorted(LORA_MODELS))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, job = json.loads(args.child)
        work = {"rates": run_model, "peak": peak_memory, "lora-rates": lora_rates, "lora-peak": lora_peak}[kind]
        print(json.dumps(work(job)))
        return 0
    if args.lora:
        return lora_main(args)
    rows = []
    for model in args.models:
        slow = model != "tiny" and not args.device.startswith("cuda")
        runs = [("plain", "fp32", "fixed"), ("wiseft", "fp32", "fixed"), ("plain+fused", "fp32", "fixed"),
                ("wiseft", "bf16", "fixed")]
        if model == "tiny":  # where per-sample seeding would show, if anywhere
            runs += [("plain", "fp32", "flip"), ("wiseft", "fp32", "flip")]
        job = {"model": model, "device": args.device, "threads": args.threads,
               "rounds": args.rounds or (2 if slow else 10),
               "specs": [{"loop": loop, "precision": precision, "data": data,
                          "batch": args.batch or (16 if slow else 256), "steps": args.steps or (8 if slow else 30),
                          "warmup": args.warmup} for loop, precision, data in runs]}
        results = _child("rates", job)
        for r, spec in zip(results, job["specs"]):  # peak memory is per process
            r["peak_mem_gib"] = _child("peak", {**job, "specs": [spec]})
        rows += results
    print(table(rows))
    return 0


def _child(kind: str, job: dict):
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([kind, job])], stdout=subprocess.PIPE,
                         text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(f"benchmark child {kind} {job['model']} failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    cpu = platform.processor() or platform.machine()
    lines = [f"device: {rows[0]['device']} ({cpu}), threads {rows[0]['threads']}, torch {torch.__version__}", "",
             "| model | data | loop | precision | batch | steps x rounds | samples/s | plain fp32 alongside | "
             "vs plain fp32, step by step [95% CI] | peak memory GiB | MFU |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if "mfu" in r else "n/a"
        fmt = ".0f" if r["samples_per_s"] > 100 else ".1f"
        lines.append(f"| {r['model']} | {r['data']} | {r['loop']} | {r['precision']} | {r['batch']} | "
                     f"{r['steps']} x {len(r['rounds'])} | {r['samples_per_s']:{fmt}} | "
                     f"{r['plain_samples_per_s']:{fmt}} | "
                     f"{r['ratio']:.3f}x [{r['ratio_ci'][0]:.3f}, {r['ratio_ci'][1]:.3f}] | "
                     f"{r['peak_mem_gib']:.2f} | {mfu} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
