"""The sweep engine: decode once (memory or memmap), exactness against the naive loop,
linear-head sweeps from features, bad inputs skipped and reported, bf16 check."""

import subprocess
import sys

import pytest
import torch
from conftest import COLORS, write_image_folder
from dataset_fixtures import write_corrupt

from wiseft.backbones import load_backbone
from wiseft.core import Score
from wiseft.data import DataError, build_dataset
from wiseft.evaluation import EvalSet, InputCache, SweepSettings, build_input_cache, evaluate, predict_logits, sweep
from wiseft.evaluation.cache import split_transform
from wiseft.heads import Classifier, zeroshot_head

ALPHAS = [0.0, 0.5, 1.0]
QUIET = SweepSettings(progress=False)


@pytest.fixture(scope="module")
def bb(open_clip_spec):
    return load_backbone(open_clip_spec)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_image_folder(root / "test", 4, seed=5, fmt="jpg")
    write_image_folder(root / "shift", 3, seed=6, jitter=100, classes=("green", "blue"))
    write_image_folder(root / "bad", 2, seed=7)
    write_corrupt(root / "bad" / "red")
    return root


def _model(bb):
    torch.manual_seed(0)
    return Classifier(bb.encoder, zeroshot_head(bb, list(COLORS), ["a {} photo."], cache=False))


def _sets(folders, *names):
    from wiseft.data import build_projection

    out = []
    for n in names:
        ds = build_dataset({"kind": "image_folder", "root": str(folders / n)}, name=n)
        proj = None if ds.classnames == list(COLORS) else build_projection(list(COLORS), ds.classnames)
        out.append(EvalSet(n, "reference" if n == "test" else "shift", ds, proj))
    return out


def _thetas(model, end_to_end=True):
    theta_0 = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    theta_1 = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point()
                   and (end_to_end or k.startswith("head.")) else v.clone()) for k, v in theta_0.items()}
    return theta_0, theta_1


def _key(records):
    return {(r.alpha, r.dataset, r.metric): (r.correct, r.total, r.value) for r in records}


def test_split_transform_is_bit_exact(bb, folders):
    ds = build_dataset({"kind": "image_folder", "root": str(folders / "test")})
    pre, finish = split_transform(bb.transform_eval)
    assert finish is not None
    x = pre(ds.load(ds.samples[0][0]))
    assert x.dtype == torch.uint8
    assert torch.equal(finish(x[None])[0], bb.transform_eval(ds.load(ds.samples[0][0])))


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_cached_sweep_equals_naive_loop(bb, folders, tmp_path, mode):
    model = _model(bb)
    theta_0, theta_1 = _thetas(model)
    naive = sweep(model, theta_0, theta_1, _sets(folders, "test", "shift"), ALPHAS, bb,
                  settings=SweepSettings(cache=False, progress=False, batch_size=5))
    sets = _sets(folders, "test", "shift")
    cached = sweep(model, theta_0, theta_1, sets, ALPHAS, bb,
                   settings=SweepSettings(cache=mode, cache_dir=tmp_path, progress=False, batch_size=5))
    assert _key(cached) == _key(naive)
    assert {r.total for r in cached if r.dataset == "shift" and r.metric == "top1"} == {6}
    c = sets[0]._cache
    assert (c.path is not None) == (mode == "disk") and c.data.dtype == torch.uint8
    if mode == "disk":
        assert c.path.parent == tmp_path and c.path.stat().st_size == c.nbytes


def test_auto_mode_spills_to_disk_over_the_memory_budget(bb, folders, tmp_path):
    ds = build_dataset({"kind": "image_folder", "root": str(folders / "test")})
    small = build_input_cache(ds, bb, mode="auto", max_memory=10, cache_dir=tmp_path, progress=False)
    big = build_input_cache(ds, bb, mode="auto", progress=False)
    assert small.path is not None and big.path is None
    assert torch.equal(small.data, big.data)


def test_linear_sweep_from_features_equals_full_sweep(bb, folders):
    model = _model(bb)
    theta_0, theta_1 = _thetas(model, end_to_end=False)
    full = sweep(model, theta_0, theta_1, _sets(folders, "test", "shift"), ALPHAS, bb, settings=QUIET)
    lin = sweep(model, theta_0, theta_1, _sets(folders, "test", "shift"), ALPHAS, bb,
                settings=SweepSettings(linear=True, progress=False))
    assert {k: v[:2] for k, v in _key(lin).items()} == {k: v[:2] for k, v in _key(full).items()}


def test_unreadable_images_are_skipped_counted_and_reported(bb, folders, caplog):
    model = _model(bb)
    theta_0, theta_1 = _thetas(model)
    sets = _sets(folders, "bad")
    records = sweep(model, theta_0, theta_1, sets, ALPHAS, bb, settings=QUIET)
    records = [r for r in records if r.metric == "top1"]
    assert {r.total for r in records} == {6}  # 8 files, 2 unreadable
    assert {r.provenance["skipped_inputs"] for r in records} == {2}
    assert sorted(s.split(":")[0].rsplit("/", 1)[1] for s in sets[0].skipped) == ["not_an_image.png",
                                                                                   "truncated.jpg"]
    assert "skipped 2 unreadable inputs" in caplog.text
    assert evaluate(model, _sets(folders, "bad"), bb) == {"bad": (records[-1].correct, 6)}


def test_class_folders_not_in_the_class_list_are_named(folders):
    with pytest.raises(DataError, match="bad"):
        build_dataset({"kind": "image_folder", "root": str(folders), "classnames": ["red", "green"]})


