"""The ``wiseft`` command: each subcommand parses arguments and calls one library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from wiseft.cli.errors import call_command
from wiseft.cli.train import (
    add_config_arguments,
    add_train_arguments,
    cmd_train,
    config_overrides,
    shutdown,
)
from wiseft.core import WiseftError, invoked_as

DEMO_CONFIG = Path(__file__).parents[1] / "resources" / "bbc_news.yaml"


def _run_overrides(args) -> dict:
    """The config overrides of ``run`` and ``demo``. A malformed ``--set`` exits with
    status 1 here, as these commands always have (``train`` reports it with status 2)."""
    from wiseft.config import ConfigError

    try:
        return config_overrides(args)
    except ConfigError as e:
        raise SystemExit(f"wiseft: error: {e}") from None


def cmd_run(args) -> int:
    from wiseft.config import load_config

    # the config first, with the torch-free config package: a bad one is an error in well
    # under a second, before torch and the model stack load (seconds)
    cfg = load_config(args.config, _run_overrides(args))
    from wiseft.core import summary_table
    from wiseft.pipeline import run
    from wiseft.runtime import current

    try:  # under torchrun (python -m wiseft run): every process trains and scores its shard; rank 0 reports
        result = run(cfg, progress=not args.no_progress, quick=args.quick)
        main_process = current().main
    finally:
        shutdown()
    if not main_process:
        return 0
    print(summary_table(result.records))
    print(f"\nselected alpha (held-out validation): {json.dumps(result.selected_alpha)}")
    print(f"results: {result.run_dir / 'results.jsonl'}")
    if result.export_dir:
        print(f"exported model: {result.export_dir}")
    if not args.no_report:
        _report(result.run_dir)
    return 0


def _report(run_dir: Path, alpha: float | None = None, baselines: str | None = None,
            default_baselines: bool = True) -> None:
    from wiseft.config import ReportConfig
    from wiseft.report import build_report

    path = build_report(run_dir, settings=ReportConfig(alpha=alpha, baselines=baselines,
                                                       use_default_baselines=default_baselines))
    print(f"report: {path}")


def cmd_demo(args) -> int:
    args.config = str(DEMO_CONFIG)
    return cmd_run(args)


def cmd_report(args) -> int:
    from wiseft.config import ReportConfig
    from wiseft.report import build_report

    settings = ReportConfig(alpha=args.alpha, baselines=args.baselines,
                            use_default_baselines=not args.no_default_baselines,
                            default_baselines=args.default_baselines, metric=args.metric)
    path = build_report(Path(args.run_dir), settings=settings)
    print(f"report: {path}")
    return 0


def _selection(args, default_keep: int) -> dict:
    keep = default_keep if args.keep is None else {"a": 0, "b": 1}.get(args.keep, args.keep)
    return {"include": args.include or None, "exclude": args.exclude, "keep": int(keep)}


def _merge_args(sp, keep_help: str) -> None:
    sp.add_argument("--include", action="append", metavar="GLOB",
                    help="merge only tensors whose name matches (repeatable; default all)")
    sp.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                    help="do not merge these tensors, e.g. 'head.*' for a new task head (repeatable)")
    sp.add_argument("--keep", help=keep_help)
    sp.add_argument("--max-shard-size", help="write sharded safetensors of at most this size, e.g. 5GB")
    sp.add_argument("--dry-run", action="store_true",
                    help="read only the headers; report what would be merged and the memory it needs")


def cmd_interpolate(args) -> int:
    from wiseft.config import MergeConfig
    from wiseft.heads import export_model, load_model
    from wiseft.io import META_FILE, load_state, save_state
    from wiseft.merge import (
        Interpolator,
        alpha_destinations,
        alpha_label,
        check_alpha,
        check_call,
        is_peft_adapter,
        is_safetensors_checkpoint,
        open_checkpoint,
        plan_files,
        write_interpolations,
    )

    for a in args.alpha:
        check_alpha(a, args.extrapolate)
        if args.fisher:  # the Fisher merge's weights (1 - alpha, alpha) and floor, checked as wiseft merge does
            check_call("fisher", False, 2, {"fisher_floor": args.fisher_floor}, weights=(1 - a, a),
                       extras={"fisher": args.fisher})
    alpha_destinations(args.alpha, args.out)  # an alpha given twice: refused before any file is opened
    if is_peft_adapter(args.model_b):
        return _interpolate_adapter(args)
    settings = MergeConfig(allow_extrapolation=args.extrapolate, max_shard_bytes=args.max_shard_size,
                           **_selection(args, 1))
    files = all(is_safetensors_checkpoint(p) for p in (args.model_a, args.model_b))
    if args.dry_run:
        if not files:
            raise ValueError("--dry-run reads safetensors headers; both models must be safetensors "
                             "files, shard indexes or directories holding them")
        print(plan_files([args.model_a, args.model_b], settings, outputs=len(args.alpha)).summary())
        return 0
    parents = [args.model_a, args.model_b]
    if (Path(args.model_a) / META_FILE).exists():
        model, backbone, meta = load_model(args.model_a)
        theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        interp = Interpolator(theta_0, load_state(args.model_b), settings)
        for a, dest in alpha_destinations(args.alpha, args.out).items():
            interp.load_into(model, a)
            dest = export_model(model, backbone, {**meta, "alpha": a, "parents": parents}, dest)
            print(f"alpha {alpha_label(a)}: {dest}")
        return 0
    dests = alpha_destinations(args.alpha, args.out, "" if args.max_shard_size else ".safetensors")
    if args.fisher:
        return _interpolate_fisher(args, dests, parents)
    if files:
        base = json.loads(open_checkpoint(args.model_a).metadata.get("wiseft", "{}"))
        metas = [{"wiseft": json.dumps({**base, "alpha": a, "parents": parents})} for a in dests]
        paths = write_interpolations(args.model_a, args.model_b, dests, settings, metadata=metas)
        for a, dest in zip(dests, paths):
            print(f"alpha {alpha_label(a)}: {dest}")
        return 0
    interp = Interpolator(load_state(args.model_a), load_state(args.model_b), settings)
    for a, merged in interp.states(args.alpha):
        save_state(dests[a], merged, {"alpha": a, "parents": parents})
        print(f"alpha {alpha_label(a)}: {dests[a]}")
    return 0


def _interpolate_adapter(args) -> int:
    """``interpolate BASE ADAPTER_DIR``: theta_0 + alpha * B A of a peft LoRA adapter, written as
    a wiseft model (BASE a wiseft model dir, which ``wiseft evaluate`` scores) or a state dict
    file, or with ``--format peft`` as the adapter scaled to alpha in peft's own format."""
    from wiseft.heads import export_model, load_model
    from wiseft.io import META_FILE, load_state, save_state
    from wiseft.merge import (
        AdapterInterpolator,
        alpha_destinations,
        alpha_label,
        model_base,
        read_peft_adapter,
        state_base,
        write_peft_adapter,
    )

    given = [flag for flag, value in (("--include", args.include), ("--exclude", args.exclude), ("--keep", args.keep),
                                      ("--max-shard-size", args.max_shard_size), ("--dry-run", args.dry_run),
                                      ("--fisher", args.fisher)) if value]
    if given:  # each selects or plans over two checkpoints' tensors; an adapter is scaled whole
        raise ValueError(f"{args.model_b} is a peft LoRA adapter, scaled whole by alpha: {', '.join(given)} "
                         "applies to two checkpoints, not to an adapter")
    parents = [args.model_a, args.model_b]
    wiseft_dir = (Path(args.model_a) / META_FILE).exists()
    suffix = "" if wiseft_dir or args.format == "peft" else ".safetensors"
    dests = alpha_destinations(args.alpha, args.out, suffix)
    model, backbone, meta = load_model(args.model_a) if wiseft_dir else (None, None, {})
    theta_0 = {k: v.detach().clone() for k, v in model.state_dict().items()} if wiseft_dir else load_state(args.model_a)
    # checked against BASE in either format: architecture, every target key and shape
    base = model_base(backbone.extras.get("model", model), model) if wiseft_dir else state_base(theta_0)
    theta_1 = read_peft_adapter(args.model_b, base)
    if args.format == "peft":
        for a, dest in dests.items():
            print(f"alpha {alpha_label(a)} (peft adapter): "
                  f"{write_peft_adapter(args.model_b, dest, a, {'parents': parents})}")
        return 0
    interp = AdapterInterpolator(theta_0, theta_1, allow_extrapolation=args.extrapolate)
    for a, dest in dests.items():
        if wiseft_dir:
            export_model(interp.load_into(model, a), backbone, {**meta, "alpha": a, "parents": parents}, dest)
        else:
            save_state(dest, interp.merge(a), {"alpha": a, "parents": parents})
        print(f"alpha {alpha_label(a)}: {dest}")
    return 0


