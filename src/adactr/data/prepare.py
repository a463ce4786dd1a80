"""``adactr prepare``: raw files -> a dataset directory (schema, vocabularies, encoded arrays).

Stages (each vectorised; a progress bar names the stage)::

    read raw (reader per format) -> check labels -> split (given / random / by time)
        -> fit vocabularies + normalisers on train -> encode each split -> write

The directory is written under a temporary name and renamed at the end, so an error (bad row, missing
column, a full disk) never leaves a half-written dataset behind. An error about a row names the line an
editor shows it on (blank lines and quoted newlines included). No torch here.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from urllib.parse import quote, unquote

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from adactr.data import readers
from adactr.data.encode import ROW, EncodeOptions, Roles, check_labels, encode, fit
from adactr.data.schema import NumericTransform, Schema
from adactr.errors import DataError, DataWarning

SPLITS = ("train", "valid", "test")


class Format(str, Enum):
    CSV = "csv"  # generic CSV / TSV / Parquet, plain or .gz, with a header
    CRITEO = "criteo"
    AVAZU = "avazu"
    LIBFM = "libfm"
    MOVIELENS = "movielens"  # a directory with ratings.dat, users.dat, movies.dat


@dataclass(frozen=True)
class Preset:
    """What a format implies when the user does not say otherwise."""

    roles: Roles
    options: EncodeOptions


CRITEO_INTS = tuple(f"I{i}" for i in range(1, 14))

PRESETS: dict[Format, Preset] = {
    Format.CSV: Preset(Roles(), EncodeOptions()),
    # Criteo winners / BARS: integers discretised by floor(ln(x)^2), rare categories (< 10) to OOV: the recipe
    # behind the published BARS Criteo numbers. DynInt's is --numeric log_v2 --min-count 20 (docs/data.md).
    Format.CRITEO: Preset(Roles(numerical=CRITEO_INTS),
                          EncodeOptions(min_count=10, numeric_transform=NumericTransform.LOG_BUCKET)),
    Format.AVAZU: Preset(Roles(), EncodeOptions(min_count=2)),
    Format.LIBFM: Preset(Roles(ignore=("feature_values",), sequence=()), EncodeOptions()),
    # MovieLens: genres multi-valued, the raw rating (label source) and timestamp never features.
    Format.MOVIELENS: Preset(Roles(sequence=("genres",), ignore=("rating", "timestamp"), group="user_id"),
                             EncodeOptions()),
}


@dataclass(frozen=True)
class SplitSpec:
    """How to get train/valid/test when fewer than three files are given."""

    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    time_column: str | None = None  # ordered split on this column instead of a random one
    seed: int = 2022


@dataclass(frozen=True)
class PrepareRequest:
    format: Format
    train: Path
    out: Path
    valid: Path | None = None
    test: Path | None = None
    roles: Roles = field(default_factory=Roles)
    options: EncodeOptions = field(default_factory=EncodeOptions)
    split: SplitSpec = field(default_factory=SplitSpec)
    field_map: Path | None = None  # libFM: featindex.txt
    rating_threshold: float = 4.0  # MovieLens: label = rating >= threshold
    overwrite: bool = False


def read_raw(fmt: Format, path: Path, *, field_map: Path | None = None,
             rating_threshold: float = 4.0) -> pl.DataFrame:
    """Read one raw file in the given format and number its rows as the file does (1-based)."""
    if not path.exists():
        raise DataError("no such file or directory", file=str(path))
    if fmt is Format.CSV:
        df = readers.read_table(path)
    elif fmt is Format.CRITEO:
        df = readers.read_criteo(path)
    elif fmt is Format.AVAZU:
        df = readers.read_avazu(path)
    elif fmt is Format.LIBFM:
        df = readers.read_libfm(path, field_map=str(field_map) if field_map else None)
    else:
        df = readers.read_movielens(path, threshold=rating_threshold)
    if df.height == 0:
        raise DataError("the file has no data rows", file=str(path))
    if ROW in df.columns:
        raise DataError(f"the column name {ROW!r} is reserved: rename that column", file=str(path), column=ROW)
    return df.with_row_index(ROW, offset=_first_data_row(fmt, path))


def _first_data_row(fmt: Format, path: Path) -> int:
    """The row number ``read_raw`` gives the first data row: 2 after a header line, else 1."""
    if fmt is Format.CSV:
        return 1 if readers.base_suffix(path) == ".parquet" else 2
    if fmt is Format.AVAZU:
        return 2 if readers.avazu_has_header(path) else 1
    return 1


@contextmanager
def editor_rows(fmt: Format, path: Path) -> Iterator[None]:
    """Errors about a row of ``path`` raised inside leave naming the line an editor shows it on.

    ``read_raw`` numbers rows as records (cheap); blank lines and quoted newlines make the editor's line
    number larger, so it is worked out here, by reading the file again, only when an error is on its way.
    """
    try:
        yield
    except DataError as e:
        if e.file != str(path) or e.row is None or fmt not in (Format.CSV, Format.CRITEO, Format.AVAZU,
                                                               Format.LIBFM):
            raise
        if fmt is Format.CSV and readers.base_suffix(path) == ".parquet":
            raise  # a Parquet row has no line
        first = _first_data_row(fmt, path)
        if fmt is Format.LIBFM:
            line = readers.text_row_line(path, e.row - first)
        else:
            sep = "\t" if fmt is Format.CRITEO or readers.base_suffix(path) in (".tsv", ".txt") else ","
            line = readers.data_row_line(path, e.row - first, sep=sep, has_header=first == 2)
        raise e.at_row(line) from e.__cause__


def vocab_file(name: str) -> str:
    """The vocabulary file of a field: its name, with characters a file name cannot hold (``/``, ``%``,
    control characters...) percent-encoded, so any column name is safe (``price/unit`` ->
    ``price%2Funit.json``)."""
    return "".join(c if c.isprintable() and c not in _UNSAFE else quote(c, safe="") for c in name) + ".json"


_UNSAFE = frozenset('/\\%:*?"<>|')


def _split_rows(n: int, df: pl.DataFrame, spec: SplitSpec, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Row indices of each part, by the first fractions (renormalised): random by seed, or ordered."""
    fr = np.array(spec.fractions[: len(names)], dtype=float)
    fr = fr / fr.sum()
    if spec.time_column:
        if spec.time_column not in df.columns:
            raise DataError(f"time column {spec.time_column!r} is missing")
        order = df[spec.time_column].arg_sort().to_numpy()
    else:
        order = np.random.default_rng(spec.seed).permutation(n)
    bounds = np.concatenate([[0], np.round(np.cumsum(fr) * n).astype(int)])
    bounds[-1] = n
    parts = {}
    for i, name in enumerate(names):
        idx = order[bounds[i]:bounds[i + 1]]
        # a random part keeps file order (reads better, compresses better); an ordered one keeps time order
        parts[name] = idx if spec.time_column else np.sort(idx)
    return parts


