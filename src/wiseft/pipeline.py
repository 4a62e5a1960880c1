"""The main job: zero-shot head, fine-tune, alpha sweep, records, summary, export."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .backbones.base import Backbone, load_backbone
from .checkpoint import export_model, load_state, read_meta, save_state
from .config import ConfigError, RunConfig, load_config
from .data.base import (DataError, LabeledDataset, build_dataset, build_projection, per_class_permutations,
                        read_classnames, split_holdout)
from .evaluate import EvalSet, sweep
from .finetune import finetune
from .heads import Classifier, zeroshot_head
from .results import QUICK_BANNER, Record, append_records, package_versions, read_records, summary_table
from .templates import get_templates, templates_hash

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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Build every dataset and check class lists; errors name the dataset key."""
    d = cfg.data
    try:
        templates = get_templates(d.templates)
    except (KeyError, ValueError) as e:
        raise ConfigError(f"data.templates: {e.args[0]}") from None
    try:
        classnames = read_classnames(d.classnames, cfg.base_dir)
        train = build_dataset(d.train, name=f"{d.name}-train", base_dir=cfg.base_dir)
        classnames = classnames or train.classnames
        train = _relabel(train, classnames)
        test = build_dataset(d.test, name=d.name, base_dir=cfg.base_dir)
        evalsets = [EvalSet(d.name, "reference", test, _projection(classnames, test, d.test, "data.test"))]
        for name, spec in d.shifts.items():
            ds = build_dataset(spec, name=name, base_dir=cfg.base_dir)
            evalsets.append(EvalSet(name, "shift", ds, _projection(classnames, ds, spec, f"data.shifts.{name}")))
    except DataError as e:
        raise ConfigError(str(e)) from None
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


def _projection(classnames, ds: LabeledDataset, spec: dict, where: str):
    """None where the dataset scores reference logits itself: same classes, or a
    projection of its own (ImageNet-R/A subsets, ObjectNet's grouped classes)."""
    if "class_map" not in spec and (list(ds.classnames) == list(classnames) or ds.projection is not None):
        return None
    try:
        return build_projection(classnames, ds.classnames, spec.get("class_map"), name=where)
    except DataError as e:
        raise ConfigError(f"{where}: {e}") from None


# --quick: the same pipeline on a slice of every set, to check a config end to end in minutes
QUICK_TRAIN, QUICK_EVAL, QUICK_BATCH, QUICK_ALPHAS = 48, 48, 16, (0.0, 0.5, 1.0)


def quick_config(cfg: RunConfig) -> RunConfig:
    """The settings of a quick run: one short epoch per fine-tune (a few steps), three
    alphas, and a run directory of its own (``OUTPUT_DIR-quick``), so a quick check never
    touches a real run's records or checkpoints."""
    short = {"epochs": 1, "batch_size": min(cfg.finetune.batch_size, QUICK_BATCH), "micro_batch_size": None,
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


def run(cfg: RunConfig | str | Path, *, progress: bool = True, quick: bool = False) -> RunResult:
    """Run the whole WiSE-FT pipeline described by a config (or a YAML path).

    ``quick=True`` runs the same code path on a slice of every set (a few dozen
    examples), a few steps per fine-tune and three alphas, into ``OUTPUT_DIR-quick``;
    its records carry ``provenance["quick"] = True`` and its report says so.

    Example:
        >>> result = run("examples/bbc_news.yaml")
        >>> result.selected_alpha
    """
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg)
    data = prepare_data(cfg)
    if quick:
        cfg, data = quick_config(cfg), _quick_data(data, cfg.data.seed)
    run_dir = Path(cfg.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    results_path = run_dir / "results.jsonl"
    if results_path.exists():
        results_path.unlink()  # a rerun replaces its records; checkpoints are reused below

    device = resolve_device(cfg.device)
    backbone = load_backbone(cfg.backbone)
    model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=cfg.head_cache).to(device)
    theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    provenance = {"backbone": cfg.backbone.model_dump(), "templates_hash": templates_hash(data.templates),
                  "config_hash": cfg.config_hash(), "versions": package_versions(), **({"quick": True} if quick else {})}

    records: list[Record] = []
    runs = cfg.finetune_runs()
    for name, ft_cfg in runs.items():
        theta_1 = _finetuned_state(name, ft_cfg, model, theta_0, data, backbone, cfg, run_dir, progress)
        if name == "finetuned":
            theta_main = theta_1  # exported below; variants' weights are dropped after their sweep
        new = sweep(model, theta_0, theta_1, data.evalsets, cfg.alphas, backbone, model_name=name,
                    linear=ft_cfg.mode == "linear", batch_size=cfg.evaluation.batch_size,
                    precision=cfg.evaluation.precision, cache=cfg.evaluation.cache,
                    num_workers=cfg.evaluation.num_workers, cache_dir=cfg.evaluation.cache_dir,
                    fp32_check=cfg.evaluation.fp32_check,
                    allow_extrapolation=cfg.allow_extrapolation,
                    provenance={**provenance, "mode": ft_cfg.mode}, progress=progress)
        append_records(results_path, new)
        records += new

    from .robustness import select_alpha

    selected = {name: select_alpha(records, name, fixed=cfg.select_alpha) for name in runs}
    banner = QUICK_BANNER + "\n\n" if quick else ""
    (run_dir / "summary.md").write_text(banner + summary_table(records) + "\n\nselected alpha (on "
                                        f"{cfg.data.name}-val): " + json.dumps(selected) + "\n")
    export_dir = None
    if cfg.export:
        from .merge import Interpolator

        alpha = selected["finetuned"]
        Interpolator(theta_0, theta_main, allow_extrapolation=cfg.allow_extrapolation).load_into(model, alpha)
        export_dir = export_model(model, backbone, _meta(cfg, data, alpha), run_dir / "export")
    return RunResult(run_dir, records, selected, export_dir)


def _meta(cfg: RunConfig, data: PreparedData, alpha: float) -> dict[str, Any]:
    return {"classnames": data.classnames, "templates": list(data.templates), "alpha": alpha,
            "config_hash": cfg.config_hash(), "finetune": cfg.finetune.model_dump()}


def checkpoint_paths(cfg: RunConfig, name: str) -> tuple[Path, Path]:
    """(final weights, training-checkpoint folder) of a fine-tuning run. The folder is
    named by the run's train key, so changed settings start afresh and the same
    settings resume where an interrupted run stopped."""
    ckpts = Path(cfg.output_dir) / "checkpoints"
    return ckpts / f"{name}.safetensors", ckpts / f"train_{name}_{cfg.train_key(name)}"


def _finetuned_state(name, ft_cfg, model, theta_0, data, backbone, cfg, run_dir: Path, progress) -> dict[str, torch.Tensor]:
    """Fine-tune (resuming an interrupted run), or reuse the weights a previous run with
    the same settings wrote."""
    ckpt, train_dir = checkpoint_paths(cfg, name)
    key = cfg.train_key(name)
    if ckpt.exists() and read_meta(ckpt).get("train_key") == key:
        log.info("reusing %s", ckpt)
        return load_state(ckpt)
    model.load_state_dict(theta_0)
    tuned = finetune(model, data.train, backbone, ft_cfg, log_path=run_dir / f"train_{name}.jsonl",
                     progress=progress, checkpoint_dir=train_dir, resume=True)
    state = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
    save_state(ckpt, state, {"train_key": key})
    return state


def summarize(run_dir: str | Path) -> str:
    """The summary table of a finished run, from its records alone."""
    return summary_table(read_records(run_dir))
