"""The training loop: one stage (a module, a dataset, a number of epochs), on one
process or many, resumable at any optimizer step."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.utils.data import DataLoader, Dataset

from wiseft.config import FinetuneConfig
from wiseft.core import WiseftError, progress_bar
from wiseft.data import check_unreadable
from wiseft.runtime import (
    PrecisionChoice,
    all_gather_objects,
    all_reduce_sum,
    autocast,
    choose_precision,
    current,
    device_of,
    to_device,
)
from wiseft.train.checkpoints import (
    FORMAT,
    CheckpointDir,
    ResumeError,
    check_same_trajectory,
    load_training_state,
    rng_state,
    set_rng_state,
)
from wiseft.train.data import (
    IGNORE_LABEL,
    BatchPlan,
    MicroBatch,
    PlanSampler,
    SeededSamples,
    SkipUnreadable,
    draws_random_numbers,
    micro_batch_seed,
    resolve_batch,
)
from wiseft.train.logs import MetricLog
from wiseft.train.methods import EMA, ZeroShotL2, adamw, param_groups
from wiseft.train.parallel import freeze_unreached, wrap_model
from wiseft.train.schedule import cosine_lr

log = logging.getLogger("wiseft")
# test hook: SIGKILL this process right after the given optimizer step (fault-tolerance tests)
KILL_ENV = "WISEFT_FAULT_KILL_AFTER_STEP"


class DivergedError(WiseftError):
    """The loss became NaN or Inf: training stopped at that step, without saving it."""


@dataclass(frozen=True)
class Stage:
    """One stage of fine-tuning: its name, length and peak learning rate; ``loss`` maps
    (outputs, labels) to the micro-batch's summed loss (None: cross-entropy with the
    recipe's label smoothing)."""

    name: str
    epochs: int
    lr: float
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None


def finetune_precision(cfg: FinetuneConfig, device: torch.device) -> PrecisionChoice:
    """The precision a fine-tune runs in on ``device``: ``runtime.choose_precision``, and
    fp32 for ``auto`` when ``deterministic``. An emulated explicit choice warns here."""
    if cfg.precision == "auto" and cfg.deterministic:
        return PrecisionChoice("fp32", "auto", "auto: deterministic runs fp32")
    return choose_precision(cfg.precision, device)


def resolved_recipe(cfg: FinetuneConfig, device: torch.device) -> FinetuneConfig:
    """``cfg`` with its precision as it runs on ``device`` (:func:`finetune_precision`)."""
    chosen = finetune_precision(cfg, device).precision
    return cfg if chosen == cfg.precision else cfg.model_copy(update={"precision": chosen})


