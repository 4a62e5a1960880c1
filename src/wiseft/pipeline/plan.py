"""What a run will do before it does it: ``precision: auto`` resolved once for the run
(``runtime.choose_precision`` decides), the plan printed before any model loads, the
settings of a ``--quick`` run, and the clock that times each stage."""

from __future__ import annotations

import contextlib
import time

import torch

from wiseft.config import RunConfig
from wiseft.pipeline.estimate import from_sweep
from wiseft.pipeline.prepare import QUICK_ALPHAS, QUICK_BATCH, PreparedData
from wiseft.runtime import PrecisionChoice, choose_precision, compute_info, describe_compute
from wiseft.train import finetune_precision


def quick_config(cfg: RunConfig) -> RunConfig:
    """The settings of a quick run: one short epoch per fine-tune (a few steps), three
    alphas, and a run directory of its own (``OUTPUT_DIR-quick``), so a quick check never
    touches a real run's records or checkpoints."""
    batch, micro = min(cfg.finetune.batch_size, QUICK_BATCH), cfg.finetune.micro_batch_size
    # a micro-batch smaller than the quick batch is kept: it decides each forward pass's samples (dropout
    # masks, padding), so one process reproduces a torchrun launch's numbers with it
    short = {"epochs": 1, "batch_size": batch, "micro_batch_size": micro if micro and micro < batch else None,
             "warmup_steps": min(cfg.finetune.warmup_steps, 1), "save_every_steps": None, "keep_last": 1,
             "keep_epoch_checkpoints": False, "lp_epochs": None, "shots_per_class": None}
    finetune = cfg.finetune.model_copy(update=short)
    variants = {name: {k: v for k, v in overrides.items() if k not in short}
                for name, overrides in cfg.variants.items()}
    alphas = [a for a in QUICK_ALPHAS if a in cfg.alphas] or [cfg.alphas[0], cfg.alphas[-1]]
    evaluation = cfg.evaluation.model_copy(update={"fp32_check": min(cfg.evaluation.fp32_check, 16)})
    return cfg.model_copy(update={"finetune": finetune, "variants": variants, "alphas": alphas,
                                  "evaluation": evaluation, "output_dir": str(cfg.output_dir) + "-quick"})


def resolve_precisions(cfg: RunConfig, device: torch.device) -> tuple[RunConfig, dict[str, PrecisionChoice]]:
    """``cfg`` with every ``precision: auto`` replaced by what runs on ``device``
    (``runtime.choose_precision``, the one place that decides), so train keys, the written
    config and the records say what ran; and each choice with its reason, by stage
    ('evaluation', then each fine-tune's name)."""
    choices = {"evaluation": choose_precision(cfg.evaluation.precision, device, allowed=("fp32", "bf16"))}
    for name, ft in cfg.finetune_runs().items():
        choices[name] = finetune_precision(ft, device)
    variants = {name: {**over, "precision": choices[name].precision} if "precision" in over else over
                for name, over in cfg.variants.items()}
    return cfg.model_copy(update={
        "evaluation": cfg.evaluation.model_copy(update={"precision": choices["evaluation"].precision}),
        "finetune": cfg.finetune.model_copy(update={"precision": choices["finetuned"].precision}),
        "variants": variants}), choices


def precision_text(choices: dict[str, PrecisionChoice], device: torch.device) -> str:
    """The plan's precision line: what each stage runs in and why, and the machine."""
    stages = ", ".join(f"{'evaluation' if k == 'evaluation' else 'fine-tune ' + k} {c.precision}"
                       for k, c in choices.items())
    reasons = "; ".join(dict.fromkeys(c.why for c in choices.values()))
    return f"  precision: {stages} ({reasons})\n  computed on: {describe_compute(compute_info(device))}"


class StageClock:
    """Wall time of each named stage, in the order they ran: ``with clock("export"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - start


def plan_text(cfg: RunConfig, data: PreparedData, runs: dict, reused: set[str], quick: bool) -> str:
    """What a run will do, printed before any model loads."""
    sets = ", ".join(f"{e.name} ({e.role}) {len(e.dataset)}" for e in data.evalsets)
    lines = [f"wiseft run{' --quick' if quick else ''}: {cfg.backbone.family} {cfg.backbone.name}, "
             f"{len(data.classnames)} classes, into {cfg.output_dir}",
             f"  training set: {len(data.train)} examples; evaluation sets: {sets}"]
    for i, (name, ft) in enumerate(runs.items(), 1):
        steps = ft.epochs * -(-len(data.train) // ft.batch_size)
        what = ("reuse the weights in checkpoints/" if name in reused else
                f"linear probe, L-BFGS logistic regression on frozen features ({ft.precision}), C searched on a "
                "held-out fifth of the training set" if ft.mode == "linear" and ft.linear_probe == "lbfgs" else
                f"fine-tune {ft.mode}, {ft.epochs} epoch{'s' if ft.epochs != 1 else ''} x {-(-len(data.train) // ft.batch_size)} steps = "
                f"{steps} steps of batch {ft.batch_size}, lr {ft.lr:g}, {ft.precision}")
        lines.append(f"  {i}. {name}: {what}; then {len(cfg.alphas)} alphas x {len(data.evalsets)} sets"
                     + (" (alpha 0, the zero-shot model, scored once for all)" if i > 1 and 0.0 in cfg.alphas
                        else ""))
    for m in cfg.merge_runs():
        how = (f"alpha from the sweep of {m.models[0]}" if from_sweep(m, cfg) else
               f"{len(m.points())} point{'s' if len(m.points()) != 1 else ''} on validation, the chosen one on "
               "the test sets")
        lines.append(f"  merge {m.name}: {m.method} of {', '.join(m.models)}; {how}")
    lines.append("  then: choose alpha on validation, summary, export" + ("" if cfg.export else " (off)"))
    return "\n".join(lines)
