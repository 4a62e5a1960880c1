"""The model card of an export: ``README.md`` in the Hugging Face Hub's model-card format,
written beside the exported model from the run's records.

The front matter (YAML) holds ``library_name`` (the library whose own call loads the
folder's native part, as the backbone family declares it), ``base_model`` (the Hub id of
the pretrained weights, when it is known without a network), ``tags``, ``license`` (given,
or read from the base model's own card when its weights come from a local directory that
has one; never guessed), ``metrics`` and ``model-index``: one result per test set (the
reference and each shift, split ``test``) and metric of the exported model at its alpha,
each value a fraction in [0, 1], exactly as the records hold it. The validation split,
on which alpha was chosen, is reported in the text, not in the model-index.

The text: the method in two sentences, the alpha and how it was chosen, zero-shot /
fine-tuned / WiSE-FT rows for every test set (percent, each set's primary metric), the
scatter plot and the accuracy-vs-alpha curves (the report's own plots, for this model),
the calibration temperature, what the folder holds and how to load it, and the command
that made it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import yaml

from wiseft.backbones import CardFacts, Origin, card_facts
from wiseft.config import BackboneSpec, ReportConfig
from wiseft.core import QUICK_BANNER, Record, current_command, is_quick, merge_of
from wiseft.io import META_FILE, MODEL_FILE, atomic_write
from wiseft.report.analysis import Analysis, analyse, selection_note
from wiseft.report.plots import plot_alpha_curves, plot_scatter, save_figure
from wiseft.report.robustness import AVG, select_alpha
from wiseft.report.tables import build_tables, format_cell

if TYPE_CHECKING:
    from wiseft.config import RunConfig

CARD_FILE = "README.md"
SCATTER_STEM, CURVES_STEM = "card_scatter", "card_alpha"  # the card's figures, beside it (.png and .svg)
PAPER = ("Wortsman et al., *Robust fine-tuning of zero-shot models*, CVPR 2022, "
         "[arXiv:2109.01903](https://arxiv.org/abs/2109.01903)")
TASKS = {"image": ("image-classification", "Image Classification", "zero-shot-image-classification"),
         "text": ("text-classification", "Text Classification", "zero-shot-classification")}
# record metric -> (the Hub's metric id, a readable name); other metrics keep their own name as both
METRICS = {"top1": ("accuracy", "top-1 accuracy"), "macro_f1": ("f1", "macro F1"),
           "worst_region_acc": ("accuracy", "worst-region accuracy"),
           "ece": ("ece", "expected calibration error (15 bins, temperature-scaled)")}
SAME_ALPHA = 1e-9


@dataclass(frozen=True)
class CardSettings:
    """What a model card says beyond the records and the export's own ``wiseft.json``.

    ``command``: the exact command (or Python call) that made the export. ``fixed_alpha``:
    the alpha was fixed by the user (``select_alpha:``) rather than chosen on validation;
    ``alpha_note`` says how it was chosen in words of its own (None: worked out from the
    records). ``temperature``, ``license``, ``backbone`` (a spec) and ``modality``
    override what the export and the family say. ``dataset_types`` maps a dataset name
    to the model-index's ``dataset.type`` (a Hub dataset id; default the name itself).
    ``tags`` are added to the card's.

    Example:
        >>> CardSettings(command="wiseft run cfg.yaml", license="mit")
    """

    command: str | None = None
    fixed_alpha: bool = False
    alpha_note: str | None = None
    temperature: float | None = None
    license: str | None = None
    backbone: BackboneSpec | Mapping[str, Any] | None = None
    modality: str | None = None
    dataset_types: Mapping[str, str] = field(default_factory=dict)
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        types = list(self.dataset_types.values())
        twice = sorted({t for t in types if types.count(t) > 1})
        if twice:  # the Hub groups a model-index's results by dataset type
            raise ValueError(f"dataset_types: {twice[0]!r} is given to more than one dataset; each needs its own")

    @classmethod
    def from_config(cls, cfg: RunConfig, records: Sequence[Record] = (), **overrides: Any) -> CardSettings:
        """The settings of a ``wiseft run``'s card: its command line (set by the ``wiseft``
        command), else the Python call (``wiseft.run('cfg.yaml')`` for a config read from
        a file, else ``wiseft.run(cfg)``; with ``quick=True`` when the records are a quick
        run's), and whether its alpha was fixed."""
        source = repr(cfg.source) if cfg.source and Path(cfg.source).is_file() else "cfg"
        call = f"wiseft.run({source}{', quick=True' if is_quick(records) else ''})"
        return replace(cls(command=current_command() or call, fixed_alpha=cfg.select_alpha is not None), **overrides)


def write_model_card(export_dir: str | Path, records: Sequence[Record], *, model_name: str = "finetuned",
                     alpha: float | None = None, settings: CardSettings | None = None) -> Path:
    """Write ``export_dir/README.md``, the model card of the model exported there (by
    ``export_model``), and its figures beside it; returns the card's path.

    ``records``: the run's records (those of ``model_name``, the fine-tune exported, are
    read; other models' are left out); ``alpha``: the exported alpha (default: the
    export's ``wiseft.json``). ValueError when the records have no ``model_name``, the
    export's metadata and ``settings`` give no alpha or backbone, or the records have no
    reference test set.

    Example:
        >>> write_model_card("runs/demo/export", read_records("runs/demo"),
        ...                  settings=CardSettings(command="wiseft demo"))
        PosixPath('runs/demo/export/README.md')
    """
    settings = settings if settings is not None else CardSettings()
    export_dir = Path(export_dir)
    meta = json.loads((export_dir / META_FILE).read_text()) if (export_dir / META_FILE).exists() else {}
    alpha = alpha if alpha is not None else meta.get("alpha")
    spec = settings.backbone if settings.backbone is not None else meta.get("backbone")
    if alpha is None or spec is None:
        what = "alpha (pass alpha=)" if alpha is None else "backbone spec (pass CardSettings(backbone=...))"
        raise ValueError(f"{export_dir}: no {META_FILE} with the {what}")
    spec = spec.model_dump() if isinstance(spec, BackboneSpec) else dict(spec)
    own = [r for r in records if r.model == model_name]
    if not own:
        raise ValueError(f"no records for model {model_name!r} (models present: {sorted({r.model for r in records})})")
    others = [r for r in records if r.alpha is None and merge_of(r) is None and r.model != model_name]  # baselines
    found = analyse(export_dir, own + others, ReportConfig(alpha=float(alpha)))
    card = _Card(export_dir, model_name, float(alpha), spec, meta, settings, found, card_facts(spec.get("family", "")))
    atomic_write(export_dir / CARD_FILE, card.text())
    return export_dir / CARD_FILE


@dataclass
class _Card:
    """One card's inputs, and the text made of them."""

    export_dir: Path
    model: str
    alpha: float
    spec: dict[str, Any]
    meta: dict[str, Any]
    settings: CardSettings
    found: Analysis
    facts: CardFacts

    @property
    def own(self) -> list[Record]:
        return [r for r in self.found.view.records if r.model == self.model]

    @property
    def at_alpha(self) -> list[Record]:
        return [r for r in self.own if r.alpha is not None and abs(r.alpha - self.alpha) < SAME_ALPHA]

    @cached_property
    def origin(self) -> Origin:
        if self.facts.origin is None:
            return Origin()
        try:
            return self.facts.origin(BackboneSpec(**self.spec))
        except (ValueError, TypeError, OSError):  # a spec this version cannot read: nothing known
            return Origin()

    @property
    def task(self) -> tuple[str, str, str | None]:
        modality = self.settings.modality or self.facts.modality
        return TASKS.get(modality or "", ("other", "Other", None))

    def text(self) -> str:
        front = yaml.safe_dump(self.front_matter(), sort_keys=False, allow_unicode=True, width=1000)
        sections = [self.title(), self.method(), self.selection(), self.results(), self.calibration(),
                    self.loading(), self.provenance()]
        return f"---\n{front}---\n\n" + "\n\n".join(s.strip() for s in sections if s) + "\n"

    def front_matter(self) -> dict[str, Any]:
        """The card's metadata, in the order the Hub's own cards put it."""
        data: dict[str, Any] = {}
        if self.facts.library:
            data["library_name"] = self.facts.library
        origin = self.origin
        if origin.hub_id:
            data["base_model"] = origin.hub_id
        license_ = self.settings.license or _card_license(origin.local_dir)
        if license_:
            data["license"] = license_
        task_type, _, zero_shot_task = self.task
        tasks = [task_type, zero_shot_task] if zero_shot_task else []  # "other": no task tag
        data["tags"] = list(dict.fromkeys(["wise-ft", "robust-fine-tuning", *self.facts.tags, *tasks,
                                           *self.settings.tags]))
        index = self.model_index()
        if index:
            data["metrics"] = list(dict.fromkeys(m["type"] for r in index[0]["results"] for m in r["metrics"]))
            data["model-index"] = index
        return data

    def model_index(self) -> list[dict[str, Any]]:
        """One result per test set, one metric entry per record of the exported alpha (the
        shape ``huggingface_hub.eval_results_to_model_index`` writes); empty when the
        alpha was not evaluated."""
        task_type, task_name, _ = self.task
        results: dict[str, dict[str, Any]] = {}
        for r in self.at_alpha:
            if r.role == "validation" or r.metric == "temperature":
                continue
            hub_type, name = _metric(r.metric)
            result = results.setdefault(r.dataset, {
                "task": {"type": task_type, "name": task_name},
                "dataset": {"name": r.dataset, "type": self.settings.dataset_types.get(r.dataset, r.dataset),
                            "split": "test"},
                "metrics": []})
            result["metrics"].append({"type": hub_type, "value": r.value, "name": name})
        return [{"name": self.index_name(), "results": list(results.values())}] if results else []

    def base_name(self) -> str:
        """The base model's short name: the last part of its Hub id or spec name."""
        base = self.origin.hub_id or self.spec.get("name", "model")
        return str(base).rstrip("/").split("/")[-1].split(":")[-1]

    def index_name(self) -> str:
        return f"{self.base_name()}-wiseft"

    def title(self) -> str:
        banner = f"**{QUICK_BANNER}**\n\n" if is_quick(self.own) else ""
        return (f"# WiSE-FT: {self.base_name()} fine-tuned on {self.found.view.reference}, "
                f"alpha = {self.alpha:g}\n\n{banner}")

    def method(self) -> str:
        mode = next((r.provenance.get("mode") for r in self.own if r.provenance.get("mode")), None)
        return (f"WiSE-FT ({PAPER}) fine-tunes a zero-shot model on the reference data and then mixes the "
                "weights of the zero-shot and the fine-tuned model, theta_alpha = (1 - alpha) * theta_zeroshot + "
                "alpha * theta_finetuned. The mix keeps most of the accuracy fine-tuning gains on the reference "
                "distribution and much of the zero-shot model's robustness under distribution shift, without "
                "extra cost at inference.\n\n"
                f"This model: {_base_text(self.spec, self.origin)}, fine-tuned "
                f"{'(mode ' + mode + ') ' if mode else ''}on {self.found.view.reference} "
                f"(run `{self.model}`), mixed at alpha = {self.alpha:g}.{_classes_text(self.meta)}")

    def selection(self) -> str:
        """The alpha, how it was chosen, and the validation score it was chosen by."""
        view, s = self.found.view, self.settings
        if s.alpha_note:
            how = s.alpha_note
        elif s.fixed_alpha:
            how = selection_note(view, self.model, self.alpha)
        else:
            chosen = select_alpha(self.own, self.model)
            how = (selection_note(view, self.model, None) if abs(chosen - self.alpha) < SAME_ALPHA else
                   f"given by the caller (the records' own choice on validation is {chosen:g})")
        val = [r for r in view.chosen if r.model == self.model and r.role == "validation" and r.alpha is not None
               and abs(r.alpha - self.alpha) < SAME_ALPHA]  # each validation set's primary metric
        scores = "".join(f"\n- {r.dataset} (held out of the training data): {_value(r)}" for r in val)
        return f"## Alpha\n\nalpha = {self.alpha:g}: {how}.{' At this alpha:' + scores if scores else ''}"

    def results(self) -> str:
        """Zero-shot, fine-tuned and the exported WiSE-FT model on every test set, and the plots."""
        tables = build_tables(self.found.view, {self.model: self.alpha}, self.found.rho)
        table = next(t for t in tables if t.model == self.model)
        # build_tables' rows: zero-shot, fine-tuned, WiSE-FT at 0.5, at the selected alpha, then the oracle
        keep = {0: "zero-shot (alpha=0)", 1: "fine-tuned (alpha=1)",
                3: f"WiSE-FT, alpha={self.alpha:g} (this model)"}
        lines = ["| | " + " | ".join(table.columns) + " |", "|---" * (len(table.columns) + 1) + "|"]
        for i, label in keep.items():
            cells = table.rows[i][1]
            if any(v is not None for v, _ in cells):
                lines.append(f"| {label} | " + " | ".join(format_cell(c, False, col)
                                                            for c, col in zip(cells, table.columns)) + " |")
        figures = self.figures()
        return ("## Results\n\nPercent, each set's primary metric (the model-index above holds the same "
                "numbers as fractions in [0, 1], with every metric); `avg shifts` is the mean over the shift "
                "sets.\n\n" + "\n".join(lines) + ("\n\n" + figures if figures else ""))

    def figures(self) -> str:
        """Draw the scatter plot (reference vs the shift, or the average over shifts) and
        the accuracy-vs-alpha curves beside the card; their Markdown."""
        view, found, out = self.found.view, self.found, []
        if view.shifts:
            shift = view.shifts[0] if len(view.shifts) == 1 else AVG
            save_figure(plot_scatter(view, shift, found.fits, found.selected), self.export_dir, SCATTER_STEM)
            what = shift if shift != AVG else f"the average over {len(view.shifts)} shifts"
            out.append(f"![{view.reference} vs {what}]({SCATTER_STEM}.png)\n\n*{view.reference} accuracy against "
                       f"{what} (logit axes): the zero-shot model, the fine-tuned model and WiSE-FT over "
                       "alpha, this model's alpha marked.*")
        save_figure(plot_alpha_curves(view, self.model, self.alpha), self.export_dir, CURVES_STEM)
        out.append(f"![accuracy vs alpha]({CURVES_STEM}.png)\n\n*Accuracy against alpha on every set, the "
                   "validation set dashed.*")
        return "\n\n".join(out)

    def temperature(self) -> float | None:
        if self.settings.temperature is not None:
            return self.settings.temperature
        if self.meta.get("temperature") is not None:
            return float(self.meta["temperature"])
        return next((r.value for r in self.at_alpha if r.metric == "temperature"), None)

    def calibration(self) -> str:
        t = self.temperature()
        if t is None:
            return "## Calibration\n\nNo temperature was fitted (the run held out no validation data)."
        return (f"## Calibration\n\nTemperature T = {t:.4f}, fitted on held-out validation at this alpha: divide "
                "the logits by T before the softmax for calibrated probabilities (`wiseft predict` does; "
                "`wiseft.json` holds it).")

    def loading(self) -> str:
        """What the folder holds, and the calls that load it back."""
        native = self.meta.get("native")
        lines = ["## Use", "", "This folder holds:", "",
                 f"- `{MODEL_FILE}` and `{META_FILE}`: the classifier (encoder and linear head) at alpha = "
                 f"{self.alpha:g}, its class names, prompt templates, alpha and temperature;"]
        if native:
            lines.append(f"- `{native}`: the whole pretrained model as {self.facts.library or 'its library'} saves "
                         "it, with this model's encoder weights;")
        lines += [f"- `{CARD_FILE}`, `{SCATTER_STEM}.png` and `{CURVES_STEM}.png` (and `.svg`): this card.", "",
                  "```python", "import wiseft", "",
                  'model, backbone, meta = wiseft.load_model("path/to/this/folder")  # classifier, backbone, '
                  "metadata", "```", "", "or from the command line: `wiseft predict path/to/this/folder INPUT ...` "
                  "(top classes, with the temperature)."]
        if native and self.facts.loading is not None:
            lines += ["", f"The native part alone, loaded by {self.facts.library or 'its library'} itself (from this "
                      "folder):", "", "```python", self.facts.loading(self.spec, native), "```"]
        return "\n".join(lines)

    def provenance(self) -> str:
        """The command that made the export, and what it ran on."""
        first = self.own[0].provenance
        made = (f"`{self.settings.command}`" if self.settings.command else "(not recorded)")
        versions = ", ".join(f"{k} {v}" for k, v in (first.get("versions") or {}).items())
        compute = first.get("compute") or {}
        where = " ".join(str(compute[k]) for k in ("device", "cpu", "device_name") if compute.get(k))
        lines = ["## How it was made", "", f"Command: {made}", ""]
        if (self.export_dir.parent / "config.yaml").is_file():  # an export inside a run directory
            lines += ["- the resolved config: `config.yaml` in the run directory (beside this folder)"]
        if first.get("config_hash"):
            lines += [f"- config hash: `{first['config_hash']}`"]
        if versions:
            lines += [f"- versions: {versions}"]
        if where:
            lines += [f"- computed on: {where}"]
        lines += ["- every number above comes from the run's `results.jsonl` (one record per model, alpha, "
                  "dataset and metric)"]
        return "\n".join(lines)


def _metric(metric: str) -> tuple[str, str]:
    """(the Hub's metric id, a readable name) of a record's metric."""
    if metric in METRICS:
        return METRICS[metric]
    if metric.startswith("top1_on_") and metric.endswith("_classes"):
        return "accuracy", f"top-1 accuracy on {metric[len('top1_on_'):-len('_classes')]}'s classes"
    if metric.startswith("pm") and metric[2:].isdigit():
        return "accuracy", f"pm-{metric[2:]} accuracy"
    return metric, metric


def _value(r: Record) -> str:
    counts = f" ({r.correct}/{r.total})" if r.total is not None else ""
    return f"{100 * r.value:.2f}% {r.metric}{counts}"


def _base_text(spec: Mapping[str, Any], origin: Origin) -> str:
    """The base model in words: its Hub id (linked) or its spec."""
    if origin.hub_id:
        return f"[{origin.hub_id}](https://huggingface.co/{origin.hub_id}) ({spec.get('family')} `{spec.get('name')}`)"
    tag = f", pretrained `{spec['pretrained']}`" if spec.get("pretrained") else ""
    return f"{spec.get('family')} `{spec.get('name')}`{tag}"


def _classes_text(meta: Mapping[str, Any], shown: int = 20) -> str:
    names = list(meta.get("classnames") or [])
    if not names:
        return ""
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return f" Classes: {', '.join(names[:shown])}{more}."


def _card_license(local_dir: Path | None) -> str | None:
    """The ``license`` of the base model's own card (README.md front matter) in its local
    directory, or None."""
    if local_dir is None or not (local_dir / CARD_FILE).is_file():
        return None
    text = (local_dir / CARD_FILE).read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        data = yaml.safe_load(text.split("---", 2)[1])
    except (yaml.YAMLError, IndexError):
        return None
    value = data.get("license") if isinstance(data, dict) else None
    return value if isinstance(value, str) and value.strip() else None
