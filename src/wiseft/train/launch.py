"""Fine-tune from a run config, on one process or under ``torchrun``; writes the
checkpoint ``wiseft run`` reuses (``OUTPUT_DIR/checkpoints/NAME.safetensors``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ..progress import configure_logging

if TYPE_CHECKING:  # torch and the config load only when training runs, not for ``--help``
    from ..config import RunConfig

log = logging.getLogger("wiseft")


def train_from_config(cfg: RunConfig, *, names: list[str] | None = None, resume: bool = False,
                      fresh: bool = False, progress: bool = True) -> dict[str, Path]:
    """Fine-tune the config's runs (all, or ``names``) and write each one's weights.

    Checkpoints go to ``OUTPUT_DIR/checkpoints/train_NAME_KEY/`` (KEY: the run's train key), the metrics log to
    ``OUTPUT_DIR/train_NAME.jsonl``. Every process of a torchrun launch calls this.

    Example:
        >>> train_from_config(load_config("config.yaml"), resume=True)
    """
    from ..backbones.base import load_backbone
    from ..checkpoint import save_state
    from ..files import clear_dir, hold
    from ..finetune import finetune
    from ..pipeline import build_zeroshot_model, checkpoint_paths, prepare_data
    from .distributed import barrier, init_distributed

    info, device = init_distributed(cfg.device)
    runs = cfg.finetune_runs()
    unknown = [n for n in names or [] if n not in runs]
    if unknown:
        raise ValueError(f"no fine-tuning run named {unknown[0]!r}; the config has {sorted(runs)}")
    run_dir = Path(cfg.output_dir)
    data = prepare_data(cfg)
    backbone = load_backbone(cfg.backbone)
    model = build_zeroshot_model(backbone, data.classnames, data.templates, cache=cfg.head_cache).to(device)
    out = {}
    for name in names or list(runs):
        final, ckpt_dir = checkpoint_paths(cfg, name)
        if fresh and info.main and ckpt_dir.exists():
            with hold(ckpt_dir, "training-checkpoint folder"):  # never under a process training there now
                clear_dir(ckpt_dir)
            (run_dir / f"train_{name}.jsonl").unlink(missing_ok=True)
        barrier()
        tuned = finetune(model, data.train, backbone, runs[name], log_path=run_dir / f"train_{name}.jsonl",
                         progress=progress, checkpoint_dir=ckpt_dir, resume=resume)
        out[name] = final
        if info.main:
            state = {k: v.detach().cpu().clone() for k, v in tuned.state_dict().items()}
            save_state(out[name], state, {"train_key": cfg.train_key(name)})
            log.info("%s: weights in %s", name, out[name])
        barrier()
    return out


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    import torch

    from .distributed import current

    if current().enabled:
        torch.distributed.destroy_process_group()


def add_arguments(p) -> None:
    """The ``train`` arguments (shared by ``python -m wiseft.train`` and ``wiseft train``)."""
    p.add_argument("config", help="run config YAML (backbone, data, finetune, variants)")
    p.add_argument("--run", action="append", dest="names", metavar="NAME",
                   help="train only this run: 'finetuned' or a variant name (repeatable)")
    p.add_argument("--output-dir", help="run directory (overrides output_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set finetune.epochs=2 (repeatable)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the latest checkpoints")
    group.add_argument("--fresh", action="store_true", help="delete earlier checkpoints and start over")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def run_args(args) -> int:
    """Run ``train`` from parsed arguments."""
    import yaml

    from ..config import load_config
    from .distributed import current

    overrides = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    cfg = load_config(args.config, overrides)
    try:
        out = train_from_config(cfg, names=args.names, resume=args.resume, fresh=args.fresh,
                                progress=not args.no_progress)
    finally:
        shutdown()
    if current().main:
        for name, path in out.items():
            print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m wiseft.train`` (run it under torchrun for several processes)."""
    import argparse
    import sys

    from ..checkpoint import CheckpointError
    from ..config import ConfigError
    from ..data.base import DataError

    p = argparse.ArgumentParser(prog="python -m wiseft.train", description="Fine-tune from a run config.")
    add_arguments(p)
    args = p.parse_args(argv)
    configure_logging()
    try:
        return run_args(args)
    except (ConfigError, DataError, CheckpointError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"wiseft: error: {e}", file=sys.stderr)
        return 2
