"""Hugging Face ``datasets`` data as a dataset kind: a ``save_to_disk`` folder (a Dataset,
or one split of a DatasetDict), or parquet, arrow, csv and json/jsonl files, as
``datasets.load_dataset`` reads them.

Images are read undecoded (``datasets.Image(decode=False)``: bytes and/or a path) and
decoded by wiseft's own policy (:func:`wiseft.data.folders.load_image`), so an
unreadable image is skipped and counted against ``data.max_unreadable`` as in every
other kind, and a decompression bomb is refused. A sample's reference is its row
(:class:`HFRow`); ``load`` reads that row's image when it is needed, so no image is held
in memory. Labels, texts and captions are read once, as columns.

Without ``streaming`` the files are read as ``load_dataset`` reads them: converted once
into Arrow in the Hugging Face cache (``HF_DATASETS_CACHE``), then memory-mapped. With
``streaming: true`` nothing is written to that cache: arrow files are memory-mapped in
place, a parquet image is read from its row group (the last group read is kept, one per
process), csv/json rows are read by ``datasets``' streaming reader. A ``save_to_disk``
folder is memory-mapped in place either way.
"""

from __future__ import annotations

import abc
import contextlib
import glob
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from wiseft.core import did_you_mean
from wiseft.data.base import DataError, LabeledDataset, read_classnames, register_dataset, resolve
from wiseft.data.folders import UnreadableImage, decode_image, load_image
from wiseft.data.pairs import PairDataset

# file suffix -> the datasets builder that reads it
FORMATS = {".parquet": "parquet", ".arrow": "arrow", ".csv": "csv", ".json": "json", ".jsonl": "json"}
DEFAULT_SPLIT = "train"  # the one split load_dataset names when data files are not given per split


def _datasets():
    """The ``datasets`` package, imported on use (``import wiseft`` never imports it)."""
    try:
        import datasets
    except ImportError:
        raise DataError("dataset kind 'hf_dataset' needs the Hugging Face datasets package: "
                        "pip install 'wiseft[datasets]'") from None
    return datasets


@contextlib.contextmanager
def _quiet(datasets):
    """datasets' own progress bars off while a set is read (wiseft draws its own)."""
    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


class HFRow(NamedTuple):
    """A sample's place: the data it was read from (and its split) and its row number."""

    source: str
    row: int

    def __str__(self) -> str:
        return f"{self.source}[row {self.row}]"


# ---------------------------------------------------------------------------------------
# row readers: one column's value at a row, read on demand; each pickles without its data


class _DatasetRows:
    """A column of a (memory-mapped) ``datasets.Dataset``, images undecoded."""

    def __init__(self, dataset, column: str):
        datasets = _datasets()
        dataset = dataset.select_columns([column])
        if isinstance(dataset.features[column], datasets.Image):
            dataset = dataset.cast_column(column, datasets.Image(decode=False))
        self.dataset, self.column = dataset, column

    def __call__(self, row: int) -> Any:
        return self.dataset[row][self.column]