class Trainer:
    """Trains ``module`` in place on ``dataset`` for one stage.

    Example:
        >>> Trainer(model, train_set, collate, cfg, Stage("e2e", 10, 3e-5)).fit()
    """

    def __init__(self, module: torch.nn.Module, dataset: Dataset, collate: Callable, cfg: FinetuneConfig,
                 stage: Stage, *, checkpoints: CheckpointDir | None = None, metrics: MetricLog | None = None,
                 progress: bool = True, label: str | None = None):
        cfg = resolved_recipe(cfg, device_of(module))  # precision auto, resolved once for the stage
        self.cfg, self.stage, self.collate = cfg, stage, SkipUnreadable(collate)
        # unreadable samples are skipped and counted; more than this fraction of the set is an error
        # (set from data.max_unreadable by the pipeline; None: no limit)
        self.max_unreadable = getattr(dataset, "max_unreadable", None)
        self.unreadable: dict[int, str] = {}  # sample index -> why, on this process
        self.label = f"{label} ({stage.name})" if label else stage.name  # names the run in logs and progress
        self.info, self.device = current(), device_of(module)
        self.checkpoints, self.metrics, self.progress = checkpoints, metrics or MetricLog(None), progress
        micro, self.accum = resolve_batch(cfg.batch_size, cfg.micro_batch_size, self.info.world)
        self.plan = BatchPlan(len(dataset), cfg.batch_size, self.info.world * self.accum, self.info.rank,
                              self.accum, cfg.seed)
        self.total = stage.epochs * self.plan.steps_per_epoch
        seeded = draws_random_numbers(dataset)
        self.data = SeededSamples(dataset, cfg.seed, seeded)
        if cfg.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.info.enabled and cfg.parallel == "ddp":
            self._freeze_unreached(module)
        if cfg.compile:
            module.compile()
        self.module = module
        self.model = wrap_model(module, cfg.parallel, self.device)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.opt = adamw(param_groups(module, cfg.weight_decay, cfg.weight_decay_exclusions), stage.lr,
                         self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.precision == "fp16")
        self.ema = EMA(named, cfg.ema_decay) if cfg.ema_decay else None
        self.l2 = ZeroShotL2(self.params, cfg.l2_to_zeroshot) if cfg.l2_to_zeroshot > 0 else None
        self.step = 0
        self._bad_step = torch.full((), _NONE, dtype=torch.long, device=self.device)  # first non-finite loss
        log.info("%s: %d samples, global batch %d = %d per device x %d devices x %d accumulation, %d steps; "
                 "%s", self.label, len(dataset), cfg.batch_size, micro, self.info.world, self.accum, self.total,
                 "random transform: seeded per sample" if seeded else "no random transform")

    def _freeze_unreached(self, module: torch.nn.Module) -> None:
        """Under DDP, freeze the parameters the model's output does not reach (found on the
        set's first readable sample, the same on every process): DDP stops otherwise."""
        state = random.getstate()  # the sample's fetch seeds Python's RNG
        try:
            inputs, _, _ = self.collate(self.data.__getitems__((0, (0,))))
        finally:
            random.setstate(state)
        inputs = to_device(inputs, self.device, channels_last=self.cfg.channels_last)
        unused = freeze_unreached(module, inputs)
        if unused:
            log.info("%s: %d parameters the output does not depend on are left out of training (%s)",
                     self.label, len(unused), ", ".join(unused[:4]) + (", ..." if len(unused) > 4 else ""))

    # -- state ---------------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to continue after ``self.step`` steps (all ranks must call)."""
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.opt, options=opts)
        return {"format": FORMAT, "stage": self.stage.name, "step": self.step, "total_steps": self.total,
                "model": model_sd, "optimizer": optim_sd, "ema": self.ema.state_dict() if self.ema else None,
                "scaler": self.scaler.state_dict(), "rng": all_gather_objects(rng_state()),
                "config": self.cfg.model_dump(mode="json"), "world_size": self.info.world}

    def load(self, path: Path) -> None:
        state = load_training_state(path)
        check_same_trajectory(state, self.cfg.model_dump(mode="json"), self.stage.name, path)
        if state["total_steps"] != self.total:
            raise ResumeError(f"cannot resume from {path}: it plans {state['total_steps']} steps, this run "
                              f"{self.total} (did the training set change?)")
        set_model_state_dict(self.model, state["model"], options=StateDictOptions(full_state_dict=True))
        # not strict: a parameter the output never reaches (BERT's pooler under mean pooling) has no
        # optimizer state, in the checkpoint as in an uninterrupted run (AdamW never stepped it)
        set_optimizer_state_dict(self.model, self.opt, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True, strict=False))
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        if state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        if len(state["rng"]) == self.info.world:
            set_rng_state(state["rng"][self.info.rank])
        else:
            log.warning("resuming on %d processes from %d: RNG streams are re-seeded", self.info.world,
                        len(state["rng"]))
            torch.manual_seed(self.cfg.seed + 7919 * state["step"] + self.info.rank)
        self.step = state["step"]
        self.metrics.truncate(self.stage.name, self.step)
        log.info("%s: resumed from %s at step %d of %d", self.label, path, self.step, self.total)

    def save(self, epoch_end: int | None) -> None:
        state = self.state()
        if self.info.main and self.checkpoints is not None:
            self.checkpoints.save(state, self.step, epoch_end)

    # -- training ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _grad_sync(self, enabled: bool):
        if enabled or not self.info.enabled:
            yield
        elif hasattr(self.model, "no_sync"):
            with self.model.no_sync():
                yield
        else:  # FSDP2
            self.model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.model.set_requires_gradient_sync(True)

    def _micro_step(self, inputs, labels, mb: MicroBatch, sync: bool) -> torch.Tensor:
        torch.manual_seed(micro_batch_seed(self.cfg.seed, self.step // self.plan.steps_per_epoch, mb))
        if mb.weight == 0:  # a placeholder that keeps ranks in step: marked for losses that see the batch whole
            labels = torch.full_like(labels, IGNORE_LABEL)
        with self._grad_sync(sync):
            with autocast(self.device, self.cfg.precision):
                logits = self.model(to_device(inputs, self.device, channels_last=self.cfg.channels_last))
            if self.stage.loss is None:
                loss = F.cross_entropy(logits.float(), labels.to(self.device), reduction="sum",
                                       label_smoothing=self.cfg.label_smoothing) * mb.weight
            else:
                loss = self.stage.loss(logits.float(), labels.to(self.device)) * mb.weight
            self.scaler.scale(loss).backward()
        return loss.detach()

    def train_step(self, batches, micro: list[MicroBatch]) -> tuple[torch.Tensor, float]:
        """One optimizer step over this rank's micro-batches; (loss share, lr)."""
        lr = cosine_lr(self.step, self.stage.lr, self.cfg.warmup_steps, self.total)
        for group in self.opt.param_groups:
            group["lr"] = lr
        # gradients are freed here, just before the forward pass reuses their memory: freed at
        # the end of a step instead, the allocator can hand them back to the OS and every step
        # pays page faults for its activations again
        self.opt.zero_grad(set_to_none=True)
        loss = torch.zeros((), device=self.device)
        for m, mb in enumerate(micro):
            inputs, labels, unreadable = next(batches)
            for i, why in unreadable:
                if i not in self.unreadable:
                    self.unreadable[i] = why
                    log.warning("%s: skipping unreadable training sample %s", self.label, why)
            loss += self._micro_step(inputs, labels, mb, sync=m == len(micro) - 1)
        self.scaler.unscale_(self.opt)
        if self.l2:
            self.l2.add_grad()
        if self.cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        if self.ema:
            self.ema.update()
        return loss, lr

    def _loader(self, epoch: int, start: int):
        return iter(DataLoader(self.data, batch_sampler=PlanSampler(self.plan, epoch, start),
                               collate_fn=self.collate, num_workers=self.cfg.num_workers,
                               pin_memory=self.device.type == "cuda",
                               generator=torch.Generator().manual_seed(self.cfg.seed + epoch)))

    def fit(self, resume_from: Path | None = None) -> None:
        """Train to the end of the stage, from ``resume_from`` if given; with EMA, the
        module ends holding the EMA weights."""
        if resume_from is not None:
            self.load(resume_from)
        self.model.train()
        spe = self.plan.steps_per_epoch
        bar = progress_bar(total=self.total, initial=self.step, desc=f"fine-tune {self.label}",
                           disable=not (self.progress and self.info.main), unit="step")
        meter = _Meter(self.device)
        while self.step < self.total:
            epoch, start = divmod(self.step, spe)
            batches = self._loader(epoch, start)
            for s, micro in enumerate(self.plan.epoch(epoch, start), start=start):
                loss, lr = self.train_step(batches, micro)
                self.step += 1
                # no sync here: the first step with a non-finite loss is checked where the loop syncs anyway
                self._bad_step = torch.minimum(self._bad_step, torch.where(
                    torch.isfinite(loss), torch.full_like(self._bad_step, _NONE),
                    torch.full_like(self._bad_step, self.step)))
                meter.add(loss, min(self.cfg.batch_size, self.plan.num_samples - s * self.cfg.batch_size))
                if self.step % self.cfg.log_every_steps == 0 or self.step == self.total:
                    self._log(meter, epoch, lr, bar)
                bar.update()
                with meter.paused():  # checkpoint writes do not count against throughput
                    self._maybe_save(s + 1 == spe, epoch)
                if os.environ.get(KILL_ENV) == str(self.step):
                    os.kill(os.getpid(), signal.SIGKILL)
        bar.close()
        self._check_health()
        self.opt.zero_grad(set_to_none=True)  # the trained module carries no gradients
        if self.ema:
            self.ema.copy_to_params()

    def _maybe_save(self, epoch_end: bool, epoch: int) -> None:
        every = self.cfg.save_every_steps
        if self.checkpoints is not None and (epoch_end or (every and self.step % every == 0)):
            self._check_health()  # a diverged run never overwrites its last good checkpoint
            self.save(epoch + 1 if epoch_end else None)

    def _log(self, meter: "_Meter", epoch: int, lr: float, bar) -> None:
        loss, rate, elapsed = meter.flush(self.info.world)
        unreadable = self._count_unreadable()
        if self.info.main:
            extra = {"unreadable": unreadable} if unreadable else {}
            self.metrics.write(stage=self.stage.name, step=self.step - 1, epoch=epoch, loss=loss, lr=lr,
                               samples_per_s=rate, elapsed_s=elapsed, **extra)
            bar.set_postfix(loss=f"{loss:.3f}", samples_per_s=f"{rate:.1f}")
        self._check_health(unreadable)

    def _count_unreadable(self) -> int:
        """Unreadable samples met so far, over all processes."""
        n = torch.tensor(float(len(self.unreadable)), device=self.device)
        return int(all_reduce_sum(n).item())

    def _check_health(self, unreadable: int | None = None) -> None:
        """Raise DivergedError at the first step whose loss was NaN or Inf, or the
        unreadable-input error when too much of the training set cannot be read.
        Every process calls it at the same points (it all-reduces)."""
        bad = self._bad_step.clone()
        if self.info.enabled:
            dist.all_reduce(bad, op=dist.ReduceOp.MIN)
        if int(bad) != _NONE:
            last = self.checkpoints.latest() if self.checkpoints is not None else None
            raise DivergedError(
                f"fine-tune {self.label} diverged: the loss is NaN or Inf at step {int(bad)} of {self.total} "
                f"(lr {self.stage.lr:g}); training stopped without saving that step"
                + (f"; the last good checkpoint is {last}" if last else "")
                + "; try a lower lr, grad_clip, or precision fp32")
        n = self._count_unreadable() if unreadable is None else unreadable
        if n:
            first = next(iter(self.unreadable.values()), "on another process")
            check_unreadable(n, self.plan.num_samples, self.max_unreadable, f"training set ({self.label})", first)


_NONE = 2 ** 62  # no step with a non-finite loss yet


class _Meter:
    """Loss and throughput over the steps since the last log line."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.steps = self.samples = 0
        self.start = self.t = time.perf_counter()

    def add(self, loss: torch.Tensor, samples: int) -> None:
        self.loss += loss
        self.steps += 1
        self.samples += samples

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self.t += time.perf_counter() - t

    def flush(self, world: int) -> tuple[float, float, float]:
        total = all_reduce_sum(self.loss.clone()).item() / world / max(1, self.steps)
        now = time.perf_counter()
        rate = self.samples / max(now - self.t, 1e-9)
        self.loss.zero_()
        self.steps = self.samples = 0
        self.t = now
        return total, rate, now - self.start
