"""Several alphas per pass, measured through the sweep itself (issue 17 item 2): one
process times ``evaluate.sweep`` over a cached set with ``alphas_per_pass=1`` (one alpha
at a time: load theta_alpha, then read every batch) and with ``alphas_per_pass=N`` (a
group of N alphas from one read of each batch, ``multi_alpha.MultiAlpha`` under vmap),
in alternating repeats, and prints the median times, their ratio and whether the records
agree (top-1 counts exactly; the largest ece and temperature differences).

Every model is a randomly initialised open_clip ViT (a config registered with
``open_clip.add_model_config``, created with ``pretrained=None``: nothing is downloaded)
with a seeded linear head; theta_1 is theta_0 moved by seeded noise. The inputs are
synthetic images, decoded into the sweep's input cache once before the first timed
sweep, so the times are the sweep's passes over the cache, not decoding.

    python benchmarks/multi_alpha.py [--images 256] [--batch-size 64] [--alphas-per-pass 11 4]
                                     [--repeats 5] [--threads 1] [--device cpu] [--out benchmarks/results/multi-alpha-cpu.md]

On a CPU this is a check of the code path, not where several alphas per pass pays:
vmap adds per-op overhead and a CPU gets little from bigger kernels. The GPU figure
comes from ``benchmarks/gpu.py`` (its ``eval, N alphas per pass`` rows run the same
``MultiAlpha``), or from this script with ``--device cuda``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wiseft.backbones import load_backbone
from wiseft.data import LabeledDataset
from wiseft.evaluation import EvalSet, SweepSettings, sweep
from wiseft.heads import Classifier

ALPHAS = [round(0.1 * i, 1) for i in range(11)]
CLASSES = 100
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
MODELS = {  # name -> open_clip config (the text tower is never run)
    "bench-vit-tiny": {"embed_dim": 64, "text_cfg": TEXT,
                       "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8}},
    "bench-vit-small": {"embed_dim": 128, "text_cfg": TEXT,
                        "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32,
                                       "patch_size": 8}},
}


def images(n: int, size: int, seed: int) -> LabeledDataset:
    """n synthetic RGB images (smooth random content) over ``CLASSES`` classes."""
    rng = np.random.default_rng(seed)
    samples = [(Image.fromarray(rng.integers(0, 256, (size // 4, size // 4, 3), dtype=np.uint8)).resize(
        (size, size), Image.BICUBIC), i % CLASSES) for i in range(n)]
    return LabeledDataset(samples, [f"class{i}" for i in range(CLASSES)], name=f"synthetic-{seed}")


def case(name: str, n: int, device: torch.device):
    """(backbone, model, theta_0, theta_1, evaluation sets) for model ``name``."""
    bb = load_backbone({"family": "open_clip", "name": name})
    torch.manual_seed(0)
    model = Classifier(bb.encoder, torch.nn.Linear(MODELS[name]["embed_dim"], CLASSES)).to(device).eval()
    theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator(device=device).manual_seed(1)
    theta_1 = {k: v + 0.02 * torch.randn(v.shape, generator=g, device=device) if v.is_floating_point()
               else v.clone() for k, v in theta_0.items()}
    size = MODELS[name]["vision_cfg"]["image_size"]
    sets = [EvalSet("reference", "reference", images(n, size, seed=0)),
            EvalSet("validation", "validation", images(max(1, n // 4), size, seed=1))]  # fits each temperature
    return bb, model, theta_0, theta_1, sets


def bench(name: str, args, device: torch.device) -> list[dict]:
    """Median sweep times for alphas_per_pass 1 and each N, repeats alternating."""
    bb, model, theta_0, theta_1, sets = case(name, args.images, device)
    base = SweepSettings(progress=False, batch_size=args.batch_size, cache="memory", precision=args.precision)
    run = lambda per_pass: sweep(model, theta_0, theta_1, sets, ALPHAS, bb,  # noqa: E731
                                 settings=replace(base, alphas_per_pass=per_pass))
    modes = [1, *args.alphas_per_pass]
    records = {m: run(m) for m in modes}  # warm-up; decodes the set into its cache once
    times: dict[int, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for m in modes:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t = time.perf_counter()
            run(m)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times[m].append(time.perf_counter() - t)
    one = statistics.median(times[1])
    rows = []
    for m in modes:
        med = statistics.median(times[m])
        rows.append(dict(model=name, per_pass=m, median=med, times=times[m], ratio=one / med,
                         agree=_agreement(records[1], records[m])))
    return rows


def _agreement(one, many) -> str:
    """Whether ``many``'s records are ``one``'s: top-1 counts exactly, other values' largest difference."""
    if len(one) != len(many):
        return "DIFFERENT record sets"
    counts = all((a.alpha, a.dataset, a.metric, a.correct, a.total) == (b.alpha, b.dataset, b.metric, b.correct,
                                                                        b.total) for a, b in zip(one, many))
    diff = {m: max((abs(a.value - b.value) for a, b in zip(one, many) if a.metric == m), default=0.0)
            for m in ("ece", "temperature")}
    return (f"{'same' if counts else 'DIFFERENT'} top-1 counts; largest difference: ece {diff['ece']:.1e}, "
            f"temperature {diff['temperature']:.1e}")


def table(rows: list[dict]) -> str:
    out = ["| model | alphas per pass | median sweep (s) | fastest (s) | speed-up vs 1 (median) | records vs 1 |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        agree = "" if r["per_pass"] == 1 else r["agree"]
        out.append(f"| {r['model']} | {r['per_pass']} | {r['median']:.2f} | {min(r['times']):.2f} | "
                   f"{r['ratio']:.2f}x | {agree} |")
    return "\n".join(out)


def conditions(args, device: torch.device) -> str:
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip() if os.name == "posix" else "?"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                               platform.machine())
    return (f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; {where}, "
            f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads; {args.precision}; "
            f"{len(ALPHAS)} alphas, {args.images} images, batch {args.batch_size}, {args.repeats} repeats "
            f"alternating, median; load before: {args.load_before}; after: {load}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--alphas-per-pass", type=int, nargs="+", default=[11, 4])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="also write the table and conditions here")
    args = ap.parse_args()
    args.load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in MODELS.items():
            (Path(tmp) / f"{name}.json").write_text(json.dumps(cfg))
        open_clip.add_model_config(tmp)
        rows = [r for name in args.models for r in bench(name, args, device)]
    text = f"{conditions(args, device)}\n\n{table(rows)}\n"
    print(text)
    if args.out is not None:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
