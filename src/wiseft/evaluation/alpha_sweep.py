"""Alpha sweeps: every (alpha, evaluation set) of the weight-space mix of two models.

Each evaluation set is decoded once, into its input cache (``wiseft.evaluation.cache``),
and every alpha runs over that cache. With a linear head (frozen encoder) features are
computed once and every alpha is scored from them, which is exact because the mixed
head's logits are the mix of the two heads' logits. With ``alphas_per_pass`` over 1,
alphas are grouped so that a group shares one read of each batch (``MultiAlpha``). The
end points' logits give the output-space ensemble's records too; in bf16 the first
alpha is also run in fp32 on a few inputs per set and the difference recorded.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from wiseft.backbones import Backbone
from wiseft.config import MergeConfig
from wiseft.core import OUTPUT_ENSEMBLE, Record, Score, output_ensemble_name, progress_bar
from wiseft.evaluation.cache import InputCache
from wiseft.evaluation.ensemble import output_ensemble_scores
from wiseft.evaluation.fingerprints import weights_fingerprint
from wiseft.evaluation.sets import EvalSet, cached_inputs, evaluate_set, score_more, to_records, validation_first
from wiseft.evaluation.settings import EvalSettings, SweepSettings
from wiseft.heads import Classifier, PromptClassifier, rederive_head
from wiseft.merge import Interpolator, MultiAlpha, MultiAlphaSettings, interpolate, interpolator_for, split_alphas
from wiseft.runtime import check_same, current, device_of

log = logging.getLogger("wiseft")


def sweep(model: Classifier, theta_0: dict[str, torch.Tensor], theta_1: dict[str, torch.Tensor],
          evalsets: Sequence[EvalSet], alphas: Sequence[float], backbone: Backbone, *,
          settings: EvalSettings | None = None, zeroshot: dict | None = None) -> list[Record]:
    """Records of every metric for every (alpha, evaluation set). ``model`` is used as the
    workspace: its weights are overwritten with each theta_alpha in turn. ``settings``
    (``SweepSettings``, or ``EvalSettings`` with the sweep's own fields at their defaults)
    say how: inputs are decoded once per set unless ``cache`` is False (the naive
    re-decoding loop); with ``precision='bf16'`` the first alpha is also run in fp32 on up
    to ``fp32_check`` inputs per set and the top-1 difference is logged and stored in the
    records' provenance (``bf16_check``). ``zeroshot`` is a dict shared by sweeps against
    the same theta_0 and sets (e.g. several fine-tunes of one model): alpha = 0, theta_0
    itself, is scored by the first of them and reused by the rest.

    Example:
        >>> records = sweep(model, zs_state, ft_state, [test, sketch], [0, 0.5, 1], backbone)
        >>> records = sweep(model, zs_state, ft_state, [test], [0, 0.5, 1], backbone,
        ...                 settings=SweepSettings(batch_size=64, precision="bf16", linear=True))
    """
    s = SweepSettings.of(settings).resolved(device_of(model))
    if current().enabled:  # every process must mix the same two models, or the gathered rows mix models
        check_same(f"the weights swept ({s.model_name})", weights_fingerprint(theta_0, theta_1))
    linear = s.linear and _same_encoder(theta_0, theta_1)
    # the same model, inputs and numerics give the same alpha-0 scores: keyed by what shapes them
    key = (linear, s.precision, s.batch_size, s.alphas_per_pass, tuple(es.name for es in evalsets))
    known = zeroshot.get(key) if zeroshot is not None and 0.0 in alphas else None
    todo = [a for a in alphas if known is None or a != 0.0]
    if known is not None:
        s = replace(s, fp32_check=0)  # the zero-shot sweep's check stands for this one
    ends: dict[float, dict[str, tuple]] = {}  # alpha 0 and 1 logits, for the output-space ensemble
    how: dict[str, Any] = {}  # what several alphas per pass adds to the provenance (_sweep_full)
    if linear:  # there the output-space ensemble is WiSE-FT itself
        scores, checks = _sweep_linear(model, theta_0, theta_1, evalsets, todo, backbone, s)
    else:
        scores, checks, how = _sweep_full(model, theta_0, theta_1, evalsets, todo, backbone, s, ends)
    if known is not None:
        scores[0.0], checks, zeroshot_ends = known
        if zeroshot_ends:
            ends[0.0] = zeroshot_ends
    elif zeroshot is not None and 0.0 in alphas:
        zeroshot[key] = (scores[0.0], checks, ends.get(0.0))
    provenance = {**(s.provenance or {}), **how}
    records = to_records(scores, evalsets, alphas, s.model_name, provenance, checks)
    labelled = [es for es in evalsets if not es.is_pairs]  # a pair set has no logits to ensemble
    if 0.0 in ends and 1.0 in ends and labelled:
        records += _ensemble_records(ends, labelled, alphas, s.model_name, provenance)
    return records


def _ensemble_records(ends: dict[float, dict[str, tuple]], evalsets, alphas, model_name: str,
                      provenance: dict) -> list[Record]:
    """Records of the output-space ensemble (1 - alpha) f_0(x) + alpha f_1(x) over the same
    alphas, from the two end points' logits (the paper's weight- vs output-space comparison)."""
    names = [es.name for es in evalsets]
    logits_0, logits_1 = ({n: ends[a][n][0] for n in names} for a in (0.0, 1.0))
    labels = {n: ends[1.0][n][1] for n in names}
    index = {n: ends[1.0][n][2] for n in names} if all(ends[1.0][n][2] is not None for n in names) else None
    scores = output_ensemble_scores(evalsets, logits_0, logits_1, labels, alphas, index)
    return to_records(scores, evalsets, alphas, output_ensemble_name(model_name),
                      {**provenance, "method": OUTPUT_ENSEMBLE}, {})


def _sweep_full(model: Classifier, theta_0, theta_1, evalsets: Sequence[EvalSet], alphas: Sequence[float],
                backbone: Backbone, s: SweepSettings, ends: dict[float, dict[str, tuple]]):
    """Every alpha's weights loaded in turn and every set scored with them; the end points'
    logits go into ``ends``. With ``alphas_per_pass`` over 1, a group of alphas is scored
    from one read of each batch (``_group_outputs``), each alpha scored as it would be alone;
    the third value is what the records' provenance adds: ``alphas_per_pass``, the group
    size, where vmap batched the forward (its logits agree to float rounding, not bit for
    bit; the loop fallback gives the same bits and adds nothing)."""
    interp = interpolator_for(theta_0, theta_1, allow_extrapolation=s.allow_extrapolation)  # LoRA: scales B A
    if s.cache is not False:  # decode everything before the first alpha, once
        for es in evalsets:
            cached_inputs(es, backbone, s)
    scores: dict[float, dict[str, dict[str, Score]]] = {}
    checks: dict[str, dict] = {}
    temperatures: dict[float, float] = {}
    how: dict[str, Any] = {}
    bar = progress_bar(total=len(alphas), desc=f"alpha sweep ({s.model_name})", disable=not s.progress, unit="alpha")
    pairs = any(es.is_pairs for es in evalsets)
    for k, group in enumerate(_alpha_groups(model, interp, alphas, s, pairs)):
        interp.load_into(model, group[0])  # a group of several: for the bf16 check only
        rederive_head(model)  # FLYP: the head of the mixed text tower
        multi = _multi_alpha(model, theta_0, theta_1, group, s) if len(group) > 1 else None
        for alpha in group:
            scores[alpha] = {}
        for es in validation_first(evalsets):
            outputs = _group_outputs(model, multi, es, backbone, s)
            for alpha, (scored, logits, labels) in zip(group, outputs):
                scores[alpha][es.name] = scored
                score_more(es, scored, logits, labels, temperatures, alpha, evalsets)
                if float(alpha) in (0.0, 1.0) and not es.is_pairs:
                    index = None if s.cache is False else cached_inputs(es, backbone, s).index
                    ends.setdefault(float(alpha), {})[es.name] = (logits, labels, index)
            if k == 0 and s.precision == "bf16" and s.fp32_check and s.cache is not False and not es.is_pairs:
                c, logits = cached_inputs(es, backbone, s), outputs[0][1]  # the first alpha, loaded into the model
                ref = c.outputs(model, s.batch_size, device_of(model), "fp32", limit=s.fp32_check)
                checks[es.name] = _compare(es, logits[:len(ref)], ref, c, group[0])
        if multi is not None and multi.vmapped:
            how["alphas_per_pass"] = max(how.get("alphas_per_pass", 0), len(group))
        bar.update(len(group))
    bar.close()
    return scores, checks, how


def _alpha_groups(model: Classifier, interp, alphas: Sequence[float], s: SweepSettings,
                  pairs: bool = False) -> list[list[float]]:
    """``alphas`` in order, in the groups that share a pass: ``s.alphas_per_pass`` at a time
    ('auto': as many as half a CUDA device's free memory holds stacked, one on CPU), or one
    at a time, with a log line saying why, where a model mixes otherwise than by stacking
    weights (a FLYP head re-derived per alpha, a LoRA adapter scaled), inputs are not cached
    or a pair set is scored (``pairs``: retrieval embeds both sides with the loaded model)."""
    want = s.alphas_per_pass
    if want != "auto" and (isinstance(want, bool) or not isinstance(want, int) or want < 1):
        raise ValueError(f"alphas_per_pass must be a positive integer or 'auto', got {want!r}")
    size = 1 if want == 1 or len(alphas) < 2 else _group_size(model, interp, alphas, s, pairs)
    return [list(alphas[i:i + size]) for i in range(0, len(alphas), size)]


def _group_size(model: Classifier, interp, alphas: Sequence[float], s: SweepSettings, pairs: bool) -> int:
    """How many alphas share a pass (``_alpha_groups``), for ``alphas_per_pass`` over 1 or 'auto'."""
    why = ("a PromptClassifier (FLYP) re-derives its head from each alpha's text tower"
           if isinstance(model, PromptClassifier) else
           "a pair set is scored by retrieval with each alpha's loaded model" if pairs else
           "a LoRA fine-tune is mixed by scaling its adapter" if not isinstance(interp, Interpolator) else
           "inputs are not cached (cache: false)" if s.cache is False else None)
    if why is not None:  # a warning where a number was asked for, a note where 'auto' was
        log.log(logging.INFO if s.alphas_per_pass == "auto" else logging.WARNING,
                "alphas_per_pass=%s: one alpha at a time, as %s", s.alphas_per_pass, why)
        return 1
    if s.alphas_per_pass != "auto":
        return int(s.alphas_per_pass)
    device = device_of(model)
    if device.type != "cuda":
        return 1
    free = torch.cuda.mem_get_info(device)[0]
    fits = replace(_multi_settings(s), max_memory=free // 2)  # the stacked weights within half the free memory
    size = len(split_alphas(alphas, interp.theta_0, interp.theta_1, fits)[0])
    log.info("alphas_per_pass=auto: %d alphas per pass (%.1f GiB free on %s)", size, free / 2**30, device)
    return size


def _multi_settings(s: SweepSettings) -> MultiAlphaSettings:
    """How a sweep's alphas share a pass: vmap (a loop where the forward cannot), mixed as the sweep mixes."""
    return MultiAlphaSettings(merge=MergeConfig(allow_extrapolation=s.allow_extrapolation))


def _multi_alpha(model: Classifier, theta_0, theta_1, group: Sequence[float], s: SweepSettings) -> MultiAlpha:
    """The stacked weights of ``group`` for ``model`` (``wiseft.merge.MultiAlpha``, vmap with
    a loop fallback), in eval mode as ``evaluate_set`` runs it."""
    return MultiAlpha(model.eval(), theta_0, theta_1, group, _multi_settings(s))


def _group_outputs(model: Classifier, multi: MultiAlpha | None, es: EvalSet, backbone: Backbone,
                   s: SweepSettings) -> list[tuple[dict[str, Score], torch.Tensor, torch.Tensor]]:
    """(scores, logits, labels) of ``es`` for each alpha of a group: the model as loaded
    (``multi`` None, ``evaluate_set``), or every alpha of ``multi`` from one read of each
    batch, the logits (batch, alphas, classes) so the batch stays on dim 0."""
    if multi is None:
        return [evaluate_set(model, es, backbone, s)]
    c = cached_inputs(es, backbone, s)
    out = c.outputs(lambda x: multi(x).transpose(0, 1).contiguous(), s.batch_size, device_of(model), s.precision)
    per_alpha = [out[:, i].contiguous() if out.dim() == 3 else out for i in range(len(multi.alphas))]
    return [(es.scores(logits, c.labels, c.index), logits, c.labels) for logits in per_alpha]


def _compare(es: EvalSet, low: torch.Tensor, ref: torch.Tensor, c: InputCache, alpha: float) -> dict:
    labels, index = c.labels[:len(ref)], c.index[:len(ref)]
    top_low, top_ref = es.scores(low, labels, index)["top1"], es.scores(ref, labels, index)["top1"]
    check = {"alpha": float(alpha), "n": len(ref), "top1_bf16": top_low.value, "top1_fp32": top_ref.value,
             "top1_diff": top_low.value - top_ref.value,
             "agreement": float((es.project(low).argmax(1) == es.project(ref).argmax(1)).float().mean())}
    log.info("%s: bf16 vs fp32 on %d inputs: top-1 %+.4f, prediction agreement %.4f", es.name, len(ref),
             check["top1_diff"], check["agreement"])
    return check


def _same_encoder(theta_0, theta_1) -> bool:
    return all(torch.equal(theta_0[k], theta_1[k]) for k in theta_0 if not k.startswith("head."))


def _sweep_linear(model: Classifier, theta_0, theta_1, evalsets: Sequence[EvalSet], alphas: Sequence[float],
                  backbone: Backbone, s: SweepSettings):
    """Features once per set, then every alpha from the mixed head."""
    head_0 = {k[5:]: v for k, v in theta_0.items() if k.startswith("head.")}
    head_1 = {k[5:]: v for k, v in theta_1.items() if k.startswith("head.")}
    heads = {a: interpolate(head_0, head_1, a, MergeConfig(allow_extrapolation=s.allow_extrapolation)) for a in alphas}
    scores: dict[float, dict[str, dict[str, Score]]] = {a: {} for a in alphas}
    checks: dict[str, dict] = {}
    temperatures: dict[float, float] = {}
    Interpolator(theta_0, theta_1).load_into(model, 0.0)  # the shared encoder
    model.eval()
    device = device_of(model)
    encode = lambda x: F.normalize(model.encoder(x).float(), dim=-1)  # noqa: E731
    for es in validation_first(evalsets):
        if es.is_pairs:  # a shared encoder and text tower: one retrieval score stands for every alpha
            scored = evaluate_set(model, es, backbone, s)[0]
            scores.update({a: {**scores[a], es.name: scored} for a in alphas})
            continue
        c = cached_inputs(es, backbone, s)
        feats = c.outputs(encode, s.batch_size, device, s.precision)
        for a in alphas:
            head = heads[a]
            logits = feats @ head["weight"].float().cpu().T + head["bias"].float().cpu()
            scores[a][es.name] = es.scores(logits, c.labels, c.index)
            score_more(es, scores[a][es.name], logits, c.labels, temperatures, a, evalsets)
        if s.precision == "bf16" and s.fp32_check:
            ref = c.outputs(encode, s.batch_size, device, "fp32", limit=s.fp32_check)
            h = heads[alphas[0]]
            mix = lambda f: f @ h["weight"].float().cpu().T + h["bias"].float().cpu()  # noqa: E731
            checks[es.name] = _compare(es, mix(feats[:len(ref)]), mix(ref), c, alphas[0])
    return scores, checks
