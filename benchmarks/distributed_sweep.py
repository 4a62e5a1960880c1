"""The alpha sweep on one process and on N torchrun processes, in one run (issue 17
item 1): each launch times ``evaluate.sweep`` over 11 alphas inside its processes (the
first sweep decodes the sets into the input cache, the second reads the cache), the
launches alternate, and the script prints the median times, the speed-up, and whether
the records of N processes are those of one (every field, compared as JSON).

The model is a randomly initialised open_clip ViT from ``benchmarks/multi_alpha.py``
(nothing is downloaded); the inputs are synthetic images. Each launch splits the
machine's cores between its processes (``OMP_NUM_THREADS`` = cores / N), so one process
and N processes use the same cores.

    python benchmarks/distributed_sweep.py [--world 2] [--images 512] [--batch-size 32]
                                           [--repeats 3] [--model bench-vit-small] [--out FILE]

On a GPU node (``--device cuda``) each process takes one GPU, as under
``torchrun -m wiseft run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def inner(args) -> None:
    """One process of a launch: two timed sweeps; rank 0 writes times and records."""
    import open_clip
    import torch
    from multi_alpha import ALPHAS, MODELS, case

    from wiseft.evaluation import SweepSettings, sweep
    from wiseft.runtime import barrier, init_distributed

    info, device = init_distributed(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{args.model}.json").write_text(json.dumps(MODELS[args.model]))
        open_clip.add_model_config(tmp)
        torch.manual_seed(0)  # the same random backbone in every process and every launch
        bb, model, theta_0, theta_1, sets = case(args.model, args.images, device)
    settings = SweepSettings(progress=False, batch_size=args.batch_size, cache="memory")
    times = []
    for _ in range(2):  # the first decodes each set once, the second reads the cache
        barrier()
        start = time.perf_counter()
        records = sweep(model, theta_0, theta_1, sets, ALPHAS, bb, settings=settings)
        barrier()
        times.append(time.perf_counter() - start)
    if info.main:
        Path(args.inner).write_text(json.dumps({"times": times, "threads": torch.get_num_threads(),
                                                "records": [dataclasses.asdict(r) for r in records]}))


def launch(args, world: int, out: Path) -> dict:
    """One launch of ``world`` processes (a plain process for 1); its rank 0's output."""
    cores = os.cpu_count() or 1
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // world))}
    own = [str(Path(__file__).resolve()), "--inner", str(out), "--images", str(args.images), "--batch-size",
           str(args.batch_size), "--model", args.model, "--device", args.device]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    cmd = [sys.executable, *own] if world == 1 else [torchrun, "--standalone", "--nproc_per_node", str(world), *own]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="bench-vit-small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--inner", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    if args.inner:
        inner(args)
        return
    load_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    runs: dict[int, list[dict]] = {1: [], args.world: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.repeats):
            for world in runs:
                runs[world].append(launch(args, world, Path(tmp) / f"{world}-{i}.json"))
    text = report(args, runs, load_before)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


def report(args, runs: dict[int, list[dict]], load_before: str) -> str:
    one = runs[1][0]["records"]
    lines = [f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs; {args.model}, "
             f"{args.images} + {max(1, args.images // 4)} images, batch {args.batch_size}, 11 alphas, fp32, "
             f"{args.repeats} launches of each alternating, median; load before: {load_before}; after: "
             + subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(), "",
             "| processes | threads each | first sweep, decode included (s) | second sweep, cached (s) "
             "| speed-up (cached) | records vs 1 process |", "|---|---|---|---|---|---|"]
    base = statistics.median(r["times"][1] for r in runs[1])
    for world, rs in runs.items():
        first, second = (statistics.median(r["times"][k] for r in rs) for k in (0, 1))
        same = all(r["records"] == one for r in rs)
        lines.append(f"| {world} | {rs[0]['threads']} | {first:.2f} | {second:.2f} | {base / second:.2f}x | "
                     f"{'identical, every field' if same else 'DIFFERENT'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
