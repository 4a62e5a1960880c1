"""Fine-tuning modes on top of the loop: end-to-end, linear head on frozen features,
and LP-FT (linear probe, then end-to-end from the probed head)."""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from wiseft.backbones import Backbone
from wiseft.config import FinetuneConfig
from wiseft.data import LabeledDataset, PairDataset
from wiseft.heads import Classifier, PromptClassifier
from wiseft.io import FanOut, Scoped, TensorBoardTracker, Tracker, hold, metric_key
from wiseft.runtime import all_gather_rows, current, deterministic_numerics, device_of
from wiseft.train.checkpoints import CheckpointDir, ResumeError, load_training_state
from wiseft.train.contrastive import ContrastiveError, ContrastiveModel, PairCollate, contrastive_loss
from wiseft.train.data import TensorSamples, kshot_subset, resolve_batch, stack_collate
from wiseft.train.features import compute_features
from wiseft.train.flyp import FlypError, FlypModel, PromptCollate, PromptPairs, check_flyp_model, flyp_loss
from wiseft.train.logs import MetricLog
from wiseft.train.loop import Stage, Trainer, resolved_recipe
from wiseft.train.lora import inject_lora
from wiseft.train.probe import search_linear_probe

log = logging.getLogger("wiseft")


@dataclass(frozen=True)
class TrainRun:
    """Where one fine-tuning run writes and how it reports (the settings of the run,
    as opposed to the :class:`FinetuneConfig` recipe).

    ``log_path``: the metrics log (JSON lines, or CSV for a ``.csv`` name);
    ``checkpoint_dir``: where resumable checkpoints go (none: no checkpoints);
    ``resume``: continue from the latest checkpoint there (``True``) or from a given
    checkpoint file; ``name``: labels the run in logs and progress (e.g. a variant's name);
    ``tracker``: an experiment tracker (``io.open_tracker``) that also gets the metrics, as
    ``train/NAME/STAGE/loss`` (and ``lr``, ``samples_per_s``); the caller closes it.

    Example:
        >>> TrainRun(log_path="runs/x/train.jsonl", checkpoint_dir="runs/x/ckpt", resume=True)
    """

    log_path: str | Path | None = None
    progress: bool = True
    checkpoint_dir: str | Path | None = None
    resume: bool | str | Path = False
    name: str | None = None
    tracker: Tracker | None = None


def finetune(model: Classifier, train: LabeledDataset | PairDataset, backbone: Backbone, cfg: FinetuneConfig,
             run: TrainRun | None = None) -> Classifier:
    """A fine-tuned copy of ``model`` (the input is left untouched).

    Defaults are the paper's ImageNet recipe: AdamW, lr 3e-5, weight decay 0.1 on every
    parameter, batch 512, 10 epochs, 500 warmup steps then per-step cosine decay,
    gradient clipping at 1.0. ``train`` is a labelled set, or for ``objective: contrastive``
    a set of (query, caption) pairs (:class:`~wiseft.data.PairDataset`). ``run`` says where the run writes and how it reports
    (:class:`TrainRun`: ``log_path``, ``progress``, ``checkpoint_dir``, ``resume``, ``name``).

    Runs on every process of a ``torchrun`` launch (DDP or FSDP over the initialised
    process group) and returns the full fine-tuned model on each. With
    ``run.checkpoint_dir`` it writes resumable checkpoints there; ``resume=True``
    continues from the latest one (or a given checkpoint file).

    Example:
        >>> ft = finetune(zeroshot_model, train_set, backbone, FinetuneConfig(epochs=1))
        >>> ft = finetune(zeroshot_model, train_set, backbone, cfg, TrainRun(checkpoint_dir="ckpt", resume=True))
    """
    run = run if run is not None else TrainRun()
    check_training_set(train, cfg.objective, backbone)
    cfg = resolved_recipe(cfg, device_of(model))
    info = current()
    if cfg.shots_per_class:
        train = kshot_subset(train, cfg.shots_per_class, cfg.shots_seed)
    root = Path(run.checkpoint_dir) if run.checkpoint_dir is not None else None
    # one process trains into a checkpoint folder at a time (under torchrun, rank 0 holds it)
    held = hold(root, "training-checkpoint folder") if root is not None and info.main else contextlib.nullcontext()
    with held:
        if root is not None and not run.resume and any(root.glob("*/*.pt")):
            raise ResumeError(f"{root} already holds training checkpoints: resume, or choose an empty folder")
        main = info.main  # under torchrun, rank 0 logs
        metrics = MetricLog(run.log_path if main else None, tracker=_tracker(cfg, run, root) if main else None)
        ctx = _Context(cfg, backbone, root, run, metrics)
        try:
            with deterministic(cfg.deterministic):
                torch.manual_seed(cfg.seed + info.rank)
                tuned = copy.deepcopy(model)
                if cfg.mode in ("linear", "lp-ft"):
                    _fit_linear(tuned, train, ctx, "linear" if cfg.mode == "linear" else "lp")
                if cfg.mode in ("e2e", "lp-ft"):
                    _fit_e2e(tuned, train, ctx, "e2e" if cfg.mode == "e2e" else "ft")
                if cfg.mode == "lora":
                    _fit_lora(tuned, train, ctx)
        finally:
            metrics.close()
    tuned.eval()
    return tuned


