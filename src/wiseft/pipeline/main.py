"""The main job: zero-shot head, fine-tune, alpha sweep, records, summary, export."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from wiseft.backbones import Backbone, load_backbone
from wiseft.config import ConfigError, DatasetSpec, FinetuneConfig, MergeRun, RunConfig, load_config
from wiseft.core import (
    DATASETS,
    MERGE,
    QUICK_BANNER,
    Record,
    get_templates,
    package_versions,
    summary_table,
    templates_hash,
)
from wiseft.data import (
    DataError,
    LabeledDataset,
    build_dataset,
    build_projection,
    per_class_permutations,
    read_classnames,
    split_holdout,
)
from wiseft.evaluation import EvalSet, SweepSettings, reuse_sweep, search_merge, sweep
from wiseft.heads import Classifier, export_model, plain_classifier, rederive_head, zeroshot_head
from wiseft.io import append_records, atomic_write, check_free, hold, load_state, read_meta, save_state
from wiseft.merge import adapter_provenance, interpolator_for, merged_adapter_state
from wiseft.pipeline.estimate import estimate_run, from_sweep
from wiseft.runtime import (
    PrecisionChoice,
    barrier,
    choose_precision,
    compute_info,
    current,
    describe_compute,
    init_distributed,
)
from wiseft.train import TrainRun, check_resumable, finetune, finetune_precision, finetuned_state

log = logging.getLogger("wiseft")


@dataclass
class PreparedData:
    """Datasets built and checked against the class list, before any model loads."""

    classnames: list[str]
    templates: tuple[str, ...]
    train: LabeledDataset
    evalsets: list[EvalSet]


@dataclass
class RunResult:
    run_dir: Path
    records: list[Record]
    selected_alpha: dict[str, float]
    export_dir: Path | None
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    estimate: dict[str, float] = field(default_factory=dict)  # the seconds estimated per stage (progress runs)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Build every dataset and check class lists; errors name the config file and field.

    With ``data.templates`` unset, the prompts are the reference dataset's own set (the
    test set's, else the training set's), else ``openai_imagenet``."""
    d = cfg.data

    def build(spec: dict, name: str, field: str) -> LabeledDataset:
        try:
            ds = build_dataset(spec, name=name, base_dir=cfg.base_dir)
        except DataError as e:
            raise cfg.error(field, e) from None
        ds.max_unreadable = d.max_unreadable  # read by training and evaluation when they skip inputs
        return ds

    try:
        classnames = read_classnames(d.classnames, cfg.base_dir)
    except DataError as e:
        raise cfg.error("data.classnames", e) from None
    train = build(d.train, f"{d.name}-train", "data.train")
    test = build(d.test, d.name, "data.test")
    shifts = {name: build(spec, name, f"data.shifts.{name}") for name, spec in d.shifts.items()}
    try:
        classnames = classnames or train.classnames
        train = _relabel(train, classnames)
        evalsets = [EvalSet(d.name, "reference", test, _projection(classnames, test, d.test, "data.test"))]
        for name, spec in d.shifts.items():
            ds = shifts[name]
            evalsets.append(EvalSet(name, "shift", ds, _projection(classnames, ds, spec, f"data.shifts.{name}")))
    except ConfigError as e:
        raise ConfigError(f"{cfg.source}: {e}" if cfg.source else str(e)) from None
    own = getattr(test, "templates", None) or getattr(train, "templates", None)
    try:
        templates = get_templates(d.templates if d.templates is not None else own or "openai_imagenet")
    except (KeyError, ValueError) as e:
        why = "" if d.templates is not None else f"unset, and the reference dataset's own set {own!r} fails: "
        raise cfg.error("data.templates", why + e.args[0]) from None
    if d.validation_fraction > 0:
        train, val = split_holdout(train, d.validation_fraction, d.seed)
        val.name = f"{d.name}-val"
        evalsets.append(EvalSet(f"{d.name}-val", "validation", val))
    return PreparedData(list(classnames), templates, train, evalsets)


def _relabel(train: LabeledDataset, classnames: list[str]) -> LabeledDataset:
    """Training labels indexed into the reference class list (the head's row order)."""
    if list(train.classnames) == list(classnames):
        return train
    unknown = [c for c in train.classnames if c not in classnames]
    if unknown or len(train.classnames) != len(classnames):
        raise ConfigError(f"data.train has {len(train.classnames)} classes but data.classnames has "
                          f"{len(classnames)}" + (f"; {unknown[:5]} are not in data.classnames" if unknown else ""))
    index = [classnames.index(c) for c in train.classnames]
    out = train.subset(range(len(train)))
    out.samples = [(ref, index[y]) for ref, y in train.samples]
    out.classnames = list(classnames)
    return out