def prepare(req: PrepareRequest, *, progress: bool = True) -> Schema:
    """Run the whole pipeline; returns the schema written to ``req.out``."""
    out = req.out
    if out.exists() and not out.is_dir():
        raise DataError("the output exists and is not a directory", file=str(out))
    if out.exists() and any(out.iterdir()) and not req.overwrite:
        raise DataError("output directory exists and is not empty (pass --overwrite to replace it)",
                        file=str(out))
    t0 = time.perf_counter()
    bar = tqdm(total=6, desc="prepare", disable=not progress, unit="stage")

    def stage(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    files = {"train": req.train, "valid": req.valid, "test": req.test}
    frames: dict[str, pl.DataFrame] = {}
    sources: dict[str, str] = {}
    with warnings.catch_warnings(record=True) as caught:  # odd lines taken as they are: kept in meta.json
        warnings.simplefilter("always", DataWarning)
        for split, path in files.items():
            if path is None:
                continue
            df = read_raw(req.format, path, field_map=req.field_map, rating_threshold=req.rating_threshold)
            with editor_rows(req.format, path):
                frames[split] = check_labels(df, req.roles.label, file=str(path))
            sources[split] = str(path)
    notes = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, DataWarning)))
    for w in caught:
        if not issubclass(w.category, DataWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    roles = _libfm_roles(frames["train"], req.roles) if req.format is Format.LIBFM else req.roles
    stage("read")

    missing = tuple(s for s in SPLITS if s not in frames)
    train_rows = None
    if missing:
        # carve the missing splits out of the train file as row indices (random by seed, or ordered by a
        # time column): the raw frame is never copied, the encoded arrays are sliced instead
        parts = _split_rows(frames["train"].height, frames["train"], req.split, ("train", *missing))
        train_rows = parts["train"]
        for s in missing:
            sources[s] = sources["train"]
    stage("split")

    with editor_rows(req.format, req.train):
        schema, vocabs = fit(frames["train"], roles, req.options, file=sources["train"],
                             source_format=req.format.value, rows=train_rows)
    stage("fit")

    encoded = {}
    for s in frames:
        with editor_rows(req.format, files[s]):  # type: ignore[arg-type]
            encoded[s] = encode(frames[s], schema, vocabs, file=sources[s])
    if missing:
        whole = encoded.pop("train")
        for s, idx in parts.items():
            encoded[s] = {k: a[idx] for k, a in whole.items()}
        del whole
    stage("encode")

    tmp = out.with_name(out.name + f".tmp-{time.time_ns()}")
    created = next((p for p in reversed(tmp.parents) if not p.exists()), tmp)  # the first folder made here
    try:
        tmp.mkdir(parents=True)
        schema.save(tmp / "schema.json")
        (tmp / "vocab").mkdir()
        for name, vocab in vocabs.items():
            (tmp / "vocab" / vocab_file(name)).write_text(json.dumps(vocab))
        if req.field_map is not None:  # a run predicts raw libFM rows with the map its data was prepared with
            shutil.copyfile(req.field_map, tmp / "vocab" / FIELD_MAP_FILE)
        for s, arrays in encoded.items():
            (tmp / s).mkdir()
            for key, arr in arrays.items():
                np.save(tmp / s / f"{key}.npy", arr)
        stage("write")
        meta = {"rows": {s: int(encoded[s]["label"].shape[0]) for s in SPLITS},
                "sources": sources, "seconds": round(time.perf_counter() - t0, 3),
                "split": {"fractions": list(req.split.fractions), "time_column": req.split.time_column,
                          "seed": req.split.seed} if missing else None,
                "warnings": notes}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        _replace_dir(tmp, out)
    except BaseException as exc:
        shutil.rmtree(created, ignore_errors=True)
        if isinstance(exc, OSError):  # a full disk, no permission: the user's to fix, in one line
            raise DataError(f"cannot write: {exc.strerror or exc}", file=str(out)) from exc
        raise
    stage("done")
    bar.close()
    for note in notes:
        warnings.warn(note, DataWarning, stacklevel=2)
    return schema


def _libfm_roles(train: pl.DataFrame, roles: Roles) -> Roles:
    """What libFM columns are, unless the user said: the tokens between the label and the features
    (``extra_1``: make-ipinyou-data's paying price, known only after the auction was won) are not
    features; a field with several active indices in a row (iPinYou's user tags, joined with ``|`` by the
    reader) is multi-valued, so each tag has its own embedding rather than each combination of tags; a field
    of the map that no row of the train file uses is left out (make-ipinyou-data's map has an ``N:other``
    key for every column of its log, also the ones it never writes into the rows)."""
    named = {roles.label, *roles.numerical, *roles.sequence, *roles.ignore, *roles.domain_columns, roles.group}
    free = [c for c in train.columns if c not in named and c != ROW]
    extra = tuple(c for c in free if c.startswith("extra_"))
    unused = tuple(c for c in free if c not in extra and train[c].null_count() == train.height)
    multi = tuple(c for c in free if c not in extra and c not in unused and train.schema[c] == pl.String
                  and bool(train[c].str.contains("|", literal=True).any()))
    return replace(roles, ignore=(*roles.ignore, *extra, *unused), sequence=(*roles.sequence, *multi))


def _replace_dir(new: Path, out: Path) -> None:
    """Rename ``new`` to ``out``; a dataset already at ``out`` stays whole until the new one is in place."""
    if not out.exists():
        new.rename(out)
        return
    old = out.with_name(out.name + f".old-{time.time_ns()}")
    out.rename(old)
    try:
        new.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


# the libFM field map (``--field-map``) as prepare found it, kept beside the vocabularies: the run directory
# copies vocab/, so ``adactr predict`` reads raw libFM rows with the same map
FIELD_MAP_FILE = "libfm_field_map.txt"


def load_vocabs(directory: Path) -> dict[str, list]:
    return {unquote(p.stem): json.loads(p.read_text()) for p in sorted((directory / "vocab").glob("*.json"))}


__all__ = ["Format", "PRESETS", "PrepareRequest", "SplitSpec", "prepare", "read_raw", "editor_rows", "load_vocabs",
           "vocab_file", "FIELD_MAP_FILE"]
