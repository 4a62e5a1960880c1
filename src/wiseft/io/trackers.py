"""Experiment trackers behind one interface: a :class:`Tracker` takes parameters, metrics
at a step, artifacts, and is closed; TensorBoard and MLflow implement it, and a
:class:`FanOut` sends to several. Training (``train``) and the run (``pipeline``) log
through it, whichever trackers the config's ``tracking`` section names
(:func:`open_tracker`). Each tracker's package is an optional extra, imported when one
is opened."""

from __future__ import annotations

import json
import logging
import math
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from wiseft.core import MERGE, Record, WiseftError

log = logging.getLogger("wiseft")

# step of a sweep's record: round(alpha * ALPHA_STEP) (alpha 0.3 at step 30; the alpha is also a metric)
ALPHA_STEP = 100
_PARAM_MAX = 6000  # MLflow's limit on a parameter value's length
_TEXT_MAX = 1 << 20  # TensorBoard shows text artifacts (summary.md) up to this size


class TrackerError(WiseftError):
    """An experiment tracker could not be opened or written (the message names its store)."""


class Tracker:
    """The one logging interface: ``log_params``, ``log_metrics`` (at a step),
    ``log_artifact`` (a file or folder), ``close``. This base class logs nowhere (a
    process other than rank 0, or a run without trackers); a context manager closes it,
    marking the run failed when the block raised.

    Example:
        >>> with open_tracker(cfg.tracking, run_dir) as t:
        ...     t.log_metrics({"train/loss": 0.7}, step=10)
    """

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Record the run's parameters (flat: ``{"finetune.lr": 3e-05}``)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record each value of ``metrics`` (key -> number) at ``step``."""

    def log_artifact(self, path: str | Path) -> None:
        """Keep a file or folder with the run."""

    def close(self, failed: bool = False) -> None:
        """End the run (``failed``: it ended with an error)."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(failed=exc_type is not None)


class FanOut(Tracker):
    """Every call sent to each of ``trackers``; closing closes them all."""

    def __init__(self, trackers: Iterable[Tracker]):
        self.trackers = list(trackers)

    def log_params(self, params: Mapping[str, Any]) -> None:
        for t in self.trackers:
            t.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for t in self.trackers:
            t.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path) -> None:
        for t in self.trackers:
            t.log_artifact(path)

    def close(self, failed: bool = False) -> None:
        errors = []
        for t in self.trackers:
            try:
                t.close(failed)
            except Exception as e:  # noqa: BLE001 - close the others, then raise the first
                errors.append(e)
        if errors:
            raise errors[0]


class Scoped(Tracker):
    """A view of ``tracker`` whose metric keys start with ``prefix``; closing the view
    leaves the tracker open (its owner closes it)."""

    def __init__(self, tracker: Tracker, prefix: str):
        self.tracker, self.prefix = tracker, prefix

    def log_params(self, params: Mapping[str, Any]) -> None:
        self.tracker.log_params(params)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.tracker.log_metrics({self.prefix + k: v for k, v in metrics.items()}, step)

    def log_artifact(self, path: str | Path) -> None:
        self.tracker.log_artifact(path)


def metric_key(*parts: str) -> str:
    """One key from ``parts`` joined by '/', each cleaned to what both TensorBoard and MLflow
    keep as written (letters, digits, ``_ . -``): ``("sweep", "finetuned (output ensemble)")``
    -> ``sweep/finetuned_output_ensemble``."""
    return "/".join(re.sub(r"_+", "_", re.sub(r"[^\w.\-]", "_", re.sub(r"[()\[\]{}]", "", p).strip()))
                    for p in parts)


def flatten_params(tree: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested config as flat parameters: ``{"finetune": {"lr": 1e-3}}`` ->
    ``{"finetune.lr": "0.001"}``; lists and empty mappings as JSON."""
    out: dict[str, str] = {}
    for k, v in tree.items():
        key = prefix + metric_key(str(k))
        if isinstance(v, Mapping) and v:
            out.update(flatten_params(v, key + "."))
        else:
            text = v if isinstance(v, str) else json.dumps(v)
            out[key] = text if len(text) <= _PARAM_MAX else text[:_PARAM_MAX - 3] + "..."
    return out


