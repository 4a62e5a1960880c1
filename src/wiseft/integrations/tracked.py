"""The core the training-framework callbacks share: theta_0 snapshotted when training
starts, and when it ends the alpha sweep, records, summary, export and report that
``wiseft run`` writes, by the same code (``pipeline.finish_run``).

What is mixed depends on the model handed over:

- a model of a family wiseft knows (an open_clip CLIP, a Hugging Face CLIPModel or
  SiglipModel, a SentenceTransformer), trained as its library trains it: wiseft sees it
  as a backbone (``backbones.wrap_backbone``, the same modules) and builds around it the
  model ``objective: flyp`` mixes (``train.flyp_model``): the input tower, the text
  tower and the zero-shot head re-derived from the (mixed) text tower at every alpha;
- wiseft's own ``Classifier`` (``wiseft.build_zeroshot_model``: the encoder and the
  zero-shot head the user fine-tunes, as ``objective: ce``), with its ``backbone``;
- any other ``nn.Module``, with an ``evaluate(model) -> {dataset: {metric: value}}``:
  its whole state dict is mixed and ``evaluate`` scores every alpha.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from wiseft.backbones import Backbone, BackboneError, load_backbone, wrap_backbone
from wiseft.config import RunConfig, parse_config
from wiseft.core import WiseftError
from wiseft.heads import Classifier, PromptClassifier, build_zeroshot_model
from wiseft.integrations.plain import PlainRun
from wiseft.io import hold, save_state
from wiseft.pipeline import (
    RunResult,
    checkpoint_paths,
    finish_run,
    prepare_data,
    start_run,
    sweep_records,
    train_key,
)
from wiseft.runtime import barrier, current, device_of

log = logging.getLogger("wiseft")

Evaluate = Callable[[torch.nn.Module], Mapping[str, Mapping[str, float]]]


class IntegrationError(WiseftError):
    """A model, config or state dict the callbacks cannot work with; the message says why."""


class TrackedRun:
    """A fine-tune watched from outside: :meth:`start` snapshots theta_0, :meth:`epoch_end`
    (optional) sweeps the weights of the moment, :meth:`finish` sweeps theta_1 and writes
    what ``wiseft run`` writes. Built by :func:`track`; the callbacks drive one."""

    def __init__(self, model: torch.nn.Module, config: RunConfig | None, *, backbone: Backbone | None = None,
                 pretrained: dict | None = None, plain: PlainRun | None = None, report: bool = True):
        self.model, self.cfg, self.backbone, self.pretrained = model, config, backbone, pretrained
        self.plain, self.report = plain, report
        self.data = prepare_data(config) if config is not None else None  # data errors before training starts
        self.mixed: torch.nn.Module | None = None  # the model the sweep mixes (shares the user's modules)
        self.theta_0: dict[str, torch.Tensor] | None = None
        self.state = None
        self.result: RunResult | None = None
        self._held = contextlib.ExitStack()
        self._epoch_records: list = []

    # -- the three moments -------------------------------------------------------------
    def start(self) -> "TrackedRun":
        """Snapshot theta_0 (a CPU copy of the model as it is now, or of the named pretrained
        source) and take the run directory (rank 0)."""
        if self.theta_0 is not None:
            return self
        if self.plain is not None:
            self.mixed = self.model
            self.theta_0 = self._pretrained_state() or _cpu_copy(self.model.state_dict())
            check_matches(self.theta_0, self.model.state_dict())
            if current().main:
                self._held.enter_context(hold(self.plain.output_dir, "run directory"))
            return self
        with _modes_kept(self.model):
            self.mixed = self._zero_shot_model()
        self.theta_0 = self._pretrained_state() or _cpu_copy(self.mixed.state_dict())
        check_matches(self.theta_0, self.mixed.state_dict())
        if current().main:
            self._held.enter_context(hold(self.cfg.output_dir, "run directory"))
        return self

    def epoch_end(self, epoch: int) -> list:
        """Sweep the weights of the moment as fine-tune ``finetuned-epoch{epoch}`` (records
        appended to ``results.jsonl``); the model is left as it was."""
        self.start()
        name = f"finetuned-epoch{epoch}"
        with self._kept() as theta:
            if self.plain is not None:
                new = self.plain.sweep(self.model, self._theta_0_here(), theta, name)
            else:
                new = sweep_records(self._state(), name, self.cfg.finetune, theta)
                if current().main:
                    from wiseft.io import append_records

                    append_records(self._state().results_path, new)
        self._epoch_records += new
        return new

    def finish(self) -> RunResult:
        """theta_1 (the model now) swept against theta_0 on the evaluation sets; records,
        ``summary.md``, the export at the alpha selected on validation, and the report
        (rank 0 writes; every process of a process group must call it). The model is
        left with theta_1 and its train/eval modes."""
        if self.result is not None:
            return self.result
        self.start()
        try:
            with self._kept() as theta_1:
                if self.plain is not None:
                    self.result = self.plain.finish(self.model, self._theta_0_here(), theta_1, self._epoch_records)
                else:
                    self._save_checkpoint(theta_1)
                    state = self._state()
                    state.records = list(self._epoch_records)
                    self.result = finish_run(state, lambda name, ft_cfg: theta_1)
            if self.report and self.plain is None and current().main:
                from wiseft.report import build_report

                log.info("report: %s", build_report(self.result.run_dir))
        finally:
            self.close()
        return self.result

    def close(self) -> None:
        """Release the run directory."""
        self._held.close()

    def __enter__(self) -> "TrackedRun":
        return self.start()

    def __exit__(self, kind, value, tb) -> None:
        if kind is None and self.result is None:
            self.finish()  # leaving the block normally finishes, if finish() was not called
        self.close()

    # -- helpers -----------------------------------------------------------------------
    def _zero_shot_model(self) -> torch.nn.Module:
        """The model the sweep mixes, sharing the user's modules (see the module's docstring)."""
        model, data = self.model, self.data
        if isinstance(model, Classifier):
            return model
        from wiseft.train import flyp_model

        return flyp_model(self.backbone, data.classnames, data.templates).to(_device(model))

    def _pretrained_state(self) -> dict[str, torch.Tensor] | None:
        """theta_0 from the named pretrained source: the same model built on the backbone
        the spec loads (or, for a plain module, a checkpoint file's state dict)."""
        if self.pretrained is None:
            return None
        if self.plain is not None:
            from wiseft.io import load_state

            return _cpu_copy(load_state(self.pretrained))
        source = load_backbone(self.pretrained)
        if isinstance(self.mixed, PromptClassifier):
            from wiseft.train import flyp_model

            built = flyp_model(source, self.data.classnames, self.data.templates)
        else:
            built = build_zeroshot_model(source, self.data.classnames, self.data.templates,
                                         cache=self.cfg.head_cache)
        return _cpu_copy(built.state_dict())

    def _theta_0_here(self) -> dict[str, torch.Tensor]:
        """theta_0 on the model's device (where the sweep mixes it with theta_1), the CPU
        snapshot itself when the model is on the CPU."""
        device = _device(self.mixed)
        if device.type == "cpu":
            return self.theta_0
        return {k: v.to(device) for k, v in self.theta_0.items()}

    def _state(self):
        if self.state is None:
            self.state = start_run(self.cfg, self.data, self.backbone, _Fixed(self.mixed, self._theta_0_here()),
                                   device=_device(self.mixed), progress=current().main)
            self._held.callback(self.state.tracker.close)  # the run's trackers (tracking:) close with it
            self.cfg = self.state.cfg  # precision resolved for the model's device
        return self.state

    def _save_checkpoint(self, theta_1: dict[str, torch.Tensor]) -> None:
        """theta_1 where ``wiseft run`` looks for a finished fine-tune, with the config's
        train key: ``wiseft run OUTPUT_DIR/config.yaml`` reuses it (same weights, same records)."""
        cfg = self._state().cfg
        if current().main:
            save_state(checkpoint_paths(cfg, "finetuned")[0], theta_1, {"train_key": train_key(cfg, "finetuned")})
        barrier()

    @contextlib.contextmanager
    def _kept(self):
        """The mixed model's weights now (a copy), restored with every module's mode after."""
        model = self.mixed
        theta = {k: v.detach().clone() for k, v in model.state_dict().items()}
        with _modes_kept(self.model), _modes_kept(model):
            try:
                yield theta
            finally:
                model.load_state_dict(theta)


class _Fixed:
    """``pipeline.RunState.models`` for a model trained elsewhere: one model, one theta_0."""

    def __init__(self, model: torch.nn.Module, theta_0: dict[str, torch.Tensor]):
        self.main, self.theta_0 = model, theta_0

    def of(self, ft_cfg) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        return self.main, self.theta_0


def check_matches(theta_0: Mapping[str, torch.Tensor], state: Mapping[str, torch.Tensor]) -> None:
    """theta_0 and the model's state dict have the same keys and shapes, or an
    IntegrationError names the first key that differs."""
    for key in sorted(set(theta_0) | set(state)):
        if key not in state:
            raise IntegrationError(f"theta_0 has {key!r}, which the model's state dict does not have")
        if key not in theta_0:
            raise IntegrationError(f"the model's state dict has {key!r}, which theta_0 does not have")
        if tuple(theta_0[key].shape) != tuple(state[key].shape):
            raise IntegrationError(f"{key!r} is {tuple(state[key].shape)} in the model but "
                                   f"{tuple(theta_0[key].shape)} in theta_0")


def _cpu_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return device_of(model)
    except StopIteration:
        return torch.device("cpu")


@contextlib.contextmanager
def _modes_kept(model: torch.nn.Module):
    """Every submodule's train/eval mode restored after the block."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def track(model: torch.nn.Module, config: RunConfig | str | Path | Mapping[str, Any] | None = None, *,
          backbone: Backbone | None = None, pretrained: dict | None = None, evaluate: Evaluate | None = None,
          report: bool = True, **settings: Any) -> TrackedRun:
    """Watch a fine-tune run by a hand-written loop (or a framework's callback): theta_0 at
    the start, WiSE-FT's sweep, records, summary, export and report at the end.

    ``config``: a wiseft config (a RunConfig, a YAML path or a mapping); ``settings`` are
    top-level config keys over it (``data=``, ``output_dir=``, ``alphas=``, ``evaluation=``,
    ``export=``...). Its ``data:`` names the evaluation sets, built by ``wiseft run``'s code
    (projections, templates, the validation split alpha is chosen on); its ``backbone:``,
    when given, says where the model came from (else the model's own name). ``backbone``: the
    Backbone a wiseft ``Classifier`` was built on. ``pretrained``: theta_0 from a named source
    (a backbone spec; for a plain module a checkpoint file) instead of the model as training
    starts. ``evaluate``: for a plain ``nn.Module``, ``evaluate(model) -> {dataset: {metric:
    value}}``, called per alpha (``output_dir``, ``alphas``, ``validation`` among ``settings``).

    Example:
        >>> with wiseft.track(model, "config.yaml", output_dir="runs/mine") as t:
        ...     train(model)
        ...     t.finish()
    """
    if evaluate is not None:
        return TrackedRun(model, None, pretrained=pretrained, plain=PlainRun.of(evaluate, settings), report=report)
    data, base_dir, source = _config_mapping(config)
    data.update(settings)
    for key in ("variants", "merges"):  # one fine-tune is watched: the config's others are not run
        if data.pop(key, None):
            log.info("wiseft.track: the config's %s are left out (one fine-tune is watched)", key)
    if "data" not in data:
        raise IntegrationError("name the evaluation sets: a config with a data: section, or data={...}")
    if isinstance(model, Classifier):
        if backbone is None:
            raise IntegrationError(f"a wiseft {type(model).__name__} is tracked with the Backbone it was built on: "
                                   "track(model, config, backbone=backbone)")
    elif backbone is None:
        try:
            backbone = wrap_backbone(model, data.get("backbone"))
        except BackboneError as e:
            raise IntegrationError(f"{e}; or pass evaluate=... to track a plain nn.Module") from None
    data["backbone"] = data.get("backbone") or backbone.spec.model_dump(mode="json")
    # the zero-shot model wiseft run would mix: flyp's for a family's model (both towers, the head
    # re-derived from the text tower), ce's for a Classifier (its head is a weight of its own)
    objective = "ce" if isinstance(model, Classifier) and not isinstance(model, PromptClassifier) else "flyp"
    data["finetune"] = {**data.get("finetune", {}), "objective": objective, "mode": "e2e"}
    cfg = parse_config(data, source=source, base_dir=base_dir)
    return TrackedRun(model, cfg, backbone=backbone, pretrained=pretrained, report=report)


def _config_mapping(config) -> tuple[dict[str, Any], Path | None, str]:
    """(config as a mapping, the folder its relative paths resolve against, what errors name)."""
    if isinstance(config, (str, Path)):  # read as a mapping: it may lack the backbone, which the model gives
        import yaml

        path = Path(config)
        if not path.is_file():
            raise IntegrationError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise IntegrationError(f"{path}: the top level must be a mapping of keys")
        return loaded, path.resolve().parent, str(path)
    if isinstance(config, RunConfig):
        return config.model_dump(mode="json"), config.base_dir, "wiseft.track"
    return dict(config or {}), None, "wiseft.track"