def _projection(classnames, ds: LabeledDataset, spec: DatasetSpec, where: str):
    """None where the dataset scores reference logits itself: same classes, or a
    projection of its own (ImageNet-R/A subsets, ObjectNet's grouped classes).

    A set must cover every reference class unless its spec says ``subset: true``: a
    set whose classes (its folders, or a user set's declared classes that no sample
    has) lack some reference classes is an error, not a silent subset score."""
    if ds.projection is not None and spec.class_map is None:
        return None  # the dataset's own projection: a subset by design
    if not spec.subset:
        present = set(ds.classnames)
        if DATASETS.info(spec["kind"]).get("declared_classes"):  # a class the user listed that no sample has is missing
            labels = {y for _, y in ds.samples}
            present = {c for i, c in enumerate(ds.classnames) if i in labels}
        class_map = spec.class_map or {}
        targets = set()
        for c in present:
            m = class_map.get(c, c)
            targets.update([m] if isinstance(m, (str, int)) else m)
        missing = [c for i, c in enumerate(classnames) if c not in targets and i not in targets]
        if missing:
            raise ConfigError(f"{where}: {len(missing)} of the {len(classnames)} reference classes have no "
                              f"samples in this set ({', '.join(map(repr, missing[:5]))}"
                              f"{', ...' if len(missing) > 5 else ''}); add the missing class folders or "
                              "records, or set 'subset: true' on this dataset to score it on the classes "
                              "it has")
    if spec.class_map is None and list(ds.classnames) == list(classnames):
        return None
    try:
        return build_projection(classnames, ds.classnames, spec.class_map, name=where)
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None


# --quick: the same pipeline on a slice of every set, to check a config end to end in minutes
QUICK_TRAIN, QUICK_EVAL, QUICK_BATCH, QUICK_ALPHAS = 48, 48, 16, (0.0, 0.5, 1.0)


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


def quick_slice(dataset: LabeledDataset, n: int, seed: int = 0) -> LabeledDataset:
    """At most ``n`` samples, drawn class by class in turn (seeded), so every class
    appears while there is room."""
    perms = list(per_class_permutations(dataset.labels, seed).values())
    keep: list[int] = []
    for rank in range(max((len(p) for p in perms), default=0)):
        keep += [p[rank] for p in perms if rank < len(p)]
        if len(keep) >= n:
            break
    return dataset.subset(sorted(keep[:n]))


def _quick_data(data: PreparedData, seed: int) -> PreparedData:
    evalsets = [EvalSet(e.name, e.role, quick_slice(e.dataset, QUICK_EVAL, seed), e.projection)
                for e in data.evalsets]
    return PreparedData(data.classnames, data.templates, quick_slice(data.train, QUICK_TRAIN, seed), evalsets)


def build_zeroshot_model(backbone: Backbone, classnames, templates, *, cache: bool = True) -> Classifier:
    """Classifier(encoder, zero-shot head) for the given classes and prompts."""
    return Classifier(backbone.encoder, zeroshot_head(backbone, classnames, templates, cache=cache))


