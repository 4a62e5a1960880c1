"""The main job: zero-shot head, fine-tune, alpha sweep, records, summary, export."""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from wiseft.backbones import Backbone, load_backbone
from wiseft.config import FinetuneConfig, MergeRun, RunConfig, load_config
from wiseft.core import (
    MERGE,
    QUICK_BANNER,
    Record,
    package_versions,
    summary_table,
    templates_hash,
)
from wiseft.evaluation import SweepSettings, reuse_sweep, search_merge, sweep
from wiseft.heads import export_model, plain_classifier, rederive_head
from wiseft.io import (
    Tracker,
    append_records,
    atomic_write,
    check_free,
    hold,
    log_records,
    log_run_end,
    open_tracker,
    read_meta,
)
from wiseft.merge import adapter_provenance, interpolator_for, merged_adapter_state
from wiseft.pipeline.estimate import estimate_run
from wiseft.pipeline.plan import StageClock, plan_text, precision_text, quick_config, resolve_precisions
from wiseft.pipeline.prepare import PreparedData, prepare_data, quick_data
from wiseft.pipeline.training import ZeroShotModels, checkpoint_paths, finetuned_weights, reusable
from wiseft.runtime import (
    PrecisionChoice,
    compute_info,
    current,
    init_distributed,
)
from wiseft.train import check_resumable

log = logging.getLogger("wiseft")


@dataclass
class RunResult:
    run_dir: Path
    records: list[Record]
    selected_alpha: dict[str, float]
    export_dir: Path | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    estimate: dict[str, float] = field(default_factory=dict)  # the seconds estimated per stage (progress runs)


