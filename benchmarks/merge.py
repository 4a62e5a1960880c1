"""Time and peak memory of an alpha sweep with each merge engine.

Models of realistic size are built from open_clip configs with random weights
(nothing is downloaded). For an N-alpha sweep (default 11) each engine runs in its own
process, so each peak RSS is its own:

  (a) baseline: the reference implementation's way (clone both state dicts, one dict
      comprehension per alpha, ``load_state_dict``);
  (b) in-memory engine: ``Interpolator.load_into`` into one preallocated model;
  (c) out-of-core engine: ``write_interpolations`` from two safetensors files to N files;
  (d) copy: N plain copies of the model's bytes, the machine's bandwidth limit (a merge
      reads two models and writes one: about 1.5x a copy per alpha).

Peak RSS is the process high-water mark during the sweep (reset through
/proc/self/clear_refs just before it); "base" is the RSS before the sweep.

    python benchmarks/merge.py                       # ViT-B-16
    python benchmarks/merge.py --models ViT-B-16 ViT-L-14

``--schedules`` times per-layer alpha instead (issue 15.3): an N-step sweep of depth
ramps (``LinearParams(ramp=...)``, alpha per tensor) against an N-step sweep of global
alphas, both through ``Interpolator.load_into`` on one randomly initialised model, in
one process, the two sweeps alternated ``--repeats`` times; the ratio of the medians
is the cost of schedules (the issue asks <= 1.1x). ``--out`` writes the numbers as JSON.

    python benchmarks/merge.py --schedules --models ViT-B-32 --out benchmarks/results/merge-schedules.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("baseline", "engine", "out_of_core", "copy")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _build(name: str, seed: int):
    import open_clip
    import torch

    torch.manual_seed(seed)
    return open_clip.create_model(name, pretrained=None).eval()


def _checksum(tensors) -> int:
    """Sum of the tensors' bytes as int32 words: cheap and sensitive to every bit."""
    import torch

    total = 0
    for t in tensors:
        raw = t.detach().contiguous().view(-1).view(torch.uint8)
        head = raw.numel() // 4 * 4
        total += int(raw[:head].view(torch.int32).sum(dtype=torch.int64))
        total += int(raw[head:].sum(dtype=torch.int64))
    return total