def _interpolate_fisher(args, dests: dict, parents: list[str]) -> int:
    from wiseft.io import load_state, save_state
    from wiseft.merge import alpha_label, fisher_merge

    if args.include or args.exclude:
        raise ValueError("--fisher merges every tensor; --include/--exclude are not supported with it")
    thetas = [load_state(args.model_a), load_state(args.model_b)]
    fishers = [load_state(f) for f in args.fisher]
    for a, dest in dests.items():
        merged = fisher_merge(thetas, fishers, [1 - a, a], fisher_floor=args.fisher_floor)
        save_state(dest, merged, {"alpha": a, "parents": parents, "fisher": list(args.fisher)})
        print(f"alpha {alpha_label(a)} (Fisher-weighted): {dest}")
    return 0


def cmd_soup(args) -> int:
    from wiseft.config import MergeConfig
    from wiseft.io import load_state, save_state
    from wiseft.merge import average_files, check_call, is_safetensors_checkpoint, plan_files, weighted_average

    check_call("soup", False, len(args.models), weights=args.weights)  # as wiseft merge --method soup, before any file
    settings = MergeConfig(max_shard_bytes=args.max_shard_size, **_selection(args, 0))
    files = all(is_safetensors_checkpoint(m) for m in args.models)
    if args.dry_run:
        if not files:
            raise ValueError("--dry-run reads safetensors headers; every model must be a safetensors checkpoint")
        print(plan_files(args.models, settings, average=True).summary())
        return 0
    meta = {"soup": list(args.models), "weights": args.weights}
    if files:
        dest = average_files(args.models, args.out, args.weights, settings, metadata={"wiseft": json.dumps(meta)})
    else:
        dest = save_state(args.out, weighted_average([load_state(m) for m in args.models], args.weights, settings),
                          meta)
    print(f"soup of {len(args.models)} models: {dest}")
    return 0