class ZeroShotModels:
    """The zero-shot model each fine-tune starts from and is mixed with, with its theta_0:
    the classifier with the zero-shot head (objective ce), or, built on first use, the
    model that also carries its text tower (objective flyp: ``train.flyp.flyp_model``).
    They share the backbone's modules, so handing one out restores the others' theta_0
    (an export of the one never carries the other's mixed text tower)."""

    def __init__(self, backbone: Backbone, data: PreparedData, cfg: RunConfig, device: torch.device):
        self.backbone, self.data, self.main_recipe, self.device = backbone, data, cfg.finetune, device
        model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=cfg.head_cache).to(device)
        self.models = {"ce": (model, _state_copy(model))}

    @property
    def main(self) -> Classifier:
        """The main fine-tune's zero-shot model (the others' theta_0 restored)."""
        return self.of(self.main_recipe)[0]

    def of(self, ft_cfg: FinetuneConfig) -> tuple[Classifier, dict[str, torch.Tensor]]:
        """(zero-shot model, theta_0) for a fine-tune of recipe ``ft_cfg``."""
        if ft_cfg.objective not in self.models:
            from wiseft.train import flyp_model

            flyp = flyp_model(self.backbone, self.data.classnames, self.data.templates).to(self.device)
            self.models[ft_cfg.objective] = (flyp, _state_copy(flyp))
        for objective, (model, theta_0) in self.models.items():
            if objective != ft_cfg.objective:
                model.load_state_dict(theta_0)
        return self.models[ft_cfg.objective]


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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
    reused = {name for name in runs if _reusable(cfg, name)}
    computed = precision_text(precisions, device)  # the plan's and summary.md's lines
    log.info("%s\n%s", plan_text(cfg, data, runs, reused, quick), computed)

    with clock("model load"):
        backbone = load_backbone(cfg.backbone)
    # inputs are valid and the model loaded: now the run directory is this process's, and written to
    if main_process:
        held.enter_context(hold(run_dir, "run directory"))
    results_path = _start_run_dir(cfg, runs, reused, main_process)
    with clock("zero-shot head"):
        zs = ZeroShotModels(backbone, data, cfg, device)
        model, theta_0 = zs.of(cfg.finetune)
    estimate = estimate_run(model, theta_0, backbone, data, cfg, runs, reused) if main_process else {}
    provenance = _provenance(cfg, data, quick, device, precisions)

    records: list[Record] = []
    zeroshot: dict = {}  # alpha = 0 is theta_0 for every fine-tune: scored once, reused by every sweep
    merges = cfg.merge_runs()
    kept: dict[str, dict[str, torch.Tensor]] = {}  # the fine-tunes the merges read
    for name, ft_cfg in runs.items():
        with clock(f"fine-tune {name}"):
            theta_1 = _finetuned_state(name, ft_cfg, *zs.of(ft_cfg), data, backbone, cfg, run_dir, progress)
        if name == "finetuned" or any(name in m.models for m in merges):
            kept[name] = theta_1  # the main one is exported below; others are dropped after their sweep
        with clock(f"sweep {name}"):
            settings = SweepSettings.from_config(cfg.evaluation, progress=progress, model_name=name,
                                                 linear=ft_cfg.mode == "linear",
                                                 allow_extrapolation=cfg.allow_extrapolation,
                                                 provenance=_sweep_provenance(provenance, ft_cfg, cfg, name, theta_1))
            new = sweep(*zs.of(ft_cfg), theta_1, data.evalsets, cfg.alphas, backbone, settings=settings,
                        zeroshot=zeroshot)
        _append(results_path, new)
        records += new
    if merges:
        with clock("merges"):
            records += _merge_records(cfg, merges, (model, backbone, theta_0, kept), data, records, results_path,
                                      progress, provenance)

    from wiseft.report import select_alpha

    selected = {name: select_alpha(records, name, fixed=cfg.select_alpha) for name in runs}
    export_dir = None
    if main_process:  # under torchrun every process holds the records; rank 0 writes
        _write_summary(cfg, records, selected, quick, computed)
        if cfg.export:
            with clock("export"):
                export_dir = _export(cfg, data, (zs.main, backbone, theta_0, kept["finetuned"]),
                                     selected["finetuned"], records)
    return RunResult(run_dir, records, selected, export_dir, clock.times, estimate)


def _append(results_path: Path, records: list[Record]) -> None:
    """Append records to the run's results (under torchrun: by rank 0, which every process's equal)."""
    if current().main:
        append_records(results_path, records)


def _export(cfg: RunConfig, data: PreparedData, weights: tuple, alpha: float, records: list[Record]) -> Path:
    """Export the main fine-tune's WiSE-FT model at ``alpha``, with its validation
    temperature; ``weights``: (model, backbone, theta_0, theta_1)."""
    model, backbone, theta_0, theta_1 = weights
    interpolator_for(theta_0, theta_1, allow_extrapolation=cfg.allow_extrapolation).load_into(model, alpha)
    rederive_head(model)  # FLYP: the head of the mixed text tower
    model = plain_classifier(model)
    meta = {**_meta(cfg, data, alpha), "temperature": _temperature(records, "finetuned", alpha)}
    return export_model(model, backbone, meta, Path(cfg.output_dir) / "export")


