"""Where a run's metrics also go: experiment trackers (TensorBoard, MLflow), one section
for the whole run (every fine-tune and every sweep)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, field_validator

from wiseft.config.errors import FieldError


class MlflowConfig(BaseModel):
    """An MLflow run per ``wiseft run``: ``tracking_uri`` (none: a local SQLite store,
    ``sqlite:///OUTPUT_DIR/mlflow/mlflow.db``, its artifacts in ``OUTPUT_DIR/mlflow/artifacts``),
    ``experiment`` (created when missing), ``run_name`` (none: the output folder's name)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = None
    experiment: str = "wiseft"
    run_name: str | None = None

    @field_validator("experiment")
    @classmethod
    def _experiment(cls, v: str) -> str:
        if not v.strip():
            raise FieldError((), "give the MLflow experiment a name")
        return v


class TrackingConfig(BaseModel):
    """Experiment trackers the run logs to, besides its own files: its parameters (the
    flattened config), each fine-tune's loss, learning rate and samples/s per logged step,
    each sweep's records (step = round(alpha * 100)), the selected alpha, and at the end
    summary.md and results.jsonl.

    ``tensorboard``: event files in ``OUTPUT_DIR/tensorboard`` (``wiseft[tensorboard]``);
    ``mlflow``: ``true`` for the defaults of :class:`MlflowConfig`, or its fields (``wiseft[mlflow]``).
    """

    model_config = ConfigDict(extra="forbid")

    tensorboard: bool = False
    mlflow: MlflowConfig | None = None

    @field_validator("mlflow", mode="before")
    @classmethod
    def _mlflow(cls, v):
        if v is True:
            return MlflowConfig()
        if v is False:
            return None
        return v

    @property
    def enabled(self) -> bool:
        return self.tensorboard or self.mlflow is not None