def _tracker(cfg: FinetuneConfig, run: TrainRun, root: Path | None) -> Tracker:
    """Where the metrics go besides the log: the run's tracker (``train/NAME/STAGE/...``) and,
    with ``finetune.tensorboard``, TensorBoard event files beside the log (``STAGE/...``; in
    a folder named as the log without its suffix)."""
    out: list[Tracker] = []
    if run.tracker is not None:
        out.append(Scoped(run.tracker, f"train/{metric_key(run.name)}/" if run.name else "train/"))
    if cfg.tensorboard:
        out.append(TensorBoardTracker(Path(run.log_path).with_suffix("") if run.log_path
                                      else (root or Path("runs")) / "tensorboard"))
    return FanOut(out)


def check_training_set(train, objective: str, backbone: Backbone) -> None:
    """ContrastiveError unless ``train`` is what ``objective`` trains on: pairs for
    contrastive (queries of the backbone's modality), labelled samples otherwise."""
    pairs = isinstance(train, PairDataset)
    if objective == "contrastive" and not pairs:
        raise ContrastiveError(f"objective contrastive trains on (query, caption) pairs (a PairDataset), not a "
                               f"{type(train).__name__}: give a pair set as the training data, or objective "
                               "flyp to train both towers against the class prompts")
    if objective != "contrastive" and pairs:
        raise ContrastiveError(f"objective {objective} needs class labels, and the training set "
                               f"{train.name or ''!r} holds (query, caption) pairs: use objective contrastive")
    if pairs and train.modality != backbone.modality:
        raise ContrastiveError(f"the training pairs' queries are {train.modality}s and backbone "
                               f"{backbone.spec.name!r} encodes {backbone.modality}s")


class _Context:
    """What every stage of one run shares: the recipe, the backbone, the run's settings
    and its metrics log."""

    def __init__(self, cfg: FinetuneConfig, backbone: Backbone, root: Path | None, run: TrainRun,
                 metrics: MetricLog):
        self.cfg, self.backbone, self.root, self.metrics = cfg, backbone, root, metrics
        self.resume, self.progress, self.name = run.resume, run.progress, run.name

    def checkpoints(self, stage: str) -> CheckpointDir | None:
        if self.root is None:
            return None
        return CheckpointDir(self.root / stage, self.cfg.keep_last, self.cfg.keep_epoch_checkpoints)

    def resume_path(self, stage: str) -> Path | None:
        """The checkpoint a stage continues from, if any."""
        if not self.resume:
            return None
        if isinstance(self.resume, (str, Path)) and not isinstance(self.resume, bool):
            path = Path(self.resume)
            if load_training_state(path)["stage"] == stage:
                return path
        ckpts = self.checkpoints(stage)
        return ckpts.latest() if ckpts is not None else None

    def trainer(self, module, dataset, collate, stage: Stage) -> Trainer:
        return Trainer(module, dataset, collate, self.cfg, stage, checkpoints=self.checkpoints(stage.name),
                       metrics=self.metrics, progress=self.progress, label=self.name)


