"""Fine-tune from a run config, on one process or under ``torchrun`` (``wiseft train``,
``python -m wiseft.train``); it writes the checkpoint ``wiseft run`` reuses
(``OUTPUT_DIR/checkpoints/NAME.safetensors``). Also the command-line pieces both entry
points share: the config-override arguments (``--output-dir``, ``--set KEY=VALUE``)
and the one-line report of a user's error.

Light to import: torch, the config and the pipeline load only when a command runs,
not for ``--help``.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from wiseft.core import WiseftError, configure_logging
from wiseft.io import Terminated, on_main_thread, raise_terminated

if TYPE_CHECKING:
    from wiseft.config import RunConfig

log = logging.getLogger("wiseft")


def train_from_config(cfg: RunConfig, *, names: list[str] | None = None, resume: bool = False,
                      fresh: bool = False, progress: bool = True) -> dict[str, Path]:
    """Fine-tune the config's runs (all, or ``names``) and write each one's weights.

    Checkpoints go to ``OUTPUT_DIR/checkpoints/train_NAME_KEY/`` (KEY: the run's train key), the metrics log to
    ``OUTPUT_DIR/train_NAME.jsonl``. Every process of a torchrun launch calls this.

    Example:
        >>> train_from_config(load_config("config.yaml"), resume=True)
    """
    from wiseft.backbones import load_backbone
    from wiseft.io import clear_dir, hold
    from wiseft.pipeline import ZeroShotModels, checkpoint_paths, prepare_data, resolve_precisions, train_and_save
    from wiseft.runtime import barrier, init_distributed

    info, device = init_distributed(cfg.device)
    cfg, _ = resolve_precisions(cfg, device)  # the train keys of what runs, as wiseft run's
    runs = cfg.finetune_runs()
    unknown = [n for n in names or [] if n not in runs]
    if unknown:
        raise ValueError(f"no fine-tuning run named {unknown[0]!r}; the config has {sorted(runs)}")
    run_dir = Path(cfg.output_dir)
    data = prepare_data(cfg)
    backbone = load_backbone(cfg.backbone)
    zs = ZeroShotModels(backbone, data, cfg, device)  # FLYP: the model with its text tower
    out = {}
    for name in names or list(runs):
        final, ckpt_dir = checkpoint_paths(cfg, name)
        if fresh and info.main and ckpt_dir.exists():
            with hold(ckpt_dir, "training-checkpoint folder"):  # never under a process training there now
                clear_dir(ckpt_dir)
            (run_dir / f"train_{name}.jsonl").unlink(missing_ok=True)
        barrier()
        train_and_save(cfg, name, (*zs.of(runs[name]), backbone), data.train, resume=resume, progress=progress)
        out[name] = final
        if info.main:
            log.info("%s: weights in %s", name, final)
    return out


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
    """The ``train`` arguments (shared by ``python -m wiseft.train`` and ``wiseft train``)."""
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


def is_user_error(e: BaseException) -> bool:
    """Whether ``e`` is reported as one line (``wiseft: error: ...``, exit code 2) rather than
    a traceback: wiseft's named errors (``WiseftError``), a missing file or optional
    dependency, and plain ValueErrors that checks outside the library raise."""
    return isinstance(e, (WiseftError, FileNotFoundError, ImportError, ValueError))


# exit codes scripts can tell apart (docs/reliability.md); 1 is a bug (a traceback)
EXIT_USAGE = 2            # bad input: config, arguments, data, a checkpoint that does not read
EXIT_IOERR = 74           # EX_IOERR: writing or reading failed (disk full, quota, read-only, I/O error)
EXIT_NOPERM = 77          # EX_NOPERM: permission denied on a file or folder
EXIT_INTERRUPTED = 130    # 128 + SIGINT: Ctrl-C
EXIT_TERMINATED = 143     # 128 + SIGTERM


def describe_os_error(e: OSError) -> tuple[str, int]:
    """The one line and the exit code of an I/O failure, naming the file and what to do."""
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.EACCES, errno.EPERM):
        return (f"permission denied:{where}; give this user write access there (or choose another output "
                "folder) and run the command again", EXIT_NOPERM)
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device writing{where}; nothing half-written was left: free space "
                "there (or choose another output folder) and run the command again", EXIT_IOERR)
    if e.errno == errno.EROFS:
        return f"read-only file system:{where}; choose a writable output folder", EXIT_IOERR
    return f"I/O error on{where}: {e.strerror or e}; check the disk and run the command again", EXIT_IOERR


def call_command(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """``fn(args)`` with the command line's logging. A user's error (:func:`is_user_error`)
    prints one line on stderr and returns 2; an I/O failure one line and 74 (77: permission
    denied); Ctrl-C one line and 130, SIGTERM 143. Anything else (a bug) raises."""
    configure_logging()
    previous = signal.signal(signal.SIGTERM, raise_terminated) if on_main_thread() else None
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("wiseft: interrupted; every file written so far is whole (temporaries are removed): run the same "
              "command again to continue (fine-tunes resume from their last checkpoint)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print("wiseft: terminated (SIGTERM); every file written so far is whole: run the same command again "
              "to continue", file=sys.stderr)
        return EXIT_TERMINATED
    except Exception as e:
        if isinstance(e, OSError) and e.errno is not None and not isinstance(e, FileNotFoundError):
            message, code = describe_os_error(e)  # disk full, permission denied, ...: 74 or 77
        elif is_user_error(e):
            message, code = str(e), EXIT_USAGE
        else:
            raise
        print(f"wiseft: error: {message}", file=sys.stderr)
        return code
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)



def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m wiseft.train`` (run it under torchrun for several processes)."""
    p = argparse.ArgumentParser(prog="python -m wiseft.train", description="Fine-tune from a run config.")
    add_train_arguments(p)
    return call_command(cmd_train, p.parse_args(argv))