def cmd_merge(args) -> int:
    from wiseft.cli.merge import MergeJob, describe_merge, parse_pairs, run_merge
    from wiseft.config import MergeConfig

    extras: dict[str, list[str]] = {}
    for name, path in parse_pairs(args.extra, "--extra"):
        extras.setdefault(name, []).append(str(path))
    settings = MergeConfig(include=args.include or None, exclude=args.exclude, max_shard_bytes=args.max_shard_size,
                           keep=None if args.keep is None else int(args.keep))
    job = MergeJob(args.method, tuple(args.models), args.out, base=args.base,
                   params=dict(parse_pairs(args.param, "--param")),
                   weights=tuple(args.weights) if args.weights else None,
                   extras={k: tuple(v) for k, v in extras.items()}, settings=settings)
    if args.dry_run:
        print(describe_merge(job))
        return 0
    dest = run_merge(job)
    print(f"{args.method} merge of {len(args.models)} model(s){' onto ' + args.base if args.base else ''}: {dest}")
    return 0


def cmd_evaluate(args) -> int:
    from wiseft.config import load_config
    from wiseft.evaluation import EvalSettings, evaluate_records
    from wiseft.heads import load_model
    from wiseft.io import append_records
    from wiseft.pipeline import prepare_data
    from wiseft.runtime import init_distributed

    cfg = load_config(args.config)
    data = prepare_data(cfg)
    model, backbone, meta = load_model(args.model)
    if list(meta.get("classnames", data.classnames)) != data.classnames:
        raise ValueError(f"model {args.model} was built for other classes than {args.config}'s")
    info, device = init_distributed(cfg.device)  # under torchrun each process scores its chunks of every set
    try:
        settings = EvalSettings.from_config(cfg.evaluation, progress=False)
        records = evaluate_records(model.to(device), data.evalsets, backbone, model_name=args.name,
                                   alpha=meta.get("alpha"), settings=settings,
                                   provenance={"model": str(args.model), "backbone": meta.get("backbone")})
    finally:
        shutdown()
    if not info.main:
        return 0
    if args.out:
        append_records(args.out, records)
    for r in records:
        counts = f"  ({r.correct}/{r.total})" if r.total is not None else ""
        print(f"{r.dataset:30s} {r.role:10s} {r.metric:12s} {100 * r.value:6.2f}{counts}")
    return 0


REGISTRIES = {"backbones": ("wiseft.core.registry", "BACKBONES"), "datasets": ("wiseft.core.registry", "DATASETS"),
              "templates": ("wiseft.core.templates", "TEMPLATES"), "merge-methods": ("wiseft.core.registry", "MERGE_METHODS")}