def _fit_linear(tuned: Classifier, train: LabeledDataset, ctx: _Context, name: str) -> None:
    cfg = ctx.cfg
    micro, _ = resolve_batch(cfg.batch_size, cfg.micro_batch_size, current().world)
    feats, labels = sharded_features(tuned.encoder, train, ctx.backbone, micro, cfg, ctx.progress)
    if name == "linear" and cfg.linear_probe == "lbfgs":
        return _fit_lbfgs_probe(tuned, feats, labels, ctx)
    epochs, lr = (cfg.epochs, cfg.lr) if name == "linear" else (cfg.lp_epochs or cfg.epochs, cfg.lp_lr or cfg.lr)
    stage = Stage(name, epochs, lr)
    _fit(tuned.head, TensorSamples(feats, labels), stack_collate, ctx, stage)


def _fit_lbfgs_probe(tuned: Classifier, feats: torch.Tensor, labels: torch.Tensor, ctx: _Context) -> None:
    """The head replaced by CLIP's linear probe (``train.probe``), its C searched on a held-out
    part of the training features; every process computes the same one. The search is kept
    on the model as ``tuned.linear_probe`` (provenance)."""
    device = tuned.head.weight.device
    probe = search_linear_probe(feats.to(device), labels.to(device), tuned.head.out_features, seed=ctx.cfg.seed)
    with torch.no_grad():
        tuned.head.weight.copy_(probe.weight)
        tuned.head.bias.copy_(probe.bias)
    tuned.linear_probe = probe.provenance()
    log.info("linear probe: C = %.3g, validation accuracy %.4f (%d values of C tried)", probe.C,
             probe.val_accuracy, len(probe.tried))


def _fit_e2e(tuned: Classifier, train: LabeledDataset, ctx: _Context, name: str) -> None:
    cfg = ctx.cfg
    if cfg.objective == "flyp":
        return _fit_flyp(check_flyp_model(tuned), train, ctx)
    if cfg.objective == "contrastive":
        return _fit_contrastive(check_flyp_model(tuned, "contrastive"), train, ctx)
    if cfg.grad_checkpointing:
        enable_grad_checkpointing(tuned.encoder)
    stage = Stage(name, cfg.epochs, cfg.lr)
    _fit(tuned, train.with_transform(ctx.backbone.transform_train), ctx.backbone.collate, ctx, stage)


def _fit_lora(tuned: Classifier, train: LabeledDataset, ctx: _Context) -> None:
    """LoRA adapters on the encoder (its base weights frozen) and the full head, trained as in e2e."""
    inject_lora(tuned.encoder, ctx.backbone.spec.family, ctx.cfg.lora)
    _fit_e2e(tuned, train, ctx, "lora")


def _check_towers_parallel(ctx: _Context) -> None:
    """FlypError when FSDP would shard the towers model: FSDP2 refuses its 0-dim logit scale."""
    if ctx.cfg.parallel == "fsdp" and current().enabled:
        raise FlypError(f"objective {ctx.cfg.objective} under torchrun needs parallel: ddp: FSDP cannot shard "
                        "the learned logit scale (a 0-dim parameter)")


def _fit_flyp(tuned: PromptClassifier, train: LabeledDataset, ctx: _Context) -> None:
    """FLYP: both towers and the logit scale trained with the contrastive loss against
    class prompts (``train.flyp``), then the head re-derived from the trained text tower."""
    _check_towers_parallel(ctx)
    if ctx.cfg.grad_checkpointing:
        enable_grad_checkpointing(tuned.encoder)
    pairs = PromptPairs(train.with_transform(ctx.backbone.transform_train), tuned.classnames, tuned.templates)
    stage = Stage("flyp", ctx.cfg.epochs, ctx.cfg.lr, loss=flyp_loss)
    _fit(FlypModel(tuned), pairs, PromptCollate(ctx.backbone.collate, tuned.tokenize), ctx, stage)
    tuned.rederive_head()


