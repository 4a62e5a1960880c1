"""The GPU check (issue 17.4): training throughput and MFU, the torch.compile speed-up, an
fp16 step with a gradient scaler, evaluation per alpha and several alphas per pass, in
one table.

    python benchmarks/gpu.py --out docs/gpu-check.md     # a GPU machine: under 8 minutes on one H200
    python benchmarks/gpu.py --smoke --out /tmp/gpu.md    # a tiny ViT and a few steps: any machine, CPU too

Every model is an open_clip image tower with random weights (``create_model(name,
pretrained=None)``; nothing is downloaded) and a 1000-class head, as wiseft fine-tunes
it (``Classifier``); every input is synthetic and already in memory, so the numbers
are the model's, not a data pipeline's. The stages, in order:

1. train: steps of forward, backward and fused AdamW under bf16 autocast, for ViT-B/32
   and ViT-B/16. images/s from the timed steps after a warm-up; FLOPs per image counted
   with ``torch.utils.flop_counter.FlopCounterMode`` over one forward and backward
   (attention on the math kernel while counting, so its matmuls are counted on any
   device); MFU = images/s x FLOPs per image / peak dense bf16 FLOP/s (``PEAK_BF16_TFLOPS``
   by device name, or ``--peak-tflops``).
2. fp16: steps under fp16 autocast with ``torch.amp.GradScaler``; checks the loss is
   finite and the weights moved (the scaler may skip the first steps while it lowers
   its scale). A failed check makes the exit status 1.
3. eval, one alpha at a time: for each alpha, ``Interpolator.load_into`` then a bf16
   forward over every batch (batches kept in host memory, pinned on a GPU, as the
   sweep's input cache keeps them, and moved per alpha), as ``evaluate.sweep`` runs.
4. eval, several alphas per pass: ``wiseft.merge.stacked.MultiAlpha`` over the same
   batches (each moved once; stacking the weights included in the time), vmapped and
   looped; the speed-up is against stage 3, and the logits are checked against it.
5. compile: ViT-B/16's training step under ``torch.compile``: steady-state images/s
   after the warm-up against stage 1's eager rate; the compile time (first step minus
   a steady step) is reported apart.

Time on one H200 (989 TFLOP/s dense bf16), from counted FLOPs at an assumed 30% MFU
(the time is at most this when MFU is higher): training a ViT-B/16 image is 105 GFLOP,
ViT-B/32 26 GFLOP, a ViT-B/16 forward 35 GFLOP. Stage 1 runs 5 + 30 steps of 256:
ViT-B/16 35 x 256 x 105 GFLOP = 0.94 PFLOP = 3.2 s, ViT-B/32 0.8 s; stage 2, 12 steps
of 128 of ViT-B/16: 0.6 s; stage 3, 11 alphas x 16 batches of 256 of ViT-B/16:
45,056 forwards x 35 GFLOP = 1.6 PFLOP = 5.3 s, stage 4 twice that; stage 5, the
steps of stage 1 again (3 s) plus compiling (about 1 to 2 minutes, CPU-bound). With
model set-up and FLOP counting, about 3 minutes. Each stage also has a wall-clock
budget that stops its timed steps early, and a stage that would start after
``--deadline`` seconds (default 420) is skipped and says so: whatever the GPU, the check
ends within about 8 minutes unless one compile alone overruns.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from wiseft.heads import Classifier
from wiseft.merge import Interpolator, MultiAlpha, MultiAlphaSettings

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s;
# the first name contained in the device name wins, so longer names come first.
PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "GH200": 989.0, "H200": 989.0, "H100": 989.0,
                    "H800": 989.0, "B200": 2250.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0, "L4": 121.0,
                    "RTX 4090": 165.0, "RTX 6000 Ada": 364.0}
TINY = "wiseft-gpu-tiny"
TINY_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
NUM_CLASSES = 1000


@dataclass(frozen=True)
class Plan:
    """The sizes and time budgets (seconds) of one check."""

    train_models: tuple[str, ...] = ("ViT-B-32", "ViT-B-16")
    model: str = "ViT-B-16"  # the model of the fp16, eval and compile stages
    train_batch: int = 256
    warmup: int = 5
    steps: int = 30
    fp16_batch: int = 128
    fp16_steps: int = 12
    eval_batch: int = 256
    eval_batches: int = 16
    alphas: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
    compile_backend: str = "inductor"
    # stage 4 runs the alphas stage 3 finished within its budget, so it has none of its own
    budgets: dict[str, float] = field(default_factory=lambda: {"train": 45.0, "fp16": 30.0, "eval": 60.0,
                                                               "compile": 240.0})
    deadline: float = 420.0

    @classmethod
    def smoke(cls) -> Plan:
        """A tiny ViT and a few steps: the same code path, seconds on a CPU."""
        return cls(train_models=(TINY,), model=TINY, train_batch=16, warmup=1, steps=3, fp16_batch=16, fp16_steps=4,
                   eval_batch=64, eval_batches=4, compile_backend="eager")


@dataclass
class Row:
    """One line of the table; ``ok`` is False for a failed check."""

    stage: str
    model: str
    precision: str
    batch: int | str
    steps: int | str
    images_per_s: float | None = None
    tflops: float | None = None
    mfu: float | None = None
    speedup: float | None = None
    note: str = ""
    ok: bool = True


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    """The dense bf16 peak to divide by, and where it came from."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in name:
            return value, f"data sheet, {key}"
    return None, f"{name!r} is not in the table (give --peak-tflops)"


