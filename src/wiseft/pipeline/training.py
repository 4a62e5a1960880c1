"""The training driver ``wiseft run`` and ``wiseft train`` share: the zero-shot models
each fine-tune starts from, the checkpoint paths named by the train key, reuse of
finished weights, and training a run's fine-tunes (on every process under torchrun)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from wiseft.backbones import Backbone
from wiseft.config import FinetuneConfig, RunConfig
from wiseft.data import LabeledDataset
from wiseft.heads import Classifier, build_zeroshot_model
from wiseft.io import Tracker, load_state, open_tracker, read_meta, save_state
from wiseft.pipeline.plan import resolve_precisions
from wiseft.pipeline.prepare import PreparedData
from wiseft.runtime import barrier, current
from wiseft.train import TrainRun, finetune, finetuned_state

log = logging.getLogger("wiseft")


class ZeroShotModels:
    """The zero-shot model each fine-tune starts from and is mixed with, with its theta_0:
    the classifier with the zero-shot head (objective ce), or, built on first use, the
    model that also carries its text tower (objectives flyp and contrastive:
    ``train.flyp.flyp_model``). They share the backbone's modules, so handing one out
    restores the others' theta_0 (an export of the one never carries the other's mixed
    text tower)."""

    def __init__(self, backbone: Backbone, data: PreparedData, cfg: RunConfig, device: torch.device):
        self.backbone, self.data, self.main_recipe, self.device = backbone, data, cfg.finetune, device
        model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=cfg.head_cache).to(device)
        self.models = {"head": (model, _state_copy(model))}

    @property
    def main(self) -> Classifier:
        """The main fine-tune's zero-shot model (the others' theta_0 restored)."""
        return self.of(self.main_recipe)[0]

    def of(self, ft_cfg: FinetuneConfig) -> tuple[Classifier, dict[str, torch.Tensor]]:
        """(zero-shot model, theta_0) for a fine-tune of recipe ``ft_cfg``."""
        kind = "head" if ft_cfg.objective == "ce" else "towers"  # flyp and contrastive train the same model
        if kind not in self.models:
            from wiseft.train import flyp_model

            towers = flyp_model(self.backbone, self.data.classnames, self.data.templates).to(self.device)
            self.models[kind] = (towers, _state_copy(towers))
        for other, (model, theta_0) in self.models.items():
            if other != kind:
                model.load_state_dict(theta_0)
        return self.models[kind]


def _state_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


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


def reusable(cfg: RunConfig, name: str) -> bool:
    ckpt, _ = checkpoint_paths(cfg, name)
    return ckpt.exists() and read_meta(ckpt).get("train_key") == train_key(cfg, name)


def finetuned_weights(cfg: RunConfig, name: str, start: tuple, train: LabeledDataset, *,
                      progress: bool = True, tracker: Tracker | None = None) -> dict[str, torch.Tensor]:
    """Fine-tune run ``name`` from ``start`` = (zero-shot model, its theta_0, backbone),
    resuming an interrupted run, or reuse the weights a previous run with the same
    settings wrote. ``tracker`` also gets the training metrics (``TrainRun.tracker``)."""
    ckpt, _ = checkpoint_paths(cfg, name)
    if reusable(cfg, name):
        log.info("%s: reusing %s", name, ckpt)
        return load_state(ckpt)
    return train_and_save(cfg, name, start, train, resume=True, progress=progress, tracker=tracker)


def train_and_save(cfg: RunConfig, name: str, start: tuple, train: LabeledDataset, *, resume: bool | str | Path,
                   progress: bool = True, tracker: Tracker | None = None) -> dict[str, torch.Tensor]:
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
                              checkpoint_dir=train_dir, resume=resume, name=name, tracker=tracker))
    state = {k: v.detach().clone() for k, v in finetuned_state(tuned).items()}  # LoRA: head and adapter factors
    if current().main:  # under torchrun every process holds the same weights; one writes them
        searched = getattr(tuned, "linear_probe", None)  # mode linear's L-BFGS search: C, validation accuracy
        save_state(ckpt, state, {"train_key": train_key(cfg, name), **({"linear_probe": searched} if searched else {})})
    barrier()
    return state


def train_from_config(cfg: RunConfig, *, names: list[str] | None = None, resume: bool = False,
                      fresh: bool = False, progress: bool = True) -> dict[str, Path]:
    """Fine-tune the config's runs (all, or ``names``) and write each one's weights.

    Checkpoints go to ``OUTPUT_DIR/checkpoints/train_NAME_KEY/`` (KEY: the run's train key), the metrics log to
    ``OUTPUT_DIR/train_NAME.jsonl``. Every process of a torchrun launch calls this.

    Example:
        >>> train_from_config(load_config("config.yaml"), resume=True)
    """
    from wiseft.backbones import load_backbone
    from wiseft.io import clear_dir, hold
    from wiseft.pipeline import checkpoint_paths, prepare_data, resolve_precisions
    from wiseft.runtime import barrier, init_distributed

    info, device = init_distributed(cfg.device)
    cfg, _ = resolve_precisions(cfg, device)  # the train keys of what runs, as wiseft run's
    runs = cfg.finetune_runs()
    unknown = [n for n in names or [] if n not in runs]
    if unknown:
        raise ValueError(f"no fine-tuning run named {unknown[0]!r}; the config has {sorted(runs)}")
    run_dir = Path(cfg.output_dir)
    data = prepare_data(cfg)
    backbone = load_backbone(cfg.backbone)
    zs = ZeroShotModels(backbone, data, cfg, device)  # FLYP, contrastive: the model with its text tower
    out = {}
    # the config's trackers (rank 0's) get each fine-tune's metrics, as in wiseft run
    with open_tracker(cfg.tracking, run_dir, params=cfg.model_dump(mode="json")) as tracker:
        for name in names or list(runs):
            final, ckpt_dir = checkpoint_paths(cfg, name)
            if fresh and info.main and ckpt_dir.exists():
                with hold(ckpt_dir, "training-checkpoint folder"):  # never under a process training there now
                    clear_dir(ckpt_dir)
                (run_dir / f"train_{name}.jsonl").unlink(missing_ok=True)
            barrier()
            train_and_save(cfg, name, (*zs.of(runs[name]), backbone), data.train, resume=resume, progress=progress,
                           tracker=tracker)
            out[name] = final
            if info.main:
                log.info("%s: weights in %s", name, final)
    return out
