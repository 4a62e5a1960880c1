"""WiSE-FT as a Lightning callback (``pip install 'wiseft[lightning]'``):
``lightning.Trainer(..., callbacks=[WiseftCallback("config.yaml", output_dir="runs/clip")])``."""

from __future__ import annotations

from typing import Any

import torch

from wiseft.integrations.frameworks import require_framework, watched_model
from wiseft.integrations.tracked import TrackedRun, track

lightning = require_framework("lightning", "lightning")


class WiseftCallback(lightning.Callback):
    """theta_0 when ``Trainer.fit()`` starts training; when it ends, WiSE-FT's alpha sweep on
    the config's evaluation sets, the records, ``summary.md``, the export at the alpha chosen
    on validation and the report, as ``wiseft run`` writes them (``wiseft.track``'s
    arguments: ``config`` and top-level settings, ``pretrained``, ``evaluate``, ``backbone``).
    ``model``: the model to watch; by default the first wiseft Classifier or family's model
    inside the LightningModule (with ``evaluate``: the LightningModule itself).
    ``every_epoch``: also sweep at each training epoch's end. Under DDP every process sweeps
    its shard; rank 0 writes. ``result``: the RunResult once training ended.

    Example:
        >>> trainer = lightning.Trainer(max_epochs=2, callbacks=[WiseftCallback("eval.yaml")])
        >>> trainer.fit(module, loader)
    """

    def __init__(self, config: Any = None, *, model: torch.nn.Module | None = None, every_epoch: bool = False,
                 **settings: Any):
        super().__init__()
        self.config, self.model, self.every_epoch, self.settings = config, model, every_epoch, settings
        self.tracker: TrackedRun | None = None
        self.result = None

    def on_train_start(self, trainer, pl_module):
        target = self.model or watched_model(pl_module, "evaluate" in self.settings)
        self.tracker = track(target, self.config, **self.settings).start()

    def on_train_epoch_end(self, trainer, pl_module):
        if self.every_epoch and self.tracker is not None:
            self.tracker.epoch_end(trainer.current_epoch + 1)

    def on_train_end(self, trainer, pl_module):
        if self.tracker is not None:
            self.result = self.tracker.finish()
