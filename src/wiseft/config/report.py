"""What a report shows: the settings of ``wiseft report`` and ``report.build_report``."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict

from wiseft.core import PRIMARY

DEFAULT_BASELINES = "testbed"  # the packaged baseline set of ImageNet runs (robustness.PACKAGED_BASELINES)


class ReportConfig(BaseModel):
    """The settings of a report (the fields of ``wiseft report``'s flags).

    ``alpha`` fixes the selected alpha instead of choosing it on validation records.
    ``metric`` is ``"primary"`` (each dataset's declared primary metric) or one metric
    name for every dataset. ``baselines`` adds a CSV of baseline models (``model``
    column, one column per dataset, percent) to those in results.jsonl; ImageNet runs
    also get the packaged set ``default_baselines`` (``"testbed"`` or ``"timm"``) unless
    ``use_default_baselines`` is False. ``build_report`` checks the metric and the set.

    Example:
        >>> ReportConfig(alpha=0.4, baselines="my_baselines.csv")
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    alpha: float | None = None
    metric: str = PRIMARY
    baselines: str | Path | None = None
    use_default_baselines: bool = True
    default_baselines: str = DEFAULT_BASELINES