class _LazyRows(abc.ABC):
    """A reader that opens its files on first use in each process, and pickles as its
    file list (a forked or spawned loader worker opens its own)."""

    def __init__(self, files: Sequence[str], column: str):
        self.files, self.column = list(files), column
        self._opened: tuple[int, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_opened": None}

    def _handle(self) -> Any:
        if self._opened is None or self._opened[0] != os.getpid():
            self._opened = (os.getpid(), self._open())
        return self._opened[1]

    @abc.abstractmethod
    def _open(self) -> Any:
        """The opened source (a memory map, a reader) in this process."""


class _ArrowRows(_LazyRows):
    """A column of arrow files (IPC stream or file format), memory-mapped in place."""

    def _open(self):
        import pyarrow as pa

        return pa.concat_tables([read_arrow(f) for f in self.files]).column(self.column)

    def __call__(self, row: int) -> Any:
        return self._handle()[row].as_py()


class _ParquetRows(_LazyRows):
    """A column of parquet files, read a row group at a time (the last group is kept)."""

    def _open(self):
        import pyarrow.parquet as pq

        groups = []  # (first row, file, group number) of every row group, in order
        start = 0
        for f in self.files:
            meta = pq.ParquetFile(f).metadata
            for g in range(meta.num_row_groups):
                groups.append((start, f, g))
                start += meta.row_group(g).num_rows
        return {"groups": groups, "starts": [g[0] for g in groups], "kept": None}

    def __call__(self, row: int) -> Any:
        import bisect

        import pyarrow.parquet as pq

        state = self._handle()
        k = bisect.bisect_right(state["starts"], row) - 1
        first, file, group = state["groups"][k]
        if state["kept"] is None or state["kept"][0] != k:
            state["kept"] = (k, pq.ParquetFile(file).read_row_group(group, columns=[self.column]).column(0))
        return state["kept"][1][row - first].as_py()


class _ListRows:
    """A column held in memory (csv/json rows: image paths, not image bytes)."""

    def __init__(self, values: Sequence[Any]):
        self.values = list(values)

    def __call__(self, row: int) -> Any:
        return self.values[row]


def read_arrow(file: str | Path):
    """An arrow file as a memory-mapped pyarrow Table (IPC stream format, as datasets writes
    it, or the IPC file format)."""
    import pyarrow as pa

    source = pa.memory_map(str(file))
    try:
        return pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
        return pa.ipc.open_file(pa.memory_map(str(file))).read_all()


# ---------------------------------------------------------------------------------------
# the data: where it is, its columns and features, a column in memory, a row reader


@dataclass
class _Table:
    """One split of the data: its columns, features (None when the files carry none),
    rows, a whole column in memory (``column``), and a row reader per column (``rows``)."""

    where: str
    name: str
    folder: Path
    column_names: list[str]
    features: Any
    num_rows: int
    column: Callable[[str], list]
    rows: Callable[[str], Callable[[int], Any]]


def _from_dataset(dataset, where: str, name: str, folder: Path) -> _Table:
    return _Table(where, name, folder, list(dataset.column_names), dataset.features, dataset.num_rows,
                  lambda c: dataset.select_columns([c]).with_format("arrow")[c].to_pylist(),
                  lambda c: _DatasetRows(dataset, c))


def _choose_split(split: str | None, splits: Sequence[str], where: str) -> str:
    """The split asked for, or the only one; else a DataError listing the splits."""
    if split is None:
        if len(splits) == 1:
            return splits[0]
        raise DataError(f"hf_dataset {where} has splits {', '.join(splits)}; choose one with split")
    if split not in splits:
        hint = did_you_mean(split, splits)
        raise DataError(f"hf_dataset {where}: split {split!r} is not in it"
                        + (f"; did you mean {hint!r}?" if hint else "") + f" splits: {', '.join(splits)}")
    return split


def _from_disk(folder: Path, split: str | None) -> _Table:
    """A ``save_to_disk`` folder, memory-mapped where it lies."""
    datasets = _datasets()
    data = datasets.load_from_disk(str(folder))
    if isinstance(data, datasets.DatasetDict):
        name = _choose_split(split, list(data), f"folder {folder}")
        return _from_dataset(data[name], f"{folder} ({name})", f"{folder.name}-{name}", folder)
    if split is not None:
        raise DataError(f"hf_dataset folder {folder} holds one Dataset, not a DatasetDict with splits; "
                        f"remove split: {split!r}")
    return _from_dataset(data, str(folder), folder.name, folder)


def _expand(item: str | Path, base_dir) -> list[str]:
    """The files one entry names (a file, or a glob), relative to ``base_dir``."""
    p = resolve(item, base_dir)
    if any(c in str(item) for c in "*?["):
        found = sorted(glob.glob(str(p), recursive=True))
        if not found:
            raise DataError(f"hf_dataset: no file matches {str(item)!r} (in {p.parent})")
        return found
    if not p.exists():
        raise DataError(f"hf_dataset: {p} does not exist")
    if p.is_dir():
        raise DataError(f"hf_dataset: folder {p} is not a save_to_disk folder (it has no dataset_dict.json or "
                        "state.json); name its data files instead, e.g. a glob such as 'folder/*.parquet'")
    return [str(p)]


def _files_of(path: str | Sequence[str] | Mapping[str, Any], split: str | None,
              base_dir) -> tuple[str, list[str], str]:
    """(split, its files, their datasets builder) from a file, glob, list, or a mapping
    split -> files (a plain file list is the one split ``train``, as load_dataset names it)."""
    per_split = dict(path) if isinstance(path, Mapping) else {DEFAULT_SPLIT: path}
    name = _choose_split(split, list(per_split), f"path {path!r}")
    items = per_split[name]
    items = [items] if isinstance(items, (str, Path)) else list(items)
    files = [f for item in items for f in _expand(item, base_dir)]
    if not files:
        raise DataError(f"hf_dataset: split {name!r} names no files")
    kinds = {FORMATS.get(Path(f).suffix.lower()) for f in files}
    if None in kinds or len(kinds) > 1:
        odd = next((f for f in files if Path(f).suffix.lower() not in FORMATS), files[-1])
        raise DataError(f"hf_dataset: files of one split must share one format ({', '.join(sorted(FORMATS))}); "
                        f"got {odd}")
    return name, files, kinds.pop()


def _from_files(files: list[str], builder: str, split: str, streaming: bool) -> _Table:
    datasets = _datasets()
    where = f"{files[0]}{f' (+{len(files) - 1} files)' if len(files) > 1 else ''} ({split})"
    name, folder = f"{Path(files[0]).stem}-{split}", Path(files[0]).parent
    if not streaming:
        data = datasets.load_dataset(builder, data_files={split: files}, split=split)
        return _from_dataset(data, where, name, folder)
    if builder in ("arrow", "parquet"):
        return _streamed_columnar(files, builder, where, name)
    rows = list(datasets.load_dataset(builder, data_files={split: files}, split=split, streaming=True))
    names = list(rows[0]) if rows else []
    return _Table(where, name, folder, names, None, len(rows), lambda c: [r[c] for r in rows],
                  lambda c: _ListRows([r[c] for r in rows]))


def _streamed_columnar(files: list[str], builder: str, where: str, name: str) -> _Table:
    """Arrow or parquet files read in place: schema and row counts from their metadata."""
    import pyarrow.parquet as pq

    datasets = _datasets()
    if builder == "arrow":
        schema, counts = read_arrow(files[0]).schema, [read_arrow(f).num_rows for f in files]
        reader: type[_LazyRows] = _ArrowRows
    else:
        schema, counts = pq.ParquetFile(files[0]).schema_arrow, [pq.ParquetFile(f).metadata.num_rows for f in files]
        reader = _ParquetRows

    def column(c: str) -> list:
        if builder == "arrow":
            return [v for f in files for v in read_arrow(f).column(c).to_pylist()]
        return [v for f in files for v in pq.read_table(f, columns=[c]).column(0).to_pylist()]

    features = datasets.Features.from_arrow_schema(schema)  # a ClassLabel or Image from datasets' schema metadata
    return _Table(where, name, Path(files[0]).parent, list(schema.names), features, sum(counts), column,
                  lambda c: reader(files, c))


def _open_table(path, split: str | None, streaming: bool, base_dir) -> _Table:
    """The split of the data ``path`` names (see :func:`hf_dataset`); data that datasets or
    pyarrow cannot read is a DataError naming it."""
    datasets = _datasets()
    with _quiet(datasets):
        if isinstance(path, (str, Path)) and not any(c in str(path) for c in "*?["):
            p = resolve(path, base_dir)
            if p.is_dir() and ((p / "dataset_dict.json").is_file() or (p / "state.json").is_file()):
                return _read(lambda: _from_disk(p, split), str(p))
        name, files, builder = _files_of(path, split, base_dir)
        table = _read(lambda: _from_files(files, builder, name, streaming), f"{files[0]} ({builder})")
    if table.num_rows == 0:
        raise DataError(f"hf_dataset {table.where} has no rows")
    return table


def _read(fn: Callable[[], _Table], what: str) -> _Table:
    try:
        return fn()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - datasets and pyarrow raise many types for data they cannot parse
        raise DataError(f"hf_dataset: cannot read {what}: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------------------------------
# columns, images, labels


def _check_column(table: _Table, option: str, name: str) -> str:
    if name not in table.column_names:
        hint = did_you_mean(name, table.column_names)
        raise DataError(f"hf_dataset {table.where}: {option} {name!r} is not a column"
                        + (f"; did you mean {hint!r}?" if hint else "")
                        + f" columns: {', '.join(table.column_names)}")
    return name


@dataclass(frozen=True)
class ImageLoader:
    """A row's image, decoded under the image folders' policy: the column holds encoded
    bytes, a path (relative to the data's folder), or datasets' ``{bytes, path}``; an
    image that cannot be read raises :class:`UnreadableImage` naming the row."""

    rows: Callable[[int], Any]
    folder: str

    def __call__(self, ref: HFRow):
        try:
            value = self.rows(ref.row)
        except Exception as e:  # noqa: BLE001 - a file gone or damaged since: an unreadable input
            raise UnreadableImage(f"cannot read image {ref}: {type(e).__name__}: {e}") from None
        if isinstance(value, dict):
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return decode_image(bytes(value), ref)
        if isinstance(value, str) and value:
            path = resolve(value, self.folder)  # relative to the data; else as datasets opens it (the working folder)
            return load_image(path if path.exists() or not Path(value).exists() else value)
        raise UnreadableImage(f"cannot read image {ref}: the row holds no image ({type(value).__name__})")


def _check_image_feature(table: _Table, column: str) -> None:
    """An image column holds images, paths or bytes: not numbers or lists."""
    if table.features is None:
        return
    datasets = _datasets()
    feature = table.features[column]
    ok = isinstance(feature, datasets.Image) or isinstance(feature, dict) and {"bytes", "path"} & set(feature) \
        or isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string", "binary",
                                                                     "large_binary")
    if not ok:
        raise DataError(f"hf_dataset {table.where}: image_column {column!r} holds {feature}, not images "
                        "(an Image feature, paths or encoded bytes)")


def _labels(table: _Table, column: str, classnames: list[str] | None) -> tuple[list[int], list[str]]:
    """(label per row, class names): labels by ClassLabel, by name or by index."""
    datasets = _datasets()
    feature = table.features[column] if table.features is not None else None
    values = table.column(column)
    own = list(feature.names) if isinstance(feature, datasets.ClassLabel) else None
    bad = next((i for i, v in enumerate(values) if v is None or v == -1 and own or isinstance(v, bool)
                or not isinstance(v, (int, str))), None)
    if bad is not None:
        raise DataError(f"hf_dataset {HFRow(table.where, bad)}: label {values[bad]!r} is not a class "
                        "name nor a class index (unlabelled rows, as a test split without labels has, cannot be used)")
    if own is not None:
        values = [own[v] for v in values]  # ClassLabel: names, so classnames may order or rename them
        if classnames is None:
            return [own.index(v) for v in values], own
        if not set(own) <= set(classnames) and len(own) == len(classnames):
            return [own.index(v) for v in values], classnames  # the classes renamed, in order
    if classnames is None:
        ints = next((i for i, v in enumerate(values) if isinstance(v, int)), None)
        if ints is not None:
            raise DataError(f"hf_dataset {table.where}: label_column {column!r} holds class indices and no "
                            "class names (not a ClassLabel feature); give classnames (a list, or a file "
                            "with one name per line)")
        classnames = sorted(set(values))
    return [_to_index(v, classnames, HFRow(table.where, i), column) for i, v in enumerate(values)], classnames


def _to_index(value: int | str, classnames: list[str], ref: HFRow, column: str) -> int:
    if isinstance(value, int):
        if not 0 <= value < len(classnames):
            raise DataError(f"hf_dataset {ref}: label {value} is out of range for the {len(classnames)} "
                            f"class names (0..{len(classnames) - 1})")
        return value
    if value not in classnames:
        hint = did_you_mean(value, classnames)
        raise DataError(f"hf_dataset {ref}: label {value!r} (column {column!r}) is not one of the {len(classnames)} "
                        "class names" + (f"; did you mean {hint!r}?" if hint else "")
                        + f" classnames: {', '.join(classnames[:20])}{', ...' if len(classnames) > 20 else ''}")
    return classnames.index(value)


def _queries(table: _Table, image_column: str | None, text_column: str | None) -> tuple[list, Any]:
    """(reference per row, load): rows for images (read on demand), the texts themselves."""
    if (image_column is None) == (text_column is None):
        raise DataError("hf_dataset: give exactly one of image_column and text_column "
                        + ("(both are given)" if image_column else "(neither is given)"))
    if text_column is not None:
        texts = table.column(_check_column(table, "text_column", text_column))
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise DataError(f"hf_dataset {HFRow(table.where, bad)}: text_column {text_column!r} holds "
                            f"{texts[bad]!r}, not a text")
        return texts, None
    _check_image_feature(table, _check_column(table, "image_column", image_column))
    return ([HFRow(table.where, i) for i in range(table.num_rows)],
            ImageLoader(table.rows(image_column), str(table.folder)))


@register_dataset("hf_dataset", declared_classes=True)
def hf_dataset(path: str | Path | Sequence[str] | Mapping[str, str | Sequence[str]], split: str | None = None, *,
               image_column: str | None = None, text_column: str | None = None, label_column: str | None = None,
               caption_column: str | None = None, classnames: Sequence[str] | str | None = None,
               streaming: bool = False, base_dir=None) -> LabeledDataset | PairDataset:
    """A Hugging Face dataset: ``path`` is a ``save_to_disk`` folder (a Dataset, or a
    DatasetDict and its ``split``), or parquet / arrow / csv / json(l) files: a file, a
    glob, a list, or a mapping split -> files (a plain list is the split ``train``, as
    ``load_dataset`` names it). Relative paths start at the config's folder.

    The input is ``image_column`` (an Image feature, paths relative to the data's folder,
    or encoded bytes; decoded by wiseft's policy) or ``text_column``: exactly one.
    ``label_column`` (default ``label``) holds a ClassLabel, class names or class
    indices; the classes are ``classnames`` when given (ClassLabel names map to them by
    name, or rename them in order), else the ClassLabel's names, else the sorted
    distinct names; integer labels without names need ``classnames``.

    With ``caption_column`` the set is a :class:`PairDataset` of (input, caption) pairs
    for contrastive fine-tuning and retrieval; labels are not read.

    ``streaming: true`` reads the files in place, for sets too large to copy into the
    Hugging Face cache: nothing is written there and images are read from their files
    when used. It costs time where a sample is read out of order (training shuffles): a
    parquet image reads its whole row group (the last one is kept), and building the set
    reads each label column once from the files. Needs ``pip install 'wiseft[datasets]'``.

    Example:
        >>> test = build_dataset({"kind": "hf_dataset", "path": "data/pets", "split": "test",
        ...                       "image_column": "image", "label_column": "label"})
    """
    table = _open_table(path, split, streaming, base_dir)
    queries, load = _queries(table, image_column, text_column)
    modality = "image" if image_column is not None else "text"
    if caption_column is not None:
        if label_column is not None:
            raise DataError("hf_dataset: caption_column makes a set of (input, caption) pairs, which has no "
                            f"labels; remove label_column: {label_column!r}")
        captions = table.column(_check_column(table, "caption_column", caption_column))
        return PairDataset(list(zip(queries, captions)), load=load, name=table.name, modality=modality)
    labels, names = _labels(table, _check_column(table, "label_column", label_column or "label"),
                            read_classnames(classnames, base_dir))
    return LabeledDataset(list(zip(queries, labels)), names, load=load, name=table.name)