def cmd_list(args) -> int:
    import importlib

    unknown = [k for k in args.kinds if k not in REGISTRIES]
    if unknown:
        raise WiseftError(f"wiseft list: unknown kind {unknown[0]!r}; known: {', '.join(REGISTRIES)}")
    for kind in args.kinds or list(REGISTRIES):
        module, name = REGISTRIES[kind]
        registry = getattr(importlib.import_module(module), name)
        print(f"{kind}: {', '.join(registry.names())}")
    return 0


def cmd_predict(args) -> int:
    import torch

    from wiseft.data import load_image
    from wiseft.heads import load_model

    model, backbone, meta = load_model(args.model)
    classnames = meta["classnames"]
    raw = [load_image(x) for x in args.inputs] if backbone.modality == "image" else list(args.inputs)
    batch, _ = backbone.collate([(backbone.transform_eval(x), 0) for x in raw])
    temperature = meta.get("temperature") or 1.0  # fitted on held-out validation at the exported alpha
    with torch.no_grad():
        probs = (model(batch) / temperature).softmax(dim=-1)
    k = min(args.top_k, len(classnames))
    for name, p in zip(args.inputs, probs):
        top = p.topk(k)
        shown = ", ".join(f"{classnames[i]} {100 * v:.1f}%" for v, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"{name}: {shown}")
    return 0


