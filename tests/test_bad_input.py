"""Bad input ends in a named error or a documented safe outcome (issue 13): image
decoding, unreadable files in training and evaluation, non-finite weights, class lists."""

import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import COLORS, run_config, write_image_folder
from PIL import Image
from safetensors.torch import save_file

from wiseft.cli import main
from wiseft.config import ConfigError, parse_config
from wiseft.core import WiseftError
from wiseft.data import DataError, LabeledDataset, load_image
from wiseft.data.folders import TooManyUnreadable, UnreadableImage, image_folder
from wiseft.evaluation import build_input_cache
from wiseft.io import load_state
from wiseft.io.checkpoint import NonFiniteError
from wiseft.pipeline import prepare_data
from wiseft.train import CheckpointDir, MetricLog, Stage, Trainer
from wiseft.train.engine import FinetuneConfig
from wiseft.train.loop import DivergedError

# --- image decoding: one policy, every mode -------------------------------------------


def test_16_bit_greyscale_png_is_scaled_not_white(tmp_path):
    a = (np.arange(16, dtype=np.uint16).reshape(4, 4) * 4000)
    Image.fromarray(a).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = load_image(tmp_path / "g16.png")
    assert img.mode == "RGB"
    got = np.asarray(img)[..., 0].astype(int)
    np.testing.assert_allclose(got, np.rint(a.astype(float) * 255 / 65535), atol=1)
    assert got.min() == 0 and got.max() < 255  # a gradient, not all white


@pytest.mark.parametrize("mode, fmt", [("RGBA", "png"), ("LA", "png"), ("L", "png"), ("1", "png"),
                                       ("CMYK", "tiff"), ("P", "png"), ("RGB", "jpeg"), ("F", "tiff"),
                                       ("I", "tiff")])
def test_every_mode_decodes_to_rgb_without_warnings(tmp_path, mode, fmt):
    im = Image.new(mode, (6, 5))
    kw = {}
    if mode == "P":
        im.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
        im.putpixel((1, 1), 1)
        kw["transparency"] = 0  # a palette with a transparent colour
    path = tmp_path / f"x.{fmt}"
    im.save(path, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_image(path)
    assert out.mode == "RGB" and out.size == (6, 5)
    if mode == "P":
        assert out.getpixel((1, 1)) == (200, 100, 50)


def test_rgba_drops_alpha_keeping_the_colour(tmp_path):
    Image.new("RGBA", (2, 2), (10, 20, 30, 0)).save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.png").getpixel((0, 0)) == (10, 20, 30)


def test_decompression_bomb_is_unreadable_not_a_crash(tmp_path, monkeypatch):
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # over the limit: warning zone (< 2x is only a warning)
    with pytest.raises(UnreadableImage, match="big.png.*DecompressionBomb"):
        load_image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # over 2x: PIL's own error
    with pytest.raises(UnreadableImage, match="big.png"):
        load_image(tmp_path / "big.png")


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"])
def test_damaged_files_are_unreadable_images(tmp_path, content):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(UnreadableImage, match="bad.png"):
        load_image(tmp_path / "bad.png")


# --- unreadable files: skipped and counted in evaluation and training ----------------

def _folder_with_bad(tmp_path, n_bad=1) -> Path:
    root = write_image_folder(tmp_path / "imgs", 4, seed=0)
    for i in range(n_bad):
        (root / list(COLORS)[0] / f"zz_bad{i}.png").write_bytes(b"broken")
    return root


def _pixels(img):
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.uint8).copy()).permute(2, 0, 1)


def test_evaluation_skips_and_counts_then_fails_past_the_threshold(tmp_path):
    ds = image_folder(str(_folder_with_bad(tmp_path)))
    backbone = SimpleNamespace(transform_eval=_pixels, collate=None)
    ds.max_unreadable = 0.5
    cache = build_input_cache(ds, backbone, progress=False)
    assert len(cache.skipped) == 1 and "zz_bad0.png" in cache.skipped[0]
    assert len(cache.labels) == len(ds) - 1
    ds.max_unreadable = 0.01
    with pytest.raises(TooManyUnreadable, match=r"evaluation set .* 1 of \d+ inputs .*max_unreadable.*zz_bad0"):
        build_input_cache(ds, backbone, progress=False)


class _Pixels(torch.nn.Module):
    def __init__(self, classes=len(COLORS), nan_after=None):
        super().__init__()
        self.fc = torch.nn.Linear(3, classes)
        self.calls, self.nan_after = 0, nan_after

    def forward(self, x):
        self.calls += 1
        out = self.fc(x.float().mean(dim=(2, 3)) / 255)
        if self.nan_after is not None and self.calls > self.nan_after:
            out = out * float("nan")
        return out