def record_metrics(records: Iterable[Record]) -> dict[int, dict[str, float]]:
    """``records`` as metrics by step: a sweep's record under
    ``sweep/MODEL/DATASET/METRIC`` at step round(alpha * 100), with ``sweep/MODEL/alpha``
    (the alpha itself) at the same step; a merge's record (no alpha) under
    ``merge/MODEL/DATASET/METRIC`` at its grid point's index. Alphas closer than 0.01
    share a step (a warning says so; ``sweep/MODEL/alpha`` keeps the last)."""
    out: dict[int, dict[str, float]] = {}
    for r in records:
        if r.alpha is not None:
            step, key = round(r.alpha * ALPHA_STEP), metric_key("sweep", r.model, "alpha")
            if out.get(step, {}).get(key, r.alpha) != r.alpha:
                log.warning("trackers: alphas %s and %s share step %d (a sweep's step is alpha x %d)",
                            out[step][key], r.alpha, step, ALPHA_STEP)
            out.setdefault(step, {})[key] = float(r.alpha)
            out[step][metric_key("sweep", r.model, r.dataset, r.metric)] = float(r.value)
        else:
            step = int((r.provenance.get(MERGE) or {}).get("point_index", 0))
            out.setdefault(step, {})[metric_key("merge", r.model, r.dataset, r.metric)] = float(r.value)
    return out


def log_records(tracker: Tracker, records: Iterable[Record]) -> None:
    """Log a sweep's (or a merge's) records through ``tracker`` (:func:`record_metrics`)."""
    for step, metrics in sorted(record_metrics(records).items()):
        tracker.log_metrics(metrics, step)


def log_selection(tracker: Tracker, selected: Mapping[str, float]) -> None:
    """The alpha selected for each fine-tune, as ``selected_alpha/NAME`` (step 0)."""
    if selected:
        tracker.log_metrics({metric_key("selected_alpha", name): float(a) for name, a in selected.items()}, 0)


def log_run_end(tracker: Tracker, selected: Mapping[str, float], run_dir: str | Path) -> None:
    """What a run logs at its end: :func:`log_selection` and :func:`log_outputs`."""
    log_selection(tracker, selected)
    log_outputs(tracker, run_dir)


def log_outputs(tracker: Tracker, run_dir: str | Path) -> None:
    """The run's files at its end: ``summary.md``, ``results.jsonl``, and ``report/`` when it
    was built from these records (not older than ``results.jsonl``)."""
    run_dir = Path(run_dir)
    results = run_dir / "results.jsonl"
    for name in ("summary.md", "results.jsonl"):
        if (run_dir / name).is_file():
            tracker.log_artifact(run_dir / name)
    report = run_dir / "report" / "index.html"
    if report.is_file() and results.is_file() and report.stat().st_mtime >= results.stat().st_mtime:
        tracker.log_artifact(report.parent)