def build_model(name: str, device: torch.device) -> tuple[Classifier, int]:
    """A randomly initialised (seed 0) image tower of open_clip's ``name`` with a linear head, and its input size."""
    import open_clip

    if name == TINY:
        open_clip.factory._MODEL_CONFIGS[TINY] = TINY_CONFIG
    torch.manual_seed(0)
    visual = open_clip.create_model(name, pretrained=None).visual
    size = visual.image_size[0] if isinstance(visual.image_size, tuple) else visual.image_size
    return Classifier(visual, torch.nn.Linear(visual.output_dim, NUM_CLASSES)).to(device), size


def count_flops(model: torch.nn.Module, size: int, device: torch.device, train: bool) -> float:
    """FLOPs per image of one forward (and backward when ``train``), counted on a batch of 2."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(2, 3, size, size, device=device)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def timed_steps(step: Callable[[], object], device: torch.device, warmup: int, steps: int,
                budget: float) -> tuple[int, float, float]:
    """(timed steps run, their seconds, seconds of the warm-up): ``warmup`` untimed steps,
    then up to ``steps`` timed ones, stopping early (after at least one) once ``budget``
    seconds have gone since the start."""
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    done = 0
    while done < steps:
        step()
        done += 1
        if time.perf_counter() - start > budget:
            break
    sync(device)
    return done, time.perf_counter() - t0, t0 - start


def train_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
               dtype: torch.dtype, scaler: torch.amp.GradScaler | None = None) -> Callable[[], torch.Tensor]:
    """One training step (forward, cross-entropy, backward, AdamW) under ``dtype`` autocast, as a closure."""

    def step() -> torch.Tensor:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=dtype):
            loss = F.cross_entropy(model(x), y)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        return loss.detach()

    return step


def batch_of(n: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, size, size, generator=g).to(device),
            torch.randint(0, NUM_CLASSES, (n,), generator=g).to(device))


def optimizer(model: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=3e-5, weight_decay=0.1, fused=device.type in ("cuda", "cpu"))


def stage_train(name: str, plan: Plan, device: torch.device, peak: float | None) -> Row:
    """bf16 training throughput and MFU of ``name``."""
    model, size = build_model(name, device)
    flops = count_flops(model, size, device, train=True)
    x, y = batch_of(plan.train_batch, size, device)
    model.train()
    n, seconds, _ = timed_steps(train_step(model, x, y, optimizer(model, device), torch.bfloat16), device,
                                plan.warmup, plan.steps, plan.budgets["train"])
    rate = n * plan.train_batch / seconds
    return Row("train", name, "bf16", plan.train_batch, n, rate, rate * flops / 1e12,
               rate * flops / 1e12 / peak if peak else None, note=f"{flops / 1e9:.3g} GFLOP/image (fwd+bwd)")


def stage_compile(plan: Plan, device: torch.device, peak: float | None, eager: Row | None) -> Row:
    """bf16 training throughput of the model under torch.compile, after a warm-up that compiles it."""
    model, size = build_model(plan.model, device)
    flops = count_flops(model, size, device, train=True)
    x, y = batch_of(plan.train_batch, size, device)
    model.train()
    compiled = torch.compile(model, backend=plan.compile_backend)
    step = train_step(compiled, x, y, optimizer(model, device), torch.bfloat16)
    n, seconds, warm = timed_steps(step, device, max(plan.warmup, 2), plan.steps, plan.budgets["compile"])
    rate = n * plan.train_batch / seconds
    compile_s = warm - max(plan.warmup, 2) * seconds / n
    speedup = rate / eager.images_per_s if eager is not None and eager.images_per_s else None
    return Row("train, torch.compile", plan.model, "bf16", plan.train_batch, n, rate, rate * flops / 1e12,
               rate * flops / 1e12 / peak if peak else None, speedup,
               note=f"vs eager (train row); compile {compile_s:.1f} s, backend {plan.compile_backend}")


def stage_fp16(plan: Plan, device: torch.device) -> Row:
    """fp16 autocast steps with a gradient scaler: the loss is finite and the weights moved."""
    model, size = build_model(plan.model, device)
    x, y = batch_of(plan.fp16_batch, size, device, seed=1)
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    scaler = torch.amp.GradScaler(device.type)
    step = train_step(model, x, y, optimizer(model, device), torch.float16, scaler)
    losses = []
    n, seconds, _ = timed_steps(lambda: losses.append(step()), device, 0, plan.fp16_steps, plan.budgets["fp16"])
    moved = max(float((p.detach() - b).abs().max()) for p, b in zip(model.parameters(), before))
    finite = all(bool(torch.isfinite(v)) for v in losses) and all(bool(torch.isfinite(p).all())
                                                                    for p in model.parameters())
    ok = finite and moved > 0
    note = (f"{'passed' if ok else 'FAILED'}: last loss {float(losses[-1]):.4f} ({'all finite' if finite else 'NOT finite'}), "
            f"max weight change {moved:.2e}, scale {scaler.get_scale():.0f}")
    return Row("fp16 + GradScaler", plan.model, "fp16", plan.fp16_batch, n, n * plan.fp16_batch / seconds,
               note=note, ok=ok)


@dataclass
class EvalCase:
    """A model, the two weight sets it is swept between, and host-memory batches."""

    model: Classifier
    theta_0: dict[str, torch.Tensor]
    theta_1: dict[str, torch.Tensor]
    batches: list[torch.Tensor]
    reference: list[torch.Tensor] = field(default_factory=list)  # alpha by alpha: logits of the first batch


def eval_case(plan: Plan, device: torch.device) -> EvalCase:
    """theta_0: the random model; theta_1: every floating tensor moved by seeded noise (both on the device)."""
    model, size = build_model(plan.model, device)
    model.eval()
    theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    g = torch.Generator(device=device).manual_seed(1)
    theta_1 = {k: v + 0.01 * torch.randn(v.shape, generator=g, device=device) if v.is_floating_point()
               else v.clone() for k, v in theta_0.items()}
    pin = device.type == "cuda"
    batches = [batch_of(plan.eval_batch, size, torch.device("cpu"), seed=10 + i)[0] for i in range(plan.eval_batches)]
    return EvalCase(model, theta_0, theta_1, [b.pin_memory() if pin else b for b in batches])


@torch.no_grad()
def stage_eval(plan: Plan, device: torch.device, case: EvalCase) -> Row:
    """One alpha at a time, as the sweep runs: load theta_alpha, then every batch, moved to the device."""
    interp = Interpolator(case.theta_0, case.theta_1)
    interp.load_into(case.model, plan.alphas[0])  # warm-up
    with torch.autocast(device.type, dtype=torch.bfloat16):
        case.model(case.batches[0].to(device))
    sync(device)
    start, done = time.perf_counter(), 0
    for alpha in plan.alphas:
        interp.load_into(case.model, alpha)
        # autocast keeps its bf16 copies of the parameters until its outermost block ends:
        # one block per alpha, as the sweep has, or every alpha would run alpha 0's copies
        with torch.autocast(device.type, dtype=torch.bfloat16):
            for i, b in enumerate(case.batches):
                out = case.model(b.to(device, non_blocking=True))
                if i == 0:
                    case.reference.append(out.float())
        done += 1
        if time.perf_counter() - start > plan.budgets["eval"]:
            break
    sync(device)
    rate = done * len(case.batches) * plan.eval_batch / (time.perf_counter() - start)
    return Row("eval, one alpha at a time", plan.model, "bf16", plan.eval_batch, f"{done} alphas x "
               f"{len(case.batches)}", rate, note="images/s per alpha; Interpolator.load_into, then every batch")


@torch.no_grad()
def stage_multi(plan: Plan, device: torch.device, case: EvalCase, mode: str, baseline: Row | None) -> Row:
    """Several alphas per pass (``MultiAlpha``, ``mode``): every batch moved once; stacking included."""
    alphas = plan.alphas[:len(case.reference)] or plan.alphas
    settings = MultiAlphaSettings(mode=mode)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        MultiAlpha(case.model, case.theta_0, case.theta_1, alphas[:2], settings)(case.batches[0])  # warm-up
        sync(device)
        start, first = time.perf_counter(), None
        multi = MultiAlpha(case.model, case.theta_0, case.theta_1, alphas, settings)
        for b in case.batches:
            out = multi(b)
            first = out.float() if first is None else first
        sync(device)
    rate = len(alphas) * len(case.batches) * plan.eval_batch / (time.perf_counter() - start)
    speedup = rate / baseline.images_per_s if baseline is not None and baseline.images_per_s else None
    return Row(f"eval, {len(alphas)} alphas per pass ({multi.mode_used})", plan.model, "bf16", plan.eval_batch,
               f"{len(alphas)} alphas x {len(case.batches)}", rate, speedup=speedup,
               note="images/s per alpha, vs one at a time; " + agreement(first, case.reference[:len(alphas)]))


def agreement(logits: torch.Tensor, reference: list[torch.Tensor]) -> str:
    """How the several-alphas logits of the first batch match those of one alpha at a time."""
    if not reference:
        return "no reference logits"
    ref = torch.stack(reference)
    diff = float((logits - ref).abs().max())
    top1 = float((logits.argmax(-1) == ref.argmax(-1)).float().mean())
    return f"max |logit diff| {diff:.2e} (logits up to {float(ref.abs().max()):.2f}), top-1 agreement {top1:.4f}"


def run_check(plan: Plan, device: torch.device, peak: float | None,
              report: Callable[[list[Row]], None] = lambda rows: None) -> list[Row]:
    """Every stage in order, each skipped once ``plan.deadline`` seconds have passed; a
    stage that raises gives a failed row and the check goes on. ``report`` gets the
    rows after each stage."""
    start, rows = time.perf_counter(), []
    cases: list[EvalCase] = []

    def run(stage: str, model: str, fn: Callable[[], Row]) -> Row | None:
        """Run one stage into ``rows``; its row when it measured a rate."""
        if time.perf_counter() - start > plan.deadline:
            rows.append(Row(stage, model, "", "", "", note=f"skipped: past the deadline ({plan.deadline:.0f} s)"))
        else:
            try:
                rows.append(fn())
            except Exception as e:  # noqa: BLE001 - a failed stage is a row of the table, not the end of the check
                rows.append(Row(stage, model, "", "", "", note=f"FAILED: {type(e).__name__}: {e}"[:300], ok=False))
        report(rows)
        return rows[-1] if rows[-1].ok and rows[-1].images_per_s is not None else None

    def case() -> EvalCase:
        if not cases:
            cases.append(eval_case(plan, device))
        return cases[0]

    trains = {name: run("train", name, lambda n=name: stage_train(n, plan, device, peak))
              for name in plan.train_models}
    run("fp16 + GradScaler", plan.model, lambda: stage_fp16(plan, device))
    one = run("eval, one alpha at a time", plan.model, lambda: stage_eval(plan, device, case()))
    for mode in ("vmap", "loop"):
        run(f"eval, alphas per pass ({mode})", plan.model, lambda m=mode: stage_multi(plan, device, case(), m, one))
    run("train, torch.compile", plan.model, lambda: stage_compile(plan, device, peak, trains.get(plan.model)))
    return rows


def table(rows: list[Row], header: list[str]) -> str:
    """The check as Markdown: header lines, then one table."""
    def num(v: float | None, fmt: str) -> str:
        return "n/a" if v is None else format(v, fmt)

    lines = header + ["", "| stage | model | precision | batch | steps | images/s | TFLOP/s | MFU | speed-up | note |",
                      "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.stage} | {r.model} | {r.precision} | {r.batch} | {r.steps} | "
                     f"{num(r.images_per_s, '.1f')} | {num(r.tflops, '.3g')} | "
                     f"{'n/a' if r.mfu is None else f'{100 * r.mfu:.1f}%'} | "
                     f"{'n/a' if r.speedup is None else f'{r.speedup:.2f}x'} | {r.note} |")
    return "\n".join(lines) + "\n"


def header_lines(device: torch.device, peak: float | None, source: str, plan: Plan, argv: list[str]) -> list[str]:
    if device.type == "cuda":
        name = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}"
    else:
        name = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    return [f"device: {name}; torch {torch.__version__}; "
            f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"peak dense bf16: {'unknown' if peak is None else f'{peak:.0f} TFLOP/s'} ({source})",
            f"command: python benchmarks/gpu.py {' '.join(argv)}".rstrip(),
            f"plan: {'smoke (tiny ViT, a few steps)' if plan.model == TINY else 'full'}, "
            f"{len(plan.alphas)} alphas, deadline {plan.deadline:.0f} s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, help="write the table (Markdown) here too")
    p.add_argument("--smoke", action="store_true", help="a tiny ViT and a few steps (runs on a CPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, help="dense bf16 peak of the device, TFLOP/s (default: by name)")
    p.add_argument("--deadline", type=float, help="seconds after which stages are skipped (default: 420)")
    p.add_argument("--compile-backend", help="torch.compile backend (default: inductor; eager with --smoke)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own)")
    args = p.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    plan = Plan.smoke() if args.smoke else Plan()
    plan = replace(plan, deadline=args.deadline if args.deadline is not None else plan.deadline,
                   compile_backend=args.compile_backend or plan.compile_backend)
    device = torch.device(args.device)
    peak, source = peak_tflops(device, args.peak_tflops)
    header = header_lines(device, peak, source, plan, argv)
    start = time.perf_counter()

    def report(rows: list[Row]) -> None:  # written after every stage: a killed check keeps what it measured
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(table(rows, header + [f"wall time so far: {time.perf_counter() - start:.0f} s"]))

    rows = run_check(plan, device, peak, report)
    header.append(f"wall time: {time.perf_counter() - start:.0f} s")
    text = table(rows, header)
    print(text)
    if args.out is not None:
        args.out.write_text(text)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