def _collate(batch):
    xs, ys = zip(*batch)
    return torch.stack(xs), torch.tensor(ys)


_CFG = dict(lr=1e-2, batch_size=4, epochs=2, warmup_steps=0, save_every_steps=1, keep_last=1, log_every_steps=1)


def test_training_skips_unreadable_samples_counts_and_logs_them(tmp_path):
    ds = image_folder(str(_folder_with_bad(tmp_path))).with_transform(_pixels)
    ds.max_unreadable = 0.5
    log = tmp_path / "train.jsonl"
    metrics = MetricLog(log)
    trainer = Trainer(_Pixels(), ds, _collate, FinetuneConfig(**_CFG), Stage("e2e", 2, 1e-2), metrics=metrics,
                      progress=False)
    trainer.fit()
    metrics.close()
    assert len(trainer.unreadable) == 1 and "zz_bad0.png" in next(iter(trainer.unreadable.values()))
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    assert rows[-1]["unreadable"] == 1 and all(np.isfinite(r["loss"]) for r in rows)


def test_training_fails_when_too_much_is_unreadable(tmp_path):
    ds = image_folder(str(_folder_with_bad(tmp_path, n_bad=3))).with_transform(_pixels)
    ds.max_unreadable = 0.01
    trainer = Trainer(_Pixels(), ds, _collate, FinetuneConfig(**_CFG), Stage("e2e", 2, 1e-2), progress=False)
    with pytest.raises(TooManyUnreadable, match=r"training set .*of \d+ inputs.*zz_bad"):
        trainer.fit()


def test_a_micro_batch_of_only_unreadable_samples_still_steps(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        Image.new("RGB", (4, 4), (200, 0, 0)).save(root / c / "ok.png")
        for i in range(3):
            (root / c / f"bad{i}.png").write_bytes(b"x")
    ds = image_folder(str(root)).with_transform(_pixels)
    ds.max_unreadable = 1.0
    cfg = FinetuneConfig(**{**_CFG, "batch_size": 1, "epochs": 1})
    trainer = Trainer(_Pixels(2), ds, _collate, cfg, Stage("e2e", 1, 1e-2), progress=False)
    trainer.fit()  # every step runs; an all-unreadable one takes a placeholder the loss ignores
    assert len(trainer.unreadable) == 6


# --- non-finite weights --------------------------------------------------------------

def test_a_diverged_fine_tune_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    ds = LabeledDataset([(torch.full((3, 2, 2), float(i)), i % 2) for i in range(16)], ["a", "b"])
    ckpts = CheckpointDir(tmp_path / "ckpt", keep_last=1)
    trainer = Trainer(_Pixels(2, nan_after=3), ds, _collate, FinetuneConfig(**_CFG), Stage("e2e", 2, 1e-2),
                      checkpoints=ckpts, progress=False, label="finetuned")
    with pytest.raises(DivergedError, match=r"finetuned \(e2e\) diverged: .* NaN or Inf at step 4 of 8.*step_00000003"):
        trainer.fit()
    assert [p.name for _, _, p in ckpts.list()] == ["step_00000003.pt"]


def _nan_state():
    return {"a.weight": torch.ones(2, 2), "b.weight": torch.tensor([1.0, float("nan")]),
            "c.weight": torch.tensor([float("inf")])}


def test_loaded_checkpoints_with_nan_or_inf_are_refused(tmp_path):
    save_file(_nan_state(), tmp_path / "bad.safetensors")
    with pytest.raises(NonFiniteError, match=r"bad.safetensors: tensor 'b.weight' holds 1 NaN"):
        load_state(tmp_path / "bad.safetensors")
    torch.save({"c.weight": torch.tensor([float("inf")])}, tmp_path / "inf.pt")
    with pytest.raises(NonFiniteError, match="'c.weight' holds 0 NaN and 1 Inf"):
        load_state(tmp_path / "inf.pt")
    mask = torch.full((3, 3), float("-inf")).triu(1)  # an additive attention mask is not a fault
    save_file({"mask": mask, "w": torch.ones(2)}, tmp_path / "mask.safetensors")
    assert torch.equal(load_state(tmp_path / "mask.safetensors")["mask"], mask)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_cli_interpolate_and_soup_never_write_nan(tmp_path, capsys, suffix):
    good = {"a.weight": torch.ones(2, 2), "b.weight": torch.zeros(2), "c.weight": torch.zeros(1)}
    paths = []
    for name, state in (("good", good), ("bad", _nan_state())):
        p = tmp_path / f"{name}{suffix}"
        save_file(state, p) if suffix == ".safetensors" else torch.save(state, p)
        paths.append(str(p))
    out = tmp_path / "out.safetensors"
    assert main(["interpolate", *paths, "--alpha", "0.5", "--out", str(out)]) == 2
    assert "'b.weight'" in capsys.readouterr().err and not out.exists()
    assert main(["soup", *paths, "--out", str(out)]) == 2
    assert "'b.weight'" in capsys.readouterr().err and not out.exists()


def test_export_refuses_a_nan_model(tmp_path):
    from wiseft.heads import export_model

    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="model to export to .*'weight'"):
        export_model(model, SimpleNamespace(encoder=None), {}, tmp_path / "export")
    assert not (tmp_path / "export").exists()