def cmd_env(args) -> int:
    from wiseft.cli.env import environment, format_environment

    env = environment()
    print(json.dumps(env, indent=2) if args.json else format_environment(env))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``wiseft`` command's parser: each subcommand's ``fn`` runs it."""
    p = argparse.ArgumentParser(prog="wiseft", description="Robust fine-tuning of zero-shot models (WiSE-FT).")
    sub = p.add_subparsers(dest="command", required=True)
    _add_run_commands(sub)
    _add_report_command(sub)
    _add_merge_commands(sub)
    _add_model_commands(sub)
    sp = sub.add_parser("list", help="what can be named: backbone families, dataset kinds, template sets, merge methods")
    sp.add_argument("kinds", nargs="*", metavar="KIND",
                    help=f"one or more of {', '.join(sorted(REGISTRIES))} (default: all)")
    sp.set_defaults(fn=cmd_list)
    sp = sub.add_parser("train", help="fine-tune only (resumable; under torchrun for several processes)")
    add_train_arguments(sp)
    sp.set_defaults(fn=cmd_train)
    sp = sub.add_parser("env", help="versions, devices and their native precisions, caches: paste it into a bug report")
    sp.add_argument("--json", action="store_true", help="as JSON")
    sp.set_defaults(fn=cmd_env)
    return p


def _run_arguments(sp: argparse.ArgumentParser) -> None:
    """The options of ``run`` and ``demo``."""
    add_config_arguments(sp)
    sp.add_argument("--no-progress", action="store_true", help="hide progress bars")
    sp.add_argument("--no-report", action="store_true", help="skip the HTML report")
    sp.add_argument("--quick", action="store_true",
                    help="check the config end to end in minutes: the same pipeline on a few dozen examples "
                         "per set, a few steps per fine-tune and three alphas, into OUTPUT_DIR-quick")


def _add_run_commands(sub) -> None:
    """``run`` and ``demo``: the whole pipeline."""
    sp = sub.add_parser("run", help="zero-shot, fine-tune, alpha sweep, report, export")
    sp.add_argument("config")
    _run_arguments(sp)
    sp.set_defaults(fn=cmd_run)

    sp = sub.add_parser("demo", help="the offline demo: MiniLM on BBC News, shifted to headlines")
    _run_arguments(sp)
    sp.set_defaults(fn=cmd_demo)


def _add_report_command(sub) -> None:
    """``report``: tables, plots and the HTML page of a finished run."""
    sp = sub.add_parser("report", help="tables, plots and an HTML page from RUN_DIR/results.jsonl")
    sp.add_argument("run_dir")
    sp.add_argument("--alpha", type=float, help="report this fixed alpha instead of the selected one")
    sp.add_argument("--baselines", metavar="CSV",
                    help="baseline models for effective robustness: a 'model' column, one column per dataset (%%)")
    sp.add_argument("--default-baselines", choices=("testbed", "timm"), default="testbed",
                    help="packaged baseline models for ImageNet runs: the robustness testbed's standard models "
                         "(Taori et al. 2020; default) or timm's ImageNet-1k models")
    sp.add_argument("--no-default-baselines", action="store_true",
                    help="leave out the packaged baseline models (ImageNet runs)")
    sp.add_argument("--metric", default="primary", metavar="NAME",
                    help="the metric of every table, plot and the alpha selection: 'primary' (default: each "
                         "dataset's own, e.g. FMoW worst_region_acc, iWildCam macro_f1) or one name, e.g. top1")
    sp.set_defaults(fn=cmd_report)


def _add_merge_commands(sub) -> None:
    """``interpolate``, ``soup`` and ``merge``: merging checkpoint files."""
    sp = sub.add_parser("interpolate", help="theta = (1 - alpha) * A + alpha * B for checkpoint files")
    sp.add_argument("model_a", help="zero-shot side: wiseft model dir, .safetensors, .pt, or HF dir")
    sp.add_argument("model_b", help="fine-tuned side, same architecture, or a peft LoRA adapter folder")
    sp.add_argument("--format", choices=("merged", "peft"), default="merged",
                    help="for an adapter: the merged model at alpha, or the adapter scaled to alpha (peft's format)")
    sp.add_argument("--alpha", type=float, action="append", required=True, help="repeatable")
    sp.add_argument("--out", required=True, help="output file or directory")
    sp.add_argument("--extrapolate", action="store_true", help="allow alphas outside [0, 1]")
    _merge_args(sp, "where tensors not merged come from: a or b (default b, the fine-tuned side)")
    sp.add_argument("--fisher", nargs=2, metavar=("FISHER_A", "FISHER_B"),
                    help="Fisher-weighted merge with these diagonal Fisher files (in memory)")
    sp.add_argument("--fisher-floor", type=float, default=1e-8, help="lower bound on Fisher values")
    sp.set_defaults(fn=cmd_interpolate)

    sp = sub.add_parser("soup", help="weighted average (uniform soup) of N checkpoints of one architecture")
    sp.add_argument("models", nargs="+", help="safetensors files or dirs (merged out of core), or .pt files")
    sp.add_argument("--weights", type=float, nargs="+", help="one per model (default uniform)")
    sp.add_argument("--out", required=True, help="output .safetensors file, or a directory")
    _merge_args(sp, "index of the model that tensors not merged come from (default 0)")
    sp.set_defaults(fn=cmd_soup)

    sp = sub.add_parser("merge", help="merge checkpoints by any registered method (wiseft list merge-methods)")
    sp.add_argument("models", nargs="+", metavar="MODEL", help="fine-tuned checkpoints: wiseft model dirs, "
                    "safetensors files or dirs (merged out of core), or .pt files")
    sp.add_argument("--method", required=True, help="a registered merge method, e.g. linear, ties, dare, soup")
    sp.add_argument("--base", help="theta_0, the zero-shot (pre-trained) model, for methods that take one")
    sp.add_argument("--out", required=True, help="output .safetensors file, or a directory")
    sp.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="a method parameter, the value read as YAML, e.g. density=0.2, 'ramp=[0.2, 0.8]', "
                         "'rules={\"*.ln_*\": 0.5}' (repeatable)")
    sp.add_argument("--weights", type=float, nargs="+", help="one per model (methods that take weights)")
    sp.add_argument("--extra", action="append", default=[], metavar="NAME=PATH",
                    help="a per-model checkpoint the method reads, in model order, e.g. fisher=f_a.safetensors "
                         "(repeatable)")
    _merge_args(sp, "index of the input that tensors not merged come from: 0 is --base when given, then the "
                    "models (default: the first model)")
    sp.set_defaults(fn=cmd_merge)


def _add_model_commands(sub) -> None:
    """``evaluate`` and ``predict``: using an exported model."""
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wiseft`` command. The command line, as typed, is what a run's
    model card says made it (``core.invoked_as``)."""
    args = build_parser().parse_args(argv)
    with invoked_as(sys.argv[1:] if argv is None else argv, _prog(argv is None)):
        return call_command(args.fn, args)


def _prog(from_argv: bool) -> str:
    """How the command was started: ``wiseft``, ``python -m wiseft``, or torchrun's
    ``-m wiseft`` with its process count (its other flags are not known here)."""
    if not from_argv:  # main([...]) from Python: the command it stands for
        return "wiseft"
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun in every process it starts
        per_node, world = os.environ.get("LOCAL_WORLD_SIZE", "1"), os.environ.get("WORLD_SIZE", "1")
        nodes = int(world) // max(1, int(per_node))
        return f"torchrun{f' --nnodes {nodes}' if nodes > 1 else ''} --nproc_per_node {per_node} -m wiseft"
    return "python -m wiseft" if sys.argv[0].endswith("__main__.py") else "wiseft"


if __name__ == "__main__":
    sys.exit(main())
