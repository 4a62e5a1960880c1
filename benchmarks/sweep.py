"""Alpha-sweep speed: the naive loop (loaders rebuilt and every image decoded again
for each alpha, as the reference implementation does) against wiseft's engine
(decode once, every alpha over the cache; features once for a linear head).

A reference set and two shift sets of synthetic 500x375 JPEGs, 11 alphas, for a tiny
image tower (decode-bound) and a randomly initialised ViT-B/32 (compute-bound).
Prints a Markdown table; times are wall-clock seconds in one process.

    python benchmarks/sweep.py [--images 300] [--vit-images 150] [--workers 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wiseft.backbones import load_backbone
from wiseft.data import build_dataset
from wiseft.evaluation import EvalSet, SweepSettings, build_input_cache, evaluate, sweep
from wiseft.heads import Classifier, zeroshot_head
from wiseft.runtime import numerics
from wiseft.runtime.device import cpu_has_bf16

ALPHAS = [round(0.1 * i, 1) for i in range(11)]
CLASSES = [f"class{i}" for i in range(10)]
TINY = {"embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def write_jpegs(root: Path, n: int) -> list[Path]:
    """n JPEGs of 500x375 over three sets (reference, shift-a, shift-b), 10 classes."""
    rng = np.random.default_rng(0)
    sets = [root / s for s in ("reference", "shift-a", "shift-b")]
    for i in range(n):
        d = sets[i % 3] / CLASSES[i % len(CLASSES)]
        d.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)  # smooth-ish content, like photos
        img = Image.fromarray(base).resize((500, 375), Image.BICUBIC)
        img.save(d / f"{i:05d}.jpg", quality=90)
    return sets


def evalsets(paths: list[Path]) -> list[EvalSet]:
    return [EvalSet(p.name, "reference" if i == 0 else "shift",
                    build_dataset({"kind": "image_folder", "root": str(p)}, name=p.name))
            for i, p in enumerate(paths)]


def model_and_thetas(spec: dict, end_to_end: bool = True):
    bb = load_backbone(spec)
    torch.manual_seed(0)
    model = Classifier(bb.encoder, zeroshot_head(bb, CLASSES, ["a photo of a {}."], cache=False))
    theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    theta_1 = {k: v + 0.01 * torch.randn(v.shape, generator=g) if v.is_floating_point()
               and (end_to_end or k.startswith("head.")) else v.clone() for k, v in theta_0.items()}
    return bb, model, theta_0, theta_1


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def bench(label: str, spec: dict, paths: list[Path], workers: int) -> list[dict]:
    bb, model, theta_0, theta_1 = model_and_thetas(spec)
    base = SweepSettings(progress=False, num_workers=workers, batch_size=64)
    rows = []
    t_naive, naive = timed(lambda: sweep(model, theta_0, theta_1, evalsets(paths), ALPHAS, bb,
                                         settings=replace(base, cache=False)))
    t_ours, ours = timed(lambda: sweep(model, theta_0, theta_1, evalsets(paths), ALPHAS, bb,
                                       settings=replace(base, cache="memory")))
    same = {(r.alpha, r.dataset): r.correct for r in naive} == {(r.alpha, r.dataset): r.correct for r in ours}
    # decode (d) and one model pass (m) over all sets, for the limit 11(d+m)/(d+11m)
    sets = evalsets(paths)
    d, caches = timed(lambda: [build_input_cache(s.dataset, bb, num_workers=workers, mode="memory", progress=False)
                               for s in sets])
    m, _ = timed(lambda: [_forward(model, c, "fp32") for c in caches])
    limit = 11 * (d + m) / (d + 11 * m)
    rows.append(dict(model=label, case="e2e sweep, fp32", naive=t_naive, ours=t_ours, limit=limit, exact=same))
    if cpu_has_bf16() or torch.cuda.is_available():
        t_bf, bf = timed(lambda: sweep(model, theta_0, theta_1, evalsets(paths), ALPHAS, bb,
                                       settings=replace(base, cache="memory", precision="bf16")))
        checks = {r.dataset: r.provenance.get("bf16_check") for r in bf if r.alpha == 0.0}
        diff = max(abs(c["top1_diff"]) for c in checks.values() if c)
        agree = min(c["agreement"] for c in checks.values() if c)
        cos = _feature_cosine(model, caches[0])
        rows.append(dict(model=label, case="e2e sweep, bf16", naive=t_naive, ours=t_bf, exact=None,
                         note=f"top-1 diff vs fp32 {100 * diff:.2f} pt, agreement {agree:.4f}, "
                              f"feature cosine {cos:.5f}"))
    bb, model, theta_0, theta_1 = model_and_thetas(spec, end_to_end=False)
    t_one, _ = timed(lambda: evaluate(model, evalsets(paths), bb, cache=False, batch_size=64, num_workers=workers))
    t_lin, _ = timed(lambda: sweep(model, theta_0, theta_1, evalsets(paths), ALPHAS, bb,
                                   settings=replace(base, linear=True)))
    rows.append(dict(model=label, case="linear-head sweep vs ONE evaluation", naive=t_one, ours=t_lin, exact=None))
    return rows


@torch.no_grad()
def _forward(model, cache, precision):
    model.eval()
    with numerics(precision, torch.device("cpu")):
        for x, _ in cache.batches(64):
            model(x)


@torch.no_grad()
def _feature_cosine(model, cache) -> float:
    x = next(cache.batches(64))[0]
    with numerics("fp32", torch.device("cpu")):
        f32 = model.encoder(x).float()
    with numerics("bf16", torch.device("cpu")):
        f16 = model.encoder(x).float()
    return float(torch.nn.functional.cosine_similarity(f32, f16, dim=-1).mean())


def table(rows: list[dict]) -> str:
    out = ["| model | case | baseline (s) | wiseft (s) | speed-up | limit | same counts | note |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        limit = f"{r['limit']:.2f}x" if r.get("limit") else ""
        exact = {True: "yes", False: "NO", None: ""}[r["exact"]]
        ratio = r["naive"] / r["ours"]
        speed = f"{ratio:.2f}x" if "linear" not in r["case"] else f"cost {1 / ratio:.2f}x one eval"
        out.append(f"| {r['model']} | {r['case']} | {r['naive']:.1f} | {r['ours']:.1f} | {speed} | {limit} | "
                   f"{exact} | {r.get('note', '')} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=300, help="JPEGs for the tiny model (over three sets)")
    ap.add_argument("--vit-images", type=int, default=150, help="JPEGs for ViT-B/32 (0 skips it)")
    ap.add_argument("--workers", type=int, default=0, help="loader workers, the same for both loops")
    args = ap.parse_args()
    import open_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "cfg").mkdir()
        (tmp / "cfg" / "bench-tiny.json").write_text(json.dumps(TINY))
        open_clip.add_model_config(tmp / "cfg")
        rows = bench(f"tiny ViT (32 px), {args.images} JPEGs",
                     {"family": "open_clip", "name": "bench-tiny"}, write_jpegs(tmp / "a", args.images), args.workers)
        if args.vit_images:
            rows += bench(f"ViT-B/32 (random init), {args.vit_images} JPEGs", {"family": "open_clip", "name": "ViT-B-32"},
                          write_jpegs(tmp / "b", args.vit_images), args.workers)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, native bf16: {cpu_has_bf16()}, 11 alphas, 3 sets\n")
    print(table(rows))


if __name__ == "__main__":
    main()
