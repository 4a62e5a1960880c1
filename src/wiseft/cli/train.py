"""``wiseft train``: fine-tune from a run config, on one process or under ``torchrun``
(``torchrun -m wiseft train CONFIG``); it writes the checkpoint ``wiseft run`` reuses
(``OUTPUT_DIR/checkpoints/NAME.safetensors``). Also the config-override arguments
(``--output-dir``, ``--set KEY=VALUE``) that ``run``, ``demo`` and ``train`` share.

Light to import: torch, the config and the pipeline load only when a command runs,
not for ``--help``.
"""

from __future__ import annotations

import argparse


def shutdown() -> None:
    """Leave the process group, if this process joined one."""
    import torch

    from wiseft.runtime import current

    if current().enabled:
        torch.distributed.destroy_process_group()


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    """``--output-dir`` and ``--set KEY=VALUE``, the config overrides of ``run``, ``demo``
    and ``train`` (read back by :func:`config_overrides`)."""
    p.add_argument("--output-dir", help="run directory (overrides output_dir)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set finetune.epochs=2 (repeatable)")


def config_overrides(args: argparse.Namespace) -> dict:
    """The config fields ``--set`` and ``--output-dir`` override: ``{"finetune.epochs": 2}``
    (each value read as YAML). A ``--set`` without ``=`` is a ConfigError."""
    import yaml

    from wiseft.config import ConfigError

    overrides = {}
    for pair in args.set:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        overrides[key] = yaml.safe_load(value)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    return overrides


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The ``train`` arguments."""
    p.add_argument("config", help="run config YAML (backbone, data, finetune, variants)")
    p.add_argument("--run", action="append", dest="names", metavar="NAME",
                   help="train only this run: 'finetuned' or a variant name (repeatable)")
    add_config_arguments(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue from the latest checkpoints")
    group.add_argument("--fresh", action="store_true", help="delete earlier checkpoints and start over")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``train`` from parsed arguments; rank 0 prints each run's weights file."""
    from wiseft.config import load_config
    from wiseft.pipeline import train_from_config
    from wiseft.runtime import current

    cfg = load_config(args.config, config_overrides(args))
    try:
        out = train_from_config(cfg, names=args.names, resume=args.resume, fresh=args.fresh,
                                progress=not args.no_progress)
    finally:
        shutdown()
    if current().main:
        for name, path in out.items():
            print(f"{name}: {path}")
    return 0