def _sweep_provenance(provenance: dict[str, Any], ft_cfg: FinetuneConfig, cfg: RunConfig, name: str,
                      theta_1: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What a sweep's records say: the run's provenance and, of its fine-tune, the mode, a
    non-default objective, the precision it trained in (beside the evaluation's, in
    ``compute``), a LoRA adapter's settings, and mode linear's probe (L-BFGS: the searched C,
    from the checkpoint's metadata)."""
    out = {**provenance, "mode": ft_cfg.mode, **({"objective": ft_cfg.objective} if ft_cfg.objective != "ce" else {}),
           "compute": {**provenance["compute"], "finetune_precision": ft_cfg.precision},
           **adapter_provenance(ft_cfg.mode, theta_1)}
    if ft_cfg.mode == "linear":
        ckpt = checkpoint_paths(cfg, name)[0]
        searched = read_meta(ckpt).get("linear_probe") if ckpt.exists() else None
        out["linear_probe"] = searched or {"method": ft_cfg.linear_probe}
    return out


def run(cfg: RunConfig | str | Path, *, progress: bool = True, quick: bool = False) -> RunResult:
    """Run the whole WiSE-FT pipeline described by a config (or a YAML path).

    ``quick=True`` runs the same code path on a slice of every set (a few dozen
    examples), a few steps per fine-tune and three alphas, into ``OUTPUT_DIR-quick``;
    its records carry ``provenance["quick"] = True`` and its report says so.
    ``RunResult.timings`` holds the seconds each stage took.

    Example:
        >>> result = run("examples/bbc_news.yaml")
        >>> result.selected_alpha
    """
    with contextlib.ExitStack() as held:  # the run directory's lock, released however the run ends
        return _run(cfg, progress, quick, held)


def _run(cfg: RunConfig | str | Path, progress: bool, quick: bool, held: contextlib.ExitStack) -> RunResult:
    """The body of :func:`run`; ``held`` keeps the run directory's lock until the run ends."""
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    info, device = init_distributed(cfg.device)  # under torchrun: every process trains and scores its shard
    main_process, clock, progress = info.main, StageClock(), progress and info.main  # rank 0 locks, writes, draws
    cfg, data = _checked_inputs(cfg, quick, main_process, clock)
    cfg, precisions = resolve_precisions(cfg, device)
    runs = cfg.finetune_runs()
    run_dir = Path(cfg.output_dir)
    reused = {name for name in runs if reusable(cfg, name)}
    computed = precision_text(precisions, device)  # the plan's and summary.md's lines
    log.info("%s\n%s", plan_text(cfg, data, runs, reused, quick), computed)
    with clock("model load"):
        backbone = load_backbone(cfg.backbone)
    # inputs are valid and the model loaded: now the run directory is this process's, and written to
    if main_process:
        held.enter_context(hold(run_dir, "run directory"))
    results_path = _start_run_dir(cfg, runs, reused, main_process)
    tracker = held.enter_context(_open_tracker(cfg, quick))  # closed however the run ends
    with clock("zero-shot head"):
        zs = ZeroShotModels(backbone, data, cfg, device)
        model, theta_0 = zs.of(cfg.finetune)
    estimate = estimate_run(model, theta_0, backbone, data, cfg, runs, reused) if main_process else {}
    provenance = _provenance(cfg, data, quick, device, precisions)
    state = RunState(cfg, data, backbone, zs, provenance, results_path, computed, clock, progress, quick,
                     tracker=tracker)

    def train(name: str, ft_cfg: FinetuneConfig) -> dict[str, torch.Tensor]:
        return finetuned_weights(cfg, name, (*zs.of(ft_cfg), backbone), data.train, progress=progress,
                                 tracker=tracker)

    result = finish_run(state, train)
    result.estimate = estimate
    return result


@dataclass
class RunState:
    """What the part of a run after fine-tuning works with: the config, data and backbone,
    the zero-shot models (``models.of(ft_cfg)`` -> (model, theta_0), ``models.main``), what
    every record carries, where the records go, and the run's clock. ``wiseft run`` builds
    it in :func:`run`; the training-framework callbacks (``wiseft.integrations``) with
    :func:`start_run`. ``records``: those the run already wrote (a callback's per-epoch sweeps)."""

    cfg: RunConfig
    data: PreparedData
    backbone: Backbone
    models: Any
    provenance: dict[str, Any]
    results_path: Path
    computed: str
    clock: StageClock
    progress: bool = True
    quick: bool = False
    records: list[Record] = field(default_factory=list)
    tracker: Tracker = field(default_factory=Tracker)  # where the records are logged too (``tracking:``)


def start_run(cfg: RunConfig, data: PreparedData, backbone: Backbone, models: Any, *, device: torch.device,
              progress: bool = True) -> RunState:
    """A run directory for weights trained elsewhere (a callback's): ``cfg`` with precision
    resolved for ``device`` (:func:`resolve_precisions`), its config written and a previous
    run's records dropped (rank 0), and the provenance every record carries, as :func:`run`
    writes them, and its trackers opened (``tracking:``; rank 0 logs). The caller holds the
    run directory (``io.hold``) and closes ``state.tracker``."""
    cfg, precisions = resolve_precisions(cfg, device)
    results_path = _start_run_dir(cfg, {}, set(), current().main)
    return RunState(cfg, data, backbone, models, _provenance(cfg, data, False, device, precisions), results_path,
                    precision_text(precisions, device), StageClock(), progress, tracker=_open_tracker(cfg, False))


def sweep_records(state: RunState, name: str, ft_cfg: FinetuneConfig, theta_1: dict[str, torch.Tensor],
                  zeroshot: dict | None = None) -> list[Record]:
    """The alpha sweep of fine-tune ``name`` (recipe ``ft_cfg``, weights ``theta_1``) against
    its zero-shot model, on the run's evaluation sets: its records, not yet written."""
    cfg = state.cfg
    settings = SweepSettings.from_config(cfg.evaluation, progress=state.progress, model_name=name,
                                         linear=ft_cfg.mode == "linear",
                                         allow_extrapolation=cfg.allow_extrapolation,
                                         provenance=_sweep_provenance(state.provenance, ft_cfg, cfg, name, theta_1))
    return sweep(*state.models.of(ft_cfg), theta_1, state.data.evalsets, cfg.alphas, state.backbone,
                 settings=settings, zeroshot=zeroshot)


def finish_run(state: RunState, finetuned: Callable[[str, FinetuneConfig], dict[str, torch.Tensor]]) -> RunResult:
    """Everything after the zero-shot model, for ``wiseft run`` and the training callbacks
    alike: for each fine-tune of the config, its weights (``finetuned(name, ft_cfg)``:
    trained, reused, or a callback's model as it ended), the alpha sweep, the records
    appended to ``results.jsonl``; the ``merges:``; the alpha selected on validation,
    ``summary.md`` and the export at that alpha (rank 0 writes)."""
    cfg, data, backbone, zs, clock = state.cfg, state.data, state.backbone, state.models, state.clock
    progress, quick, computed, results_path = state.progress, state.quick, state.computed, state.results_path
    main_process, runs, run_dir = current().main, cfg.finetune_runs(), Path(cfg.output_dir)
    model, theta_0 = zs.of(cfg.finetune)
    records: list[Record] = list(state.records)
    zeroshot: dict = {}  # alpha = 0 is theta_0 for every fine-tune: scored once, reused by every sweep
    merges = cfg.merge_runs()
    kept: dict[str, dict[str, torch.Tensor]] = {}  # the fine-tunes the merges read
    for name, ft_cfg in runs.items():
        with clock(f"fine-tune {name}"):
            theta_1 = finetuned(name, ft_cfg)
        if name == "finetuned" or any(name in m.models for m in merges):
            kept[name] = theta_1  # the main one is exported below; others are dropped after their sweep
        with clock(f"sweep {name}"):
            new = sweep_records(state, name, ft_cfg, theta_1, zeroshot)
        _append(results_path, new, state.tracker)
        records += new
    if merges:
        with clock("merges"):
            records += _merge_records(cfg, merges, (model, backbone, theta_0, kept), data, records, results_path,
                                      progress, state.provenance, state.tracker)
    from wiseft.report import select_alpha

    selected = {name: select_alpha(records, name, fixed=cfg.select_alpha) for name in runs}
    export_dir = None
    if main_process:  # under torchrun every process holds the records; rank 0 writes
        _write_summary(cfg, records, selected, quick, computed)
        if cfg.export:
            with clock("export"):
                export_dir = _export(cfg, data, (zs.main, backbone, theta_0, kept["finetuned"]),
                                     selected["finetuned"], records)
    log_run_end(state.tracker, selected, run_dir)  # the selected alphas, summary.md, results.jsonl
    return RunResult(run_dir, records, selected, export_dir, clock.times)


def _append(results_path: Path, records: list[Record], tracker: Tracker) -> None:
    """Append records to the run's results (under torchrun: by rank 0, which every process's equal)
    and log them through the run's tracker (``io.log_records``)."""
    if current().main:
        append_records(results_path, records)
    log_records(tracker, records)


def _open_tracker(cfg: RunConfig, quick: bool) -> Tracker:
    """The run's experiment trackers (``tracking:``; ``io.open_tracker``), its parameters logged:
    the config as it runs (precisions resolved). A rerun starts them over, as its records."""
    return open_tracker(cfg.tracking, cfg.output_dir, params=cfg.model_dump(mode="json"), fresh=True,
                        tags={"config_hash": cfg.config_hash(), "quick": str(quick).lower()})


def _export(cfg: RunConfig, data: PreparedData, weights: tuple, alpha: float, records: list[Record]) -> Path:
    """Export the main fine-tune's WiSE-FT model at ``alpha``, with its validation
    temperature, and write its model card (``README.md``, ``report.write_model_card``);
    ``weights``: (model, backbone, theta_0, theta_1)."""
    model, backbone, theta_0, theta_1 = weights
    interpolator_for(theta_0, theta_1, allow_extrapolation=cfg.allow_extrapolation).load_into(model, alpha)
    rederive_head(model)  # FLYP: the head of the mixed text tower
    model = plain_classifier(model)
    meta = {**_meta(cfg, data, alpha), "temperature": _temperature(records, "finetuned", alpha)}
    export_dir = export_model(model, backbone, meta, Path(cfg.output_dir) / "export")
    from wiseft.report import CardSettings, write_model_card  # as select_alpha above: the report loads on use

    write_model_card(export_dir, records, settings=CardSettings.from_config(cfg, records, modality=backbone.modality))
    return export_dir


def _merge_records(cfg: RunConfig, merges: list[MergeRun], weights: tuple, data: PreparedData,
                   records: list[Record], results_path: Path, progress: bool,
                   provenance: dict[str, Any], tracker: Tracker) -> list[Record]:
    """The records of each ``merges:`` entry, appended to the results as each is done:
    searched on validation and scored at its chosen point (``evaluation.search_merge``), or,
    for WiSE-FT itself (linear, a global alpha), copied from its fine-tune's sweep
    (``evaluation.reuse_sweep``), and logged through ``tracker``. ``weights``: (model, backbone,
    theta_0, fine-tunes by name)."""
    model, backbone, theta_0, finetuned = weights
    finetuned = {name: merged_adapter_state(theta_0, t) for name, t in finetuned.items()}  # LoRA: full weights
    out: list[Record] = []
    for merge in merges:
        new = reuse_sweep(merge, records)
        if new is None:
            settings = SweepSettings.from_config(cfg.evaluation, progress=progress, model_name=merge.name,
                                                 provenance=provenance)
            new = search_merge(model, theta_0, finetuned, data.evalsets, backbone, merge, settings=settings)
        chosen = next(r.provenance[MERGE]["point"] for r in new if r.provenance[MERGE]["chosen"])
        log.info("merge %s: the point used: %s", merge.name, json.dumps(chosen))
        _append(results_path, new, tracker)
        out += new
    return out


def _checked_inputs(cfg: RunConfig, quick: bool, main_process: bool,
                    clock: StageClock) -> tuple[RunConfig, PreparedData]:
    """The run's config and datasets (sliced for ``quick``), checked before any model
    loads; another run holding the run directory is an error before anything is read."""
    if main_process:  # another run in this directory: fail now, before any heavy work (writes nothing)
        check_free((quick_config(cfg) if quick else cfg).output_dir, "run directory")
    with clock("data"):
        data = prepare_data(cfg)
    if quick:
        cfg, data = quick_config(cfg), quick_data(data, cfg.data.seed)
    return cfg, data


def _start_run_dir(cfg: RunConfig, runs: dict, reused: set[str], main_process: bool = True) -> Path:
    """Write the resolved config into the run directory and drop a previous run's
    records (its checkpoints are reused); first, every checkpoint to resume from must
    load, so that a bad one stops the run before anything is written. Returns the
    records' path (only the main process writes)."""
    for name in runs:  # a checkpoint to resume from that would not load: say so before writing anything
        if name not in reused:
            check_resumable(checkpoint_paths(cfg, name)[1])
    run_dir = Path(cfg.output_dir)
    results_path = run_dir / "results.jsonl"
    if not main_process:
        return results_path
    atomic_write(run_dir / "config.yaml", cfg.to_yaml())
    if results_path.exists():
        results_path.unlink()  # a rerun replaces its records; checkpoints are reused below
    return results_path


def _provenance(cfg: RunConfig, data: PreparedData, quick: bool, device: torch.device,
                precisions: dict[str, PrecisionChoice]) -> dict[str, Any]:
    """What every record of the run carries: backbone, prompts, config hash, versions, and
    where it was computed (device, CPU and its bf16 flags, cores, torch, the evaluation's
    precision and why each stage runs in its precision; a sweep adds its fine-tune's)."""
    compute = {**compute_info(device), "evaluation_precision": cfg.evaluation.precision,
               "precision_why": {stage: c.why for stage, c in precisions.items()}}
    return {"backbone": cfg.backbone.model_dump(), "templates_hash": templates_hash(data.templates),
            "config_hash": cfg.config_hash(), "versions": package_versions(), "compute": compute,
            **({"quick": True} if quick else {})}


def _write_summary(cfg: RunConfig, records: list[Record], selected: dict[str, float], quick: bool,
                   compute: str) -> None:
    """``summary.md``: the records' table, the alpha selected for each fine-tune, and where
    and in what precision it was computed."""
    banner = QUICK_BANNER + "\n\n" if quick else ""
    chosen = {r.model: r.provenance[MERGE]["point"] for r in records
              if MERGE in r.provenance and r.provenance[MERGE]["chosen"]}
    merges = (f"merges, the point used (the best on {cfg.data.name}-val where searched): {json.dumps(chosen)}\n"
              if chosen else "")
    atomic_write(Path(cfg.output_dir) / "summary.md", banner + summary_table(records) + "\n\nselected alpha (on "
                 f"{cfg.data.name}-val): " + json.dumps(selected) + "\n" + merges + "\n" + compute.strip() + "\n")


def _temperature(records: list[Record], model: str, alpha: float) -> float | None:
    """The temperature fitted on validation for ``model`` at ``alpha`` (None if not fitted)."""
    found = [r.value for r in records if r.model == model and r.metric == "temperature" and r.alpha is not None
             and abs(r.alpha - alpha) < 1e-9]
    return found[0] if found else None


def _meta(cfg: RunConfig, data: PreparedData, alpha: float) -> dict[str, Any]:
    return {"classnames": data.classnames, "templates": list(data.templates), "alpha": alpha,
            "config_hash": cfg.config_hash(), "finetune": cfg.finetune.model_dump()}