# --- class names ---------------------------------------------------------------------

def _cfg(open_clip_spec, image_data, tmp_path, **data):
    raw = run_config(open_clip_spec, image_data, tmp_path / "out")
    raw["data"].update(data)
    return raw


def test_duplicate_class_names_in_a_file_or_a_dataset_list_are_errors(open_clip_spec, image_data, tmp_path):
    names = tmp_path / "classes.txt"
    names.write_text("red\ngreen\n\nblue\nred\n")
    with pytest.raises(ConfigError, match=r"data\.classnames: class-name file .*classes.txt: class 'red' is listed "
                                          r"twice \(line 1 and 5\)"):
        prepare_data(parse_config(_cfg(open_clip_spec, image_data, tmp_path, classnames=str(names))))
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["test"]["classnames"] = ["red", "green", "blue", "green"]
    with pytest.raises(ConfigError, match=r"data\.test: the class-name list: class 'green' is listed twice"):
        prepare_data(parse_config(raw))


def test_a_test_set_missing_a_class_is_an_error_unless_it_says_subset(open_clip_spec, image_data, tmp_path):
    partial = write_image_folder(tmp_path / "partial", 2, seed=3, classes=tuple(COLORS)[:-1])
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    raw["data"]["test"] = {"kind": "image_folder", "root": str(partial)}
    with pytest.raises(ConfigError, match=rf"data\.test: 1 of the {len(COLORS)} reference classes have no samples "
                                          rf"in this set \('{list(COLORS)[-1]}'\).*subset: true"):
        prepare_data(parse_config(raw))
    raw["data"]["test"]["classnames"] = list(COLORS)  # declared, but its folder is missing
    with pytest.raises(ConfigError, match=f"'{list(COLORS)[-1]}'"):
        prepare_data(parse_config(raw))
    raw["data"]["test"]["subset"] = True
    data = prepare_data(parse_config(raw))
    assert data.evalsets[0].dataset.classnames == list(COLORS)
    raw["data"]["test"]["subset"] = "yes"
    with pytest.raises(ConfigError, match=r"data\.test\.subset: .*bool"):
        parse_config(raw)


def test_sets_with_their_own_projection_still_score_a_subset(open_clip_spec, image_data, tmp_path):
    raw = _cfg(open_clip_spec, image_data, tmp_path)
    data = prepare_data(parse_config(raw))  # the fixture's 2-class shift says subset: true
    sub = next(e for e in data.evalsets if e.name == "subset")
    assert sub.projection is not None and len(sub.projection.groups) == 2
    assert issubclass(DataError, WiseftError) and issubclass(DataError, ValueError)  # the CLI reports it in one line


def test_linear_features_skip_unreadable_inputs_and_keep_rows_under_torchrun(tmp_path):
    from wiseft.train import compute_features

    ds = image_folder(str(_folder_with_bad(tmp_path)))
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    stack = lambda batch: (torch.stack([x.float() for x, _ in batch]), torch.tensor([y for _, y in batch]))  # noqa: E731
    backbone = SimpleNamespace(transform_eval=_pixels, collate=stack)
    ds.max_unreadable = 0.5
    feats, labels = compute_features(encoder, ds, backbone, 5, progress=False)
    assert len(feats) == len(labels) == len(ds) - 1  # the broken file's row is left out
    rows, row_labels = compute_features(encoder, ds, backbone, 5, progress=False, keep_rows=True)
    bad = [i for i, (ref, _) in enumerate(ds.samples) if str(ref).endswith("zz_bad0.png")]
    assert len(rows) == len(ds) and row_labels[bad].tolist() == [-100]  # ignored by the loss
    assert torch.equal(rows[[i for i in range(len(ds)) if i not in bad]], feats)
    ds.max_unreadable = 0.01
    with pytest.raises(TooManyUnreadable, match="features of"):
        compute_features(encoder, ds, backbone, 5, progress=False)