def test_dataset_metrics_become_records(bb, folders):
    class WithF1(type(build_dataset({"kind": "image_folder", "root": str(folders / "test")}))):
        def metrics(self, logits, labels, index):
            return {**super().metrics(logits, labels, index), "macro_f1": Score(0.25)}

    ds = build_dataset({"kind": "image_folder", "root": str(folders / "test")})
    ds.__class__ = WithF1
    model = _model(bb)
    theta_0, theta_1 = _thetas(model)
    records = sweep(model, theta_0, theta_1, [EvalSet("t", "reference", ds)], ALPHAS, bb, settings=QUIET)
    f1 = [r for r in records if r.metric == "macro_f1" and r.model == "finetuned"]
    assert len(f1) == 3 and f1[0].value == 0.25 and f1[0].correct is None


def _top1(records, alpha=0.0):
    return next(r.value for r in records if r.alpha == alpha and r.metric == "top1" and r.model == "finetuned")


def test_bf16_reports_the_difference_against_fp32(bb, folders, monkeypatch):
    monkeypatch.setenv("WISEFT_NATIVE_BF16", "1")  # bf16 on any CPU
    model = _model(bb)
    theta_0, theta_1 = _thetas(model)
    fp32 = sweep(model, theta_0, theta_1, _sets(folders, "test"), ALPHAS, bb,
                 settings=SweepSettings(precision="fp32", progress=False))
    sets = _sets(folders, "test")
    bf16 = sweep(model, theta_0, theta_1, sets, ALPHAS, bb, settings=SweepSettings(precision="bf16", progress=False))
    check = bf16[0].provenance["bf16_check"]
    # the whole 12-image set (under fp32_check), at the first alpha: the two sweeps' own alpha-0 accuracy
    assert (check["alpha"], check["n"]) == (0.0, 12)
    assert (check["top1_bf16"], check["top1_fp32"]) == (_top1(bf16), _top1(fp32))
    assert check["top1_diff"] == check["top1_bf16"] - check["top1_fp32"]
    batches = sets[0].batches(bb, 12)
    model.load_state_dict(theta_0)
    low, high = (predict_logits(model, batches, p)[0].argmax(1) for p in ("bf16", "fp32"))
    assert check["agreement"] == float((low == high).float().mean())
    assert all(r.provenance["bf16_check"] == check for r in bf16 if r.model == "finetuned")
    assert all("bf16_check" not in r.provenance for r in fp32)


def test_auto_evaluates_in_fp32_without_native_bf16_and_an_explicit_bf16_warns_of_its_cost(bb, folders, monkeypatch,
                                                                                              caplog):
    from wiseft.runtime import device as runtime

    monkeypatch.setenv("WISEFT_NATIVE_BF16", "0")
    runtime._warn_once.cache_clear()  # the warning is once per process: an earlier test may have had it
    model = _model(bb)
    theta_0, theta_1 = _thetas(model)
    fp32 = sweep(model, theta_0, theta_1, _sets(folders, "test"), ALPHAS, bb,
                 settings=SweepSettings(precision="fp32", progress=False))
    auto = sweep(model, theta_0, theta_1, _sets(folders, "test"), ALPHAS, bb, settings=QUIET)
    assert auto == fp32  # the same records, no bf16_check in them
    assert "emulated" not in caplog.text
    bf16 = sweep(model, theta_0, theta_1, _sets(folders, "test"), ALPHAS, bb,
                 settings=SweepSettings(precision="bf16", progress=False))
    assert "bf16_check" in bf16[0].provenance  # asked for: it runs (emulated), and says what it costs
    assert "runs emulated, about 3x slower than fp32" in caplog.text


@pytest.mark.slow  # over 2 s: the quick tier stays under a minute
def test_text_inputs_need_no_torchvision():
    """The demo's install (`.[demo]`, a text model) has no torchvision: evaluating must not import it."""
    code = ("import sys; sys.modules['torchvision'] = None\n"
            "from wiseft.evaluation.cache import split_transform\n"
            "identity = lambda x: x\n"
            "assert split_transform(identity) == (identity, None)\n")
    subprocess.run([sys.executable, "-c", code], check=True)



@pytest.mark.parametrize("linear", [False, True])
def test_alpha_zero_is_scored_once_for_every_fine_tune(bb, folders, monkeypatch, linear):
    model = _model(bb)
    theta_0, theta_1 = _thetas(model, end_to_end=not linear)
    theta_2 = {k: v * 1.01 if v.is_floating_point() and (not linear or k.startswith("head.")) else v
               for k, v in theta_1.items()}
    sets = _sets(folders, "test", "shift")
    settings = SweepSettings(linear=linear, progress=False)
    alone = [_key(sweep(model, theta_0, t, sets, ALPHAS, bb, settings=settings))
             for t in (theta_1, theta_2)]
    passes = []
    forward = InputCache.outputs
    monkeypatch.setattr(InputCache, "outputs", lambda *a, **k: passes.append(1) or forward(*a, **k))
    memo: dict = {}
    shared = [_key(sweep(model, theta_0, t, sets, ALPHAS, bb, settings=settings, zeroshot=memo))
              for t in (theta_1, theta_2)]
    assert shared == alone
    # full sweeps: one pass per (alpha, set), alpha 0 only in the first; linear: features once per set
    assert len(passes) == (2 * len(sets) if linear else len(sets) * (2 * len(ALPHAS) - 1))