def _fit_contrastive(tuned: PromptClassifier, train: PairDataset, ctx: _Context) -> None:
    """Contrastive fine-tuning: both towers and the logit scale trained with CLIP's
    symmetric InfoNCE over the (query, caption) pairs (``train.contrastive``; the logit
    scale clamped at 100 after every step), then the head re-derived from the trained
    text tower."""
    _check_towers_parallel(ctx)
    if ctx.cfg.grad_checkpointing:
        enable_grad_checkpointing(tuned.encoder)
    stage = Stage("contrastive", ctx.cfg.epochs, ctx.cfg.lr, loss=contrastive_loss)
    _fit(ContrastiveModel(tuned), train.with_transform(ctx.backbone.transform_train),
         PairCollate(ctx.backbone.collate, tuned.tokenize), ctx, stage, after_step=ContrastiveModel.clamp_logit_scale)
    tuned.rederive_head()


def _fit(module: torch.nn.Module, dataset, collate, ctx: _Context, stage: Stage,
         after_step: Callable[[torch.nn.Module], None] | None = None) -> None:
    """Train ``module`` in place; under FSDP a sharded copy trains and its full weights come
    back. ``after_step(module)`` runs after every optimizer step (on the copy that trains)."""
    sharded = ctx.cfg.parallel == "fsdp" and current().enabled
    work = copy.deepcopy(module) if sharded else module
    trainer = ctx.trainer(work, dataset, collate, stage)
    if after_step is not None:
        trainer.opt.register_step_post_hook(lambda *_: after_step(work))
    trainer.fit(ctx.resume_path(stage.name))
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        module.load_state_dict(get_model_state_dict(work, options=StateDictOptions(full_state_dict=True)))


def sharded_features(encoder: torch.nn.Module, train: LabeledDataset, backbone: Backbone, batch_size: int,
                     cfg: FinetuneConfig, progress: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``compute_features`` over the whole set, each process encoding every world-th sample."""
    info = current()
    precision = resolved_recipe(cfg, device_of(encoder)).precision  # the stage's precision, auto resolved
    kw = dict(precision=precision, num_workers=cfg.num_workers, progress=progress and info.main)
    if not info.enabled:
        return compute_features(encoder, train, backbone, batch_size, **kw)
    n = len(train)
    feats, labels = compute_features(encoder, train.subset(range(info.rank, n, info.world)), backbone,
                                     batch_size, keep_rows=True, **kw)
    parts = all_gather_rows(torch.cat([feats.cpu(), labels.float().cpu()[:, None]], 1))  # a label is exact in fp32
    full = torch.empty(n, feats.shape[1] + 1)
    for r, part in enumerate(parts):
        full[r::info.world] = part
    return full[:, :-1].contiguous(), full[:, -1].long()


def enable_grad_checkpointing(encoder: torch.nn.Module) -> None:
    """Activation checkpointing through the model family's own switch (open_clip's
    ``set_grad_checkpointing``, Hugging Face's ``gradient_checkpointing_enable``)."""
    for m in encoder.modules():
        if hasattr(m, "set_grad_checkpointing"):
            m.set_grad_checkpointing(True)
            return
        if hasattr(m, "gradient_checkpointing_enable"):
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            return
    raise ValueError(f"grad_checkpointing: {type(encoder).__name__} offers no activation checkpointing switch")


def deterministic(enabled: bool) -> contextlib.AbstractContextManager:
    """Deterministic kernels and no TF32 for the duration (fp32 runs that repeat exactly);
    strict: an op without a deterministic kernel is an error. Nothing when not ``enabled``."""
    return deterministic_numerics(strict=True) if enabled else contextlib.nullcontext()