def _child(engine: str, model: str, alphas: list[float], workdir: Path) -> dict:
    import torch

    torch.set_grad_enabled(False)
    sums: list[int] = []
    if engine == "out_of_core":
        from safetensors import safe_open

        from wiseft.merge import write_interpolations

        dests = {a: workdir / f"out_{i}.safetensors" for i, a in enumerate(alphas)}
        base = _status_kb("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        write_interpolations(workdir / "a.safetensors", workdir / "b.safetensors", dests)
        seconds = time.perf_counter() - t
        peak = _status_kb("VmHWM")
        for dest in dests.values():
            with safe_open(str(dest), framework="pt") as f:
                sums.append(_checksum(f.get_tensor(k) for k in sorted(f.keys())))
            dest.unlink()
        return {"seconds": seconds, "peak": peak, "base": base, "sums": sums}

    zs, ft = _build(model, 0), _build(model, 1)
    nbytes = sum(v.numel() * v.element_size() for v in zs.state_dict().values())
    if engine == "copy":
        del ft
        src = torch.cat([v.reshape(-1) for v in zs.state_dict().values()])
        del zs
        dst = torch.empty_like(src)
        base = _status_kb("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        for _ in alphas:
            dst.copy_(src)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "peak": _status_kb("VmHWM"), "base": base, "bytes": nbytes, "sums": []}
    if engine == "baseline":
        base = _status_kb("VmRSS")
        _reset_peak()
        t = time.perf_counter()
        theta_0 = {k: v.clone() for k, v in zs.state_dict().items()}
        theta_1 = {k: v.clone() for k, v in ft.state_dict().items()}
        for alpha in alphas:
            theta = {key: (1 - alpha) * theta_0[key] + alpha * theta_1[key] for key in theta_0}
            ft.load_state_dict(theta)
        seconds = time.perf_counter() - t
        return {"seconds": seconds, "peak": _status_kb("VmHWM"), "base": base, "bytes": nbytes, "sums": []}
    from wiseft.merge import Interpolator

    target = _build(model, 2)
    base = _status_kb("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    interp = Interpolator(zs.state_dict(), ft.state_dict())
    elapsed, peak = 0.0, 0
    for alpha in alphas:
        interp.load_into(target, alpha)
        elapsed += time.perf_counter() - t
        peak = max(peak, _status_kb("VmHWM"))
        sums.append(_checksum(target.state_dict()[k] for k in sorted(target.state_dict())))
        _reset_peak()  # the checksum's temporaries are not the engine's
        t = time.perf_counter()
    return {"seconds": elapsed, "peak": peak, "base": base, "bytes": nbytes, "sums": sums}


def _write_inputs(model: str, workdir: Path) -> None:
    """The two models as safetensors files, for the out-of-core engine."""
    from safetensors.torch import save_file

    for seed, name in ((0, "a"), (1, "b")):
        m = _build(model, seed)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(workdir / f"{name}.safetensors"))
        del m


def _run_child(engine: str, model: str, alphas: list[float], workdir: Path, threads: int | None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, __file__, "--child", engine, "--models", model, "--workdir", str(workdir),
           "--alphas", str(len(alphas))]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"{engine} on {model} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    import torch

    return (f"{os.cpu_count()} vCPU {cpu}, {mem:.0f} GiB RAM, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), load average {os.getloadavg()[0]:.1f} at start")


def _ramps(alphas: list[float]) -> list:
    """One depth ramp per alpha: alpha - 0.2 at the embeddings to alpha + 0.2 after the last block."""
    from wiseft.merge.methods.linear import LinearParams

    return [LinearParams(ramp=(max(0.0, a - 0.2), min(1.0, a + 0.2))) for a in alphas]


def schedule_sweep(model: str, alphas: list[float], repeats: int) -> dict:
    """Seconds of an alpha sweep and of a sweep of as many ramps, alternated ``repeats``
    times in this process (the same model, target and threads for both)."""
    import statistics

    import torch

    from wiseft.merge import Interpolator

    torch.set_grad_enabled(False)
    zs, ft, target = _build(model, 0), _build(model, 1), _build(model, 2)
    interp = Interpolator(zs.state_dict(), ft.state_dict())
    sweeps = {"global": alphas, "schedules": _ramps(alphas)}
    times: dict[str, list[float]] = {k: [] for k in sweeps}
    for _ in range(repeats):
        for kind, sweep in sweeps.items():
            t = time.perf_counter()
            for alpha in sweep:
                interp.load_into(target, alpha)
            times[kind].append(time.perf_counter() - t)
    nbytes = sum(v.numel() * v.element_size() for v in zs.state_dict().values())
    distinct = len(set(sweeps["schedules"][len(alphas) // 2].alphas([s.name for s in interp.steps]).values()))
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "bytes": nbytes, "tensors": len(interp.steps), "sweep_steps": len(alphas),
            "repeats": repeats, "distinct_alphas_per_ramp": distinct, "seconds": times, "median_seconds": median,
            "ratio_schedules_to_global": median["schedules"] / median["global"]}


def _schedules_main(args, alphas: list[float]) -> None:
    """Run ``schedule_sweep`` per model, print a table, write the JSON to ``args.out``."""
    load_before, machine = os.getloadavg(), _machine()
    results = [schedule_sweep(m, alphas, args.repeats) for m in args.models]
    quiet = max(load_before[0], os.getloadavg()[0]) <= 2.5
    record = {"benchmark": "per-layer alpha sweep (issue 15.3)", "machine": machine,
              "conditions": "quiet machine" if quiet else "busy machine (load average above 2.5: other jobs "
                            "running on the 2 cores), so single timings are noisy; both sweeps alternate",
              "load_average_before": load_before, "load_average_after": os.getloadavg(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "results": results}
    print(f"machine: {record['machine']}")
    print("| model | size | sweep | global (s) | schedules (s) | ratio |\n|---|---|---|---|---|---|")
    for r in results:
        m = r["median_seconds"]
        print(f"| {r['model']} | {r['bytes'] / 1e9:.2f} GB | {r['sweep_steps']} steps, median of {r['repeats']} | "
              f"{m['global']:.3f} | {m['schedules']:.3f} | {r['ratio_schedules_to_global']:.3f}x |")
    print(f"load average: {load_before[0]:.2f} before, {record['load_average_after'][0]:.2f} after")
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
        print(f"written: {args.out}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["ViT-B-16"], help="open_clip configs, e.g. ViT-B-16 ViT-L-14")
    p.add_argument("--alphas", type=int, default=11, help="sweep size (alphas evenly spaced in [0, 1])")
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    p.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: torch's)")
    p.add_argument("--workdir", help="where the out-of-core files go (default: a temporary directory)")
    p.add_argument("--child", choices=ENGINES + ("setup",), help=argparse.SUPPRESS)
    p.add_argument("--schedules", action="store_true", help="time a sweep of depth ramps against global alphas")
    p.add_argument("--repeats", type=int, default=5, help="with --schedules: sweeps of each kind, alternated")
    p.add_argument("--out", help="with --schedules: write the results as JSON here")
    args = p.parse_args()
    alphas = [i / (args.alphas - 1) for i in range(args.alphas)] if args.alphas > 1 else [0.5]
    if args.schedules:
        _schedules_main(args, alphas)
        return
    if args.child == "setup":
        _write_inputs(args.models[0], Path(args.workdir))
        print("{}")
        return
    if args.child:
        print(json.dumps(_child(args.child, args.models[0], alphas, Path(args.workdir))))
        return

    print(f"machine: {_machine()}")
    print(f"sweep: {len(alphas)} alphas; peak = RSS high-water mark during the sweep\n")
    header = ("| model | size | engine | time (s) | vs baseline | vs copy limit (1.5x copy) | peak RSS (GB) "
              "| above base (GB) |")
    rows = [header, "|" + "---|" * 8]
    for model in args.models:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="wiseft-bench-"))
        workdir.mkdir(parents=True, exist_ok=True)
        try:
            if "out_of_core" in args.engines:
                _run_child("setup", model, alphas, workdir, args.threads)
            res = {e: _run_child(e, model, alphas, workdir, args.threads) for e in args.engines}
        finally:
            if not args.workdir:
                shutil.rmtree(workdir, ignore_errors=True)
        nbytes = next((r["bytes"] for r in res.values() if "bytes" in r), None)
        base_t = res.get("baseline", {}).get("seconds")
        limit = 1.5 * res["copy"]["seconds"] if "copy" in res else None
        for e, r in res.items():
            speedup = f"{base_t / r['seconds']:.1f}x faster" if base_t and e != "baseline" else "-"
            vs_limit = f"{r['seconds'] / limit:.2f}x" if limit and e != "copy" else "-"
            size = f"{nbytes / 1e9:.2f} GB" if nbytes else "?"
            rows.append(f"| {model} | {size} | {e} | {r['seconds']:.2f} | {speedup} | {vs_limit} | "
                        f"{r['peak'] / 1e9:.2f} | {(r['peak'] - r['base']) / 1e9:.3f} |")
        if res.get("engine", {}).get("sums") and res.get("out_of_core", {}).get("sums"):
            same = res["engine"]["sums"] == res["out_of_core"]["sums"]
            print(f"{model}: in-memory and out-of-core checksums {'identical' if same else 'DIFFER'} "
                  f"for all {len(alphas)} alphas")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
