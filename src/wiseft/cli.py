"""The ``wiseft`` command: each subcommand parses arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

DEMO_CONFIG = Path(__file__).parent / "resources" / "bbc_news.yaml"


def _set_pairs(pairs: list[str]) -> dict:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise SystemExit(f"wiseft: error: --set expects KEY=VALUE, got {p!r}")
        out[key] = yaml.safe_load(value)
    return out


def cmd_run(args) -> int:
    from .config import load_config
    from .pipeline import run
    from .results import summary_table

    overrides = _set_pairs(args.set)
    if args.output_dir:
        overrides["output_dir"] = args.output_dir
    cfg = load_config(args.config, overrides)
    result = run(cfg, progress=not args.no_progress)
    print(summary_table(result.records))
    print(f"\nselected alpha (held-out validation): {json.dumps(result.selected_alpha)}")
    print(f"results: {result.run_dir / 'results.jsonl'}")
    if result.export_dir:
        print(f"exported model: {result.export_dir}")
    if not args.no_report:
        _report(result.run_dir)
    return 0


def _report(run_dir: Path, alpha: float | None = None) -> None:
    from .report import build_report

    path = build_report(run_dir, alpha=alpha)
    print(f"report: {path}")


def cmd_demo(args) -> int:
    args.config = str(DEMO_CONFIG)
    return cmd_run(args)


def cmd_report(args) -> int:
    _report(Path(args.run_dir), args.alpha)
    return 0


def cmd_interpolate(args) -> int:
    from .checkpoint import META_FILE, export_model, load_model, load_state, read_meta, save_state
    from .merge import Interpolator, check_alpha, interpolate

    for a in args.alpha:
        check_alpha(a, args.extrapolate)
    out = Path(args.out)
    many = len(args.alpha) > 1
    if (Path(args.model_a) / META_FILE).exists():
        model, backbone, meta = load_model(args.model_a)
        theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        interp = Interpolator(theta_0, load_state(args.model_b), allow_extrapolation=args.extrapolate)
        for a in args.alpha:
            interp.load_into(model, a)
            dest = export_model(model, backbone, {**meta, "alpha": a, "parents": [args.model_a, args.model_b]},
                                out / f"alpha_{a:.2f}" if many else out)
            print(f"alpha {a:.2f}: {dest}")
        return 0
    theta_0, theta_1 = load_state(args.model_a), load_state(args.model_b)
    meta = read_meta(args.model_a) if args.model_a.endswith(".safetensors") else {}
    for a in args.alpha:
        merged = interpolate(theta_0, theta_1, a, allow_extrapolation=args.extrapolate)
        dest = out / f"alpha_{a:.2f}.safetensors" if many else out
        save_state(dest, merged, {**meta, "alpha": a, "parents": [args.model_a, args.model_b]})
        print(f"alpha {a:.2f}: {dest}")
    return 0


def cmd_evaluate(args) -> int:
    from .checkpoint import load_model
    from .config import load_config
    from .evaluate import evaluate
    from .pipeline import prepare_data, resolve_device
    from .results import Record, append_records, summary_table

    cfg = load_config(args.config)
    data = prepare_data(cfg)
    model, backbone, meta = load_model(args.model)
    if list(meta.get("classnames", data.classnames)) != data.classnames:
        raise ValueError(f"model {args.model} was built for other classes than {args.config}'s")
    model.to(resolve_device(cfg.device))
    counts = evaluate(model, data.evalsets, backbone, batch_size=cfg.evaluation.batch_size,
                      precision=cfg.evaluation.precision, cache=False)
    roles = {es.name: es.role for es in data.evalsets}
    records = [Record(model=args.name, alpha=meta.get("alpha"), dataset=n, role=roles[n], metric="top1",
                      value=c / t if t else 0.0, correct=c, total=t,
                      provenance={"model": str(args.model), "backbone": meta.get("backbone")})
               for n, (c, t) in counts.items()]
    if args.out:
        append_records(args.out, records)
    for r in records:
        print(f"{r.dataset:30s} {r.role:10s} top1 {100 * r.value:6.2f}  ({r.correct}/{r.total})")
    return 0


def cmd_train(args) -> int:
    from .train.launch import run_args

    return run_args(args)


def cmd_predict(args) -> int:
    import torch

    from .checkpoint import load_model
    from .data.folders import load_image

    model, backbone, meta = load_model(args.model)
    classnames = meta["classnames"]
    raw = [load_image(x) for x in args.inputs] if backbone.modality == "image" else list(args.inputs)
    batch, _ = backbone.collate([(backbone.transform_eval(x), 0) for x in raw])
    with torch.no_grad():
        probs = model(batch).softmax(dim=-1)
    k = min(args.top_k, len(classnames))
    for name, p in zip(args.inputs, probs):
        top = p.topk(k)
        shown = ", ".join(f"{classnames[i]} {100 * v:.1f}%" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{name}: {shown}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="wiseft", description="Robust fine-tuning of zero-shot models (WiSE-FT).")
    sub = p.add_subparsers(dest="command", required=True)

    def run_args(sp):
        sp.add_argument("--output-dir", help="run directory (overrides output_dir)")
        sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set finetune.epochs=2 (repeatable)")
        sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
        sp.add_argument("--no-report", action="store_true", help="skip the HTML report")

    sp = sub.add_parser("run", help="zero-shot, fine-tune, alpha sweep, report, export")
    sp.add_argument("config")
    run_args(sp)
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("demo", help="the offline demo: MiniLM on BBC News, shifted to headlines")
    run_args(sp)
    sp.set_defaults(fn=cmd_demo)

    sp = sub.add_parser("report", help="tables, plots and an HTML page from RUN_DIR/results.jsonl")
    sp.add_argument("run_dir")
    sp.add_argument("--alpha", type=float, help="report this fixed alpha instead of the selected one")
    sp.set_defaults(fn=cmd_report)

    sp = sub.add_parser("interpolate", help="theta = (1 - alpha) * A + alpha * B for checkpoint files")
    sp.add_argument("model_a", help="zero-shot side: wiseft model dir, .safetensors, .pt, or HF dir")
    sp.add_argument("model_b", help="fine-tuned side, same architecture")
    sp.add_argument("--alpha", type=float, action="append", required=True, help="repeatable")
    sp.add_argument("--out", required=True, help="output file or directory")
    sp.add_argument("--extrapolate", action="store_true", help="allow alphas outside [0, 1]")
    sp.set_defaults(fn=cmd_interpolate)

    sp = sub.add_parser("evaluate", help="evaluate an exported model on a config's test and shift sets")
    sp.add_argument("model")
    sp.add_argument("config")
    sp.add_argument("--name", default="evaluated", help="model name in the records")
    sp.add_argument("--out", help="append records to this results.jsonl")
    sp.set_defaults(fn=cmd_evaluate)

    sp = sub.add_parser("predict", help="top classes for images (or texts, for a text model)")
    sp.add_argument("model")
    sp.add_argument("inputs", nargs="+")
    sp.add_argument("--top-k", type=int, default=3)
    sp.set_defaults(fn=cmd_predict)

    sp = sub.add_parser("train", help="fine-tune only (resumable; under torchrun for several processes)")
    from .train.launch import add_arguments

    add_arguments(sp)
    sp.set_defaults(fn=cmd_train)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wiseft`` command."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.base import DataError
    from .merge import MergeError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.fn(args)
    except (ConfigError, DataError, CheckpointError, MergeError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"wiseft: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
