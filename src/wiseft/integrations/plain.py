"""WiSE-FT for any ``nn.Module``: its whole state dict mixed with ``merge.interpolator_for``
at every alpha, scored by the user's ``evaluate(model)``, written as ``wiseft run`` writes
(records in ``results.jsonl``, ``summary.md``, the alpha selected on validation by
``report.select_alpha``) and the mixed weights at that alpha exported as safetensors."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from wiseft.core import Record, package_versions, summary_table
from wiseft.io import append_records, atomic_write, save_state
from wiseft.merge import interpolator_for
from wiseft.pipeline import RunResult
from wiseft.runtime import current

log = logging.getLogger("wiseft")
DEFAULT_ALPHAS = tuple(round(i / 10, 1) for i in range(11))


@dataclass(frozen=True)
class PlainRun:
    """Where and how a plain module's sweep runs: ``evaluate(model) -> {dataset: {metric:
    value}}``; ``validation``: the datasets alpha is chosen on (default: those named
    ``*-val`` / ``*val``); the first other dataset is the reference set, the rest shifts."""

    evaluate: Callable[[torch.nn.Module], Mapping[str, Mapping[str, float]]]
    output_dir: Path
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    validation: tuple[str, ...] | None = None
    select_alpha: float | None = None
    export: bool = True

    @classmethod
    def of(cls, evaluate, settings: dict[str, Any]) -> "PlainRun":
        """From ``track``'s keywords; an unknown one is an error naming it."""
        known = {"output_dir", "alphas", "validation", "select_alpha", "export"}
        unknown = sorted(set(settings) - known)
        if unknown:
            raise TypeError(f"track(..., evaluate=...) takes {sorted(known)}, not {unknown[0]!r}")
        if "output_dir" not in settings:
            raise TypeError("track(..., evaluate=...) needs output_dir=")
        validation = settings.get("validation")
        return cls(evaluate, Path(settings["output_dir"]), tuple(float(a) for a in settings.get("alphas",
                   DEFAULT_ALPHAS)), (validation,) if isinstance(validation, str) else
                   tuple(validation) if validation else None, settings.get("select_alpha"),
                   settings.get("export", True))

    def sweep(self, model: torch.nn.Module, theta_0: dict, theta_1: dict, name: str) -> list[Record]:
        """The records of every alpha: the mix loaded into ``model``, ``evaluate`` called;
        appended to ``results.jsonl`` (rank 0)."""
        interp = interpolator_for(theta_0, theta_1)
        records: list[Record] = []
        provenance = {"method": "wiseft.track", "evaluate": getattr(self.evaluate, "__qualname__", "evaluate"),
                      "versions": package_versions()}
        for alpha in self.alphas:
            interp.load_into(model, alpha)
            model.eval()
            with torch.no_grad():
                scores = self.evaluate(model)
            records += self._records(scores, name, alpha, provenance)
        if current().main:
            append_records(self.output_dir / "results.jsonl", records)
        return records

    def _records(self, scores: Mapping[str, Mapping[str, float]], name: str, alpha: float,
                 provenance: dict) -> list[Record]:
        names = list(scores)
        validation = self.validation or tuple(n for n in names if n.endswith("val"))
        reference = next((n for n in names if n not in validation), None)
        return [Record(name, alpha, dataset, "validation" if dataset in validation else
                       "reference" if dataset == reference else "shift", metric, float(value),
                       provenance=provenance)
                for dataset in names for metric, value in scores[dataset].items()]

    def finish(self, model: torch.nn.Module, theta_0: dict, theta_1: dict, earlier: Sequence[Record]) -> RunResult:
        """Sweep ``finetuned``, select alpha on validation, write ``summary.md`` and export
        the mixed state dict at that alpha (``export/model.safetensors``)."""
        from wiseft.report import select_alpha

        if current().main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "results.jsonl").unlink(missing_ok=True)
            if earlier:
                append_records(self.output_dir / "results.jsonl", earlier)
        records = list(earlier) + self.sweep(model, theta_0, theta_1, "finetuned")
        selected = {"finetuned": select_alpha(records, "finetuned", fixed=self.select_alpha)}
        export_dir = None
        if current().main:
            atomic_write(self.output_dir / "summary.md", summary_table(records) + "\n\nselected alpha (on "
                         f"{', '.join(self.validation or ('*val',))}): {json.dumps(selected)}\n")
            if self.export:
                export_dir = self.output_dir / "export"
                mixed = interpolator_for(theta_0, theta_1).merge(selected["finetuned"])
                save_state(export_dir / "model.safetensors", mixed, {"alpha": selected["finetuned"]})
        return RunResult(self.output_dir, records, selected, export_dir)