class TensorBoardTracker(Tracker):
    """Scalars in ``log_dir`` (``torch.utils.tensorboard``); parameters and text
    artifacts (``.md``, ``.txt``) under TensorBoard's Text tab; other artifacts are
    MLflow's only. ``fresh``: remove the folder's earlier event files first (a rerun
    replaces them, as it replaces results.jsonl)."""

    def __init__(self, log_dir: str | Path, *, fresh: bool = False):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError("TensorBoard logging needs the tensorboard package: "
                              f"pip install 'wiseft[tensorboard]' ({e})") from e
        self.log_dir = Path(log_dir)
        if fresh and self.log_dir.is_dir():
            for old in self.log_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(str(self.log_dir))

    def log_params(self, params: Mapping[str, Any]) -> None:
        rows = "".join(f"| {k} | {str(v).replace('|', '/')} |\n" for k, v in params.items())
        self.writer.add_text("params", "| parameter | value |\n|---|---|\n" + rows, 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_file() and path.suffix in (".md", ".txt") and path.stat().st_size <= _TEXT_MAX:
            self.writer.add_text(metric_key("artifacts", path.name), path.read_text(encoding="utf-8"), 0)

    def close(self, failed: bool = False) -> None:
        self.writer.close()


class MlflowTracker(Tracker):
    """One MLflow run in ``experiment`` (created when missing, its artifacts in
    ``artifact_location`` then) of the store at ``tracking_uri``, through
    ``mlflow.tracking.MlflowClient`` (no global state: several can be open). A store
    that cannot be opened is a :class:`TrackerError` naming the URI. Metrics are sent in
    batches, at most ``FLUSH_S`` seconds apart, and at the end (a write to the SQLite
    store costs tens of milliseconds: one per training step would slow a fast run)."""

    FLUSH_S = 2.0

    def __init__(self, tracking_uri: str, experiment: str, run_name: str | None = None, *,
                 artifact_location: str | None = None, tags: Mapping[str, str] | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError(f"tracking.mlflow needs the mlflow package: pip install 'wiseft[mlflow]' ({e})") from e
        self.uri = tracking_uri
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            found = self.client.get_experiment_by_name(experiment)
            eid = (found.experiment_id if found is not None
                   else self.client.create_experiment(experiment, artifact_location=artifact_location))
            self.run_id = self.client.create_run(eid, run_name=run_name, tags=dict(tags or {})).info.run_id
        except Exception as e:  # noqa: BLE001 - whatever the store raises, say which store
            raise TrackerError(f"mlflow: cannot open the tracking store {tracking_uri!r} "
                               f"(experiment {experiment!r}): {e}") from e
        self.pending: list = []
        self.flushed_at = time.monotonic()

    def _call(self, what: str, fn, *args, **kwargs) -> None:
        try:
            fn(self.run_id, *args, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise TrackerError(f"mlflow: {what} failed on the tracking store {self.uri!r}: {e}") from e

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 parameters a batch
            self._call("logging parameters", self.client.log_batch, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                         if v is not None and not (isinstance(v, float) and math.isinf(v))]
        if time.monotonic() - self.flushed_at >= self.FLUSH_S:
            self.flush()

    def flush(self) -> None:
        """Send the metrics held back so far."""
        items, self.pending, self.flushed_at = self.pending, [], time.monotonic()
        for i in range(0, len(items), 1000):  # MLflow takes at most 1000 metrics a batch
            self._call("logging metrics", self.client.log_batch, metrics=items[i:i + 1000])

    def log_artifact(self, path: str | Path) -> None:
        path = Path(path)
        if path.is_dir():
            self._call(f"logging {path}", self.client.log_artifacts, str(path), path.name)
        else:
            self._call(f"logging {path}", self.client.log_artifact, str(path))

    def close(self, failed: bool = False) -> None:
        try:
            self.flush()
        finally:
            self._call("ending the run", self.client.set_terminated, "FAILED" if failed else "FINISHED")


def local_mlflow_store(run_dir: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of a run's own MLflow store: SQLite in
    ``RUN_DIR/mlflow/mlflow.db``, artifacts in ``RUN_DIR/mlflow/artifacts``. (MLflow 3's
    file store refuses to open unless ``MLFLOW_ALLOW_FILE_STORE`` is set; SQLite is its
    local store that needs no server.)"""
    folder = Path(run_dir).resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def open_tracker(settings: Any, run_dir: str | Path, *, params: Mapping[str, Any] | None = None,
                 tags: Mapping[str, str] | None = None, fresh: bool = False) -> Tracker:
    """The trackers a ``tracking`` config section (``config.TrackingConfig``, or None)
    names, as one :class:`Tracker`: TensorBoard in ``RUN_DIR/tensorboard``, MLflow (a run
    named ``run_name`` or the run folder's name; by default in the run's own SQLite store,
    :func:`local_mlflow_store`). ``params`` are logged at once (a nested config is
    flattened); ``tags`` label the MLflow run. ``fresh``: the run starts over (``wiseft
    run``): TensorBoard's earlier event files there are removed, as results.jsonl is
    replaced. Under torchrun only rank 0 logs: elsewhere, and without trackers, the
    tracker logs nowhere.

    Example:
        >>> with open_tracker(cfg.tracking, cfg.output_dir, params=cfg.model_dump(mode="json")) as t:
        ...     log_records(t, records)
    """
    from wiseft.runtime import current

    if settings is None or not current().main or not (settings.tensorboard or settings.mlflow is not None):
        return Tracker()
    run_dir = Path(run_dir)
    opened: list[Tracker] = []
    try:
        if settings.tensorboard:
            opened.append(TensorBoardTracker(run_dir / "tensorboard", fresh=fresh))
        if settings.mlflow is not None:
            opened.append(_open_mlflow(settings.mlflow, run_dir, tags))
        tracker = opened[0] if len(opened) == 1 else FanOut(opened)
        if params:
            tracker.log_params(flatten_params(params))
    except BaseException:
        for t in opened:
            t.close(failed=True)
        raise
    return tracker


def _open_mlflow(settings: Any, run_dir: Path, tags: Mapping[str, str] | None) -> MlflowTracker:
    uri, artifacts = (settings.tracking_uri, None) if settings.tracking_uri else local_mlflow_store(run_dir)
    name = settings.run_name or run_dir.resolve().name
    for noisy in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # table creation, once per store
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return MlflowTracker(uri, settings.experiment, name, artifact_location=artifacts, tags=tags)