def _merge_records(cfg: RunConfig, merges: list[MergeRun], weights: tuple, data: PreparedData,
                   records: list[Record], results_path: Path, progress: bool,
                   provenance: dict[str, Any]) -> list[Record]:
    """The records of each ``merges:`` entry, appended to the results as each is done:
    searched on validation and scored at its chosen point (``evaluate.search_merge``), or,
    for WiSE-FT itself (linear, a global alpha), copied from its fine-tune's sweep
    (``evaluate.reuse_sweep``). ``weights``: (model, backbone, theta_0, fine-tunes by name)."""
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
        _append(results_path, new)
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
        cfg, data = quick_config(cfg), _quick_data(data, cfg.data.seed)
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


def _temperature(records: list[Record], model: str, alpha: float) -> float | None:
    """The temperature fitted on validation for ``model`` at ``alpha`` (None if not fitted)."""
    found = [r.value for r in records if r.model == model and r.metric == "temperature" and r.alpha is not None
             and abs(r.alpha - alpha) < 1e-9]
    return found[0] if found else None


def _meta(cfg: RunConfig, data: PreparedData, alpha: float) -> dict[str, Any]:
    return {"classnames": data.classnames, "templates": list(data.templates), "alpha": alpha,
            "config_hash": cfg.config_hash(), "finetune": cfg.finetune.model_dump()}


def checkpoint_paths(cfg: RunConfig, name: str) -> tuple[Path, Path]:
    """(final weights, training-checkpoint folder) of a fine-tuning run. The folder is
    named by the run's train key, so changed settings start afresh and the same
    settings resume where an interrupted run stopped; a config as written
    (``precision: auto``) names the folder a run on this machine uses."""
    ckpts = Path(cfg.output_dir) / "checkpoints"
    return ckpts / f"{name}.safetensors", ckpts / f"train_{name}_{train_key(cfg, name)}"


def train_key(cfg: RunConfig, name: str) -> str:
    """``cfg.train_key(name)`` of the run ``cfg`` describes on this machine: with
    ``precision: auto`` resolved as :func:`run` resolves it (its device: ``cfg.device``, or
    CUDA where there is one for 'auto')."""
    if "auto" in {cfg.evaluation.precision, *(ft.precision for ft in cfg.finetune_runs().values())}:
        device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
        cfg = resolve_precisions(cfg, torch.device(device))[0]
    return cfg.train_key(name)


def _reusable(cfg: RunConfig, name: str) -> bool:
    ckpt, _ = checkpoint_paths(cfg, name)
    return ckpt.exists() and read_meta(ckpt).get("train_key") == train_key(cfg, name)


def _finetuned_state(name, ft_cfg, model, theta_0, data, backbone, cfg, run_dir: Path, progress) -> dict[str, torch.Tensor]:
    """Fine-tune (resuming an interrupted run), or reuse the weights a previous run with
    the same settings wrote."""
    ckpt, _ = checkpoint_paths(cfg, name)
    if _reusable(cfg, name):
        log.info("%s: reusing %s", name, ckpt)
        return load_state(ckpt)
    return train_and_save(cfg, name, (model, theta_0, backbone), data.train, resume=True, progress=progress)


def train_and_save(cfg: RunConfig, name: str, start: tuple, train: LabeledDataset, *, resume: bool | str | Path,
                   progress: bool = True) -> dict[str, torch.Tensor]:
    """Fine-tune run ``name`` of ``cfg`` from ``start`` = (zero-shot model, its theta_0,
    backbone) and write its weights with the run's train key to
    ``OUTPUT_DIR/checkpoints/NAME.safetensors`` (rank 0 under torchrun); ``wiseft run`` and
    ``wiseft train`` both train through here. Returns the weights a sweep mixes: the whole
    model's, or a LoRA fine-tune's head and adapter factors."""
    model, theta_0, backbone = start
    ckpt, train_dir = checkpoint_paths(cfg, name)
    model.load_state_dict(theta_0)
    tuned = finetune(model, train, backbone, cfg.finetune_runs()[name],
                     TrainRun(log_path=Path(cfg.output_dir) / f"train_{name}.jsonl", progress=progress,
                              checkpoint_dir=train_dir, resume=resume, name=name))
    state = {k: v.detach().clone() for k, v in finetuned_state(tuned).items()}  # LoRA: head and adapter factors
    if current().main:  # under torchrun every process holds the same weights; one writes them
        searched = getattr(tuned, "linear_probe", None)  # mode linear's L-BFGS search: C, validation accuracy
        save_state(ckpt, state, {"train_key": train_key(cfg, name), **({"linear_probe": searched} if searched else {})})
    barrier()
    return state
