"""WiSE-FT as a Hugging Face ``Trainer`` callback (``pip install 'wiseft[trainer]'``):
``Trainer(..., callbacks=[WiseftCallback("config.yaml", output_dir="runs/clip")])``."""

from __future__ import annotations

from typing import Any

import torch

from wiseft.integrations.frameworks import require_framework, watched_model
from wiseft.integrations.tracked import TrackedRun, track

transformers = require_framework("transformers", "trainer")


class WiseftCallback(transformers.TrainerCallback):
    """theta_0 when ``Trainer.train()`` begins; when it ends, WiSE-FT's alpha sweep on the
    config's evaluation sets, the records, ``summary.md``, the export at the alpha chosen on
    validation and the report, as ``wiseft run`` writes them (``wiseft.track``'s arguments:
    ``config`` and top-level settings, ``pretrained``, ``evaluate``, ``backbone``).
    ``model``: the model to watch; by default the Trainer's (a wiseft Classifier or a family's
    model inside it, else, with ``evaluate``, the whole model). ``every_epoch``: also sweep at
    each epoch's end (records of ``finetuned-epochN``). Every process of a distributed run
    sweeps its shard; rank 0 writes. ``result``: the RunResult once training ended.

    Example:
        >>> trainer = Trainer(model=clip, args=args, train_dataset=pairs,
        ...                   callbacks=[WiseftCallback("eval.yaml", output_dir="runs/clip")])
        >>> trainer.train()
    """

    def __init__(self, config: Any = None, *, model: torch.nn.Module | None = None, every_epoch: bool = False,
                 **settings: Any):
        self.config, self.model, self.every_epoch, self.settings = config, model, every_epoch, settings
        self.tracker: TrackedRun | None = None
        self.result = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        target = self.model or watched_model(model, "evaluate" in self.settings)
        self.tracker = track(target, self.config, **self.settings).start()

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.every_epoch and self.tracker is not None:
            self.tracker.epoch_end(int(round(state.epoch or 0)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.tracker is not None:
            self.result = self.tracker.finish()
