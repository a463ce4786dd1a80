"""Fit vocabularies and normalisers on train, encode any split with the saved schema.

Encoded arrays of one split (all row-aligned, memory-mappable ``.npy``)::

    cat.npy     (N, Fc) int32   categorical + log-bucketed numerical fields, per-field indices
    num.npy     (N, Fn) float32 standardised numerical fields
    seq_<j>.npy (N, L_j) int32  multi-valued fields, padded with 0 (missing)
    label.npy   (N,)    float32 0/1 (absent at predict time)
    domain.npy  (N,)    int32   domain index (when the schema has a domain column)
    group.npy   (N,)    int64   group id for GAUC, dense within the split (when it has a group column)

Everything is vectorised with polars / numpy; a raw value the vocabulary has not seen becomes OOV (1),
a missing one MISSING (0). No torch here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from adactr.data.schema import (
    MISSING,
    OOV,
    RESERVED,
    FieldSpec,
    Kind,
    NumericTransform,
    Pooling,
    Schema,
)
from adactr.errors import DataError

ROW = "__row"  # file row number of each data row (1-based, header counted), carried for error messages


@dataclass(frozen=True)
class Roles:
    """Which raw column plays which part. Columns named nowhere are categorical features (multi-valued
    when the reader already gives lists, as libSVM's ``features``)."""

    label: str = "label"
    numerical: tuple[str, ...] = ()
    sequence: tuple[str, ...] = ()
    # One column, or several whose combination is the domain (AdaSparse's gender x age x star level).
    domain: str | tuple[str, ...] | None = None
    group: str | None = None
    ignore: tuple[str, ...] = ()
    # The domain column(s) are also features by default (the papers feed the domain indicator to the model;
    # Scenario-Wise-Rec keeps gender/age/occupation as features). A combination is never a feature itself.
    domain_as_feature: bool = True
    # Group ids (e.g. user id) stay features by default; GAUC needs only the grouping.
    group_as_feature: bool = True

    @property
    def domain_columns(self) -> tuple[str, ...]:
        """The domain's raw columns: () without a domain, one name, or the names combined."""
        if self.domain is None:
            return ()
        return (self.domain,) if isinstance(self.domain, str) else tuple(self.domain)


@dataclass(frozen=True)
class EncodeOptions:
    min_count: int = 1  # values rarer than this in train go to OOV (Criteo practice: 10; DynInt: 20)
    # domains rarer than this in train go to the shared '<unseen>' domain (a long tail of combinations)
    min_domain_count: int = 1
    numeric_transform: NumericTransform = NumericTransform.STANDARD
    sequence_sep: str = "|"
    max_seq_len: int = 32  # longer lists keep their first max_seq_len values
    sequence_pooling: Pooling = Pooling.MEAN


def _check_columns(df: pl.DataFrame, needed: Sequence[str], *, file: str) -> None:
    have = set(df.columns)
    for c in needed:
        if c not in have:
            shown = [x for x in df.columns if x != ROW]
            # one column whose name holds another separator: Excel in many locales writes ';'
            sep = next((s for s in (";", "\t", "|", ",") if len(shown) == 1 and s in shown[0]), None)
            hint = f": is the file {sep!r}-separated? .csv files are read as comma-separated, .tsv/.txt as " \
                "tab-separated" if sep else ""
            raise DataError(f"column {c!r} is missing (columns are: {', '.join(shown)}){hint}", file=file)


def _first_bad_row(df: pl.DataFrame, mask: pl.Series) -> int:
    return int(df[ROW].filter(mask)[0])


def _to_float(df: pl.DataFrame, name: str, *, file: str) -> pl.Series:
    """Cast a raw column to float64; text that is not a number is an error naming its row."""
    s = df[name]
    if s.dtype.is_numeric():
        x = s.cast(pl.Float64)
    else:
        text = s.cast(pl.Utf8)
        x = text.cast(pl.Float64, strict=False)
        bad = s.is_not_null() & x.is_null()
        if bad.any():
            # slow path, only when some value did not parse: allow surrounding blanks and blank cells
            stripped = text.str.strip_chars()
            x = stripped.cast(pl.Float64, strict=False)
            bad = s.is_not_null() & (stripped != "") & x.is_null()
        if bad.any():
            row = _first_bad_row(df, bad)
            value = s.filter(bad)[0]
            raise DataError(f"{value!r} is not a number (the column is numerical)", file=file, row=row,
                            column=name)
    # nan, inf, -inf and numbers beyond float64 (1e400 reads as inf) count as missing: they carry no
    # usable magnitude, and one of them in a normaliser would make every encoded value NaN.
    return pl.select(pl.when(pl.lit(x).is_finite()).then(pl.lit(x))).to_series().alias(name)


# Big log buckets live far from the small integers they would otherwise collide with (bucket 4 from
# floor(ln(v)^2) vs the integer 4 itself); ints, not strings, so bucketing is pure numpy.
_BIG_BUCKET = 1_000_000


def _log_bucket_tokens(x: pl.Series) -> pl.Series:
    """Criteo winners' discretisation: floor(ln(v)^2) for v > 2, else floor(v); int tokens."""
    v = x.to_numpy()
    big = v > 2
    with np.errstate(invalid="ignore"):
        # below -2^53 (past exact integers) one bucket, not an int64 overflow that would read as missing
        code = np.where(big, _BIG_BUCKET + np.floor(np.log(np.where(big, v, 3.0)) ** 2),
                        np.floor(np.maximum(v, -(2.0**53))))
    return pl.Series(x.name, code, dtype=pl.Float64).cast(pl.Int64, strict=False)  # NaN -> null


# ln 0 = -inf: under log_v2 a zero gets this token, which no number gives (|v| would be e^-500000), so a
# zero count stays a value of its own, apart from an empty field (missing) and from |v| = 1 (bucket 0).
_ZERO_BUCKET = -1_000_000


def _ln_v2(v: np.ndarray, plus_one: bool) -> np.ndarray:
    """ln(v^2) or ln(v^2 + 1), without overflow: where v^2 is inf (|v| > 1.3e154), 2 ln|v| (the + 1 is
    then far below float64's precision)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        sq = v * v
        ln = np.log1p(sq) if plus_one else np.log(sq)
        return np.where(np.isinf(sq), 2.0 * np.log(np.abs(v)), ln)


def _log_v2_tokens(x: pl.Series) -> pl.Series:
    """DynInt paper: floor(ln(v^2)); v = 0 -> _ZERO_BUCKET; v < 0 as |v|; int tokens (NaN -> null)."""
    v = x.to_numpy()
    code = np.where(v == 0, _ZERO_BUCKET, np.floor(_ln_v2(v, plus_one=False)))
    return pl.Series(x.name, code, dtype=pl.Float64).cast(pl.Int64, strict=False)


def _log1p_v2_tokens(x: pl.Series) -> pl.Series:
    """xDeepInt's code: floor(ln(v^2 + 1)); 0 -> 0, v < 0 as |v|; int tokens (NaN -> null)."""
    code = np.floor(_ln_v2(x.to_numpy(), plus_one=True))
    return pl.Series(x.name, code, dtype=pl.Float64).cast(pl.Int64, strict=False)


_BUCKETS = {NumericTransform.LOG_BUCKET: _log_bucket_tokens, NumericTransform.LOG_V2: _log_v2_tokens,
            NumericTransform.LOG1P_V2: _log1p_v2_tokens}


def bucket_tokens(x: pl.Series, transform: NumericTransform) -> pl.Series:
    """Numbers (float64, null = missing) -> the int bucket tokens of a bucketing transform (null stays null).

    >>> bucket_tokens(pl.Series([None, 0.0, 1, 2, 3, -3, 10]), NumericTransform.LOG_V2).to_list()
    [None, -1000000, 0, 1, 2, 2, 4]
    >>> bucket_tokens(pl.Series([0.0, 1, 2, 3, -3, 10]), NumericTransform.LOG1P_V2).to_list()
    [0, 0, 1, 2, 2, 4]
    >>> bucket_tokens(pl.Series([0.0, 1, 2, 3, -3, 10]), NumericTransform.LOG_BUCKET).to_list()
    [0, 1, 2, 1000001, -3, 1000005]
    """
    return _BUCKETS[transform](x)


def _category_strings(df: pl.DataFrame, spec_name: str, transform: NumericTransform | None, *,
                      file: str) -> pl.Series:
    if transform is not None and transform.buckets:
        return bucket_tokens(_to_float(df, spec_name, file=file), transform)
    s = df[spec_name]
    return s if s.dtype == pl.Utf8 else s.cast(pl.Utf8)


def _fit_vocab(s: pl.Series, min_count: int, rows: pl.Series | None = None) -> list[str]:
    """Values seen at least ``min_count`` times, most frequent first (ties: by value). ``rows``: a boolean
    mask of the rows to count (the train rows of a frame holding every split), which saves gathering them."""
    # a hash group-by over the (masked) rows: 4-10x faster than gathering the train rows and value_counts
    # (5M Criteo-shaped rows, one categorical column: 0.03-0.21 s against 0.19-0.90 s)
    # fixed internal names: a raw column may be called anything, "__n" included
    keep = pl.col("value").is_not_null()
    frame = pl.DataFrame([s.alias("value")]) if rows is None else pl.DataFrame([s.alias("value"),
                                                                               rows.alias("train")])
    counts = (frame.lazy().filter(keep if rows is None else pl.col("train") & keep)
              .group_by("value").agg(pl.len().alias("n")).collect())
    kept = counts.filter(pl.col("n") >= min_count).sort(["n", "value"], descending=[True, False])
    return kept["value"].to_list()


def _escape(e: pl.Expr) -> pl.Expr:
    """Percent-encode the characters a domain name is built with, so two combinations never share a name."""
    return e.str.replace_all("%", "%25", literal=True).str.replace_all("|", "%7C", literal=True) \
        .str.replace_all("=", "%3D", literal=True)


def domain_keys(df: pl.DataFrame, columns: Sequence[str]) -> pl.Series:
    """The domain of each row as text: one column's raw value, or the combination of several columns as
    ``gender=F|age=25|occupation=4`` (``|``, ``=`` and ``%`` in names and values percent-encoded); null
    (missing domain) when any of the columns is empty.

    >>> df = pl.DataFrame({"gender": ["F", "M", None], "age": [25, 1, 18]})
    >>> domain_keys(df, ["gender", "age"]).to_list()
    ['gender=F|age=25', 'gender=M|age=1', None]
    """
    if len(columns) == 1:
        return df[columns[0]].cast(pl.Utf8)
    parts = [pl.concat_str([pl.lit(_escape_name(c) + "="), _escape(pl.col(c).cast(pl.Utf8))]) for c in columns]
    return df.select(pl.concat_str(parts, separator="|").alias("domain")).to_series()


def _escape_name(name: str) -> str:
    return name.replace("%", "%25").replace("|", "%7C").replace("=", "%3D")


def _encode_values(s: pl.Series, vocab: Sequence[str]) -> pl.Series:
    """Vocabulary position + RESERVED; unseen values -> OOV, nulls -> MISSING (int32)."""
    return s.replace_strict([None, *vocab], [MISSING, *range(RESERVED, RESERVED + len(vocab))], default=OOV,
                            return_dtype=pl.Int32)


def _split_lists(s: pl.Series, sep: str) -> pl.Series:
    if s.dtype == pl.List(pl.Utf8):
        return s
    if isinstance(s.dtype, pl.List):
        return s.cast(pl.List(pl.Utf8))
    return s.cast(pl.Utf8).str.split(sep)


def _pad_lists(codes_flat: np.ndarray, lengths: np.ndarray, max_len: int) -> np.ndarray:
    """Scatter a flat array of list items into an (N, max_len) matrix, vectorised."""
    n = len(lengths)
    out = np.zeros((n, max(max_len, 1)), dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rows = np.repeat(np.arange(n), lengths)
    pos = np.arange(len(codes_flat)) - np.repeat(starts, lengths)
    keep = pos < max_len
    out[rows[keep], pos[keep]] = codes_flat[keep]
    return out


def _stack_columns(columns: list[np.ndarray], n: int, block: int = 1 << 16) -> np.ndarray:
    """int32 columns -> one (n, len(columns)) row-major array, a block of rows at a time: 0.4 s for 5M x 39
    against 3.5 s for writing each column down a strided array (one cache line touched per value)."""
    out = np.empty((n, len(columns)), dtype=np.int32)
    if columns:
        for r in range(0, n, block):
            out[r:r + block] = np.stack([c[r:r + block] for c in columns], axis=1)
    return out


def fit(train: pl.DataFrame, roles: Roles, options: EncodeOptions, *, file: str,
        source_format: str = "csv", rows: np.ndarray | None = None) -> tuple[Schema, dict[str, list]]:
    """Fit the schema and vocabularies on the train rows only.

    ``rows`` selects the train rows of a frame that also holds other splits; each column is gathered
    on its own, so the frame is never copied whole.
    """

    def col(s: pl.Series) -> pl.Series:
        return s if rows is None else s.gather(rows)

    train_mask = None
    if rows is not None:
        m = np.zeros(train.height, dtype=bool)
        m[rows] = True
        train_mask = pl.Series("__train", m)

    dom_cols = roles.domain_columns
    named = {roles.label, *roles.numerical, *roles.sequence, *roles.ignore, *dom_cols, ROW}
    if roles.group is not None:
        named.add(roles.group)
    needed = [roles.label, *roles.numerical, *roles.sequence, *dom_cols, *(c for c in (roles.group,) if c)]
    _check_columns(train, needed, file=file)
    if (train.height if rows is None else len(rows)) == 0:
        raise DataError("no training rows", file=file)

    feature_cols = [c for c in train.columns if c not in named]
    if roles.domain_as_feature:
        feature_cols += [c for c in dom_cols if c not in roles.ignore]
    if roles.group and roles.group_as_feature and roles.group not in feature_cols:
        feature_cols.append(roles.group)
    feature_cols += [c for c in train.columns if c in roles.numerical or c in roles.sequence]
    # stable order: as in the file
    order = {c: i for i, c in enumerate(train.columns)}
    feature_cols = sorted(set(feature_cols), key=order.__getitem__)

    fields: list[FieldSpec] = []
    vocabs: dict[str, list] = {}
    for name in feature_cols:
        if name in roles.numerical:
            if options.numeric_transform is NumericTransform.STANDARD:
                x = col(_to_float(train, name, file=file))
                mean = float(x.mean() or 0.0)  # type: ignore[arg-type]
                std = float(x.std() or 0.0)  # type: ignore[arg-type]
                if not (math.isfinite(mean) and math.isfinite(std)):  # e.g. two values of 1e308 overflow
                    big = x.abs().arg_max()
                    raise DataError(f"{col(train[name])[big]!r} is too large to standardise (the mean or standard "
                                    "deviation overflows): rescale the column, or pass --numeric log_bucket",
                                    file=file, row=int(col(train[ROW])[big]), column=name)
                fields.append(FieldSpec(name=name, kind=Kind.NUMERICAL, transform=NumericTransform.STANDARD,
                                        mean=mean, std=std if std > 0 else 1.0))
                continue
            tokens = bucket_tokens(_to_float(train, name, file=file), options.numeric_transform)  # no gather
            vocab = _fit_vocab(tokens, options.min_count, train_mask)
            fields.append(FieldSpec(name=name, kind=Kind.NUMERICAL, transform=options.numeric_transform,
                                    vocab_size=len(vocab) + RESERVED, min_count=options.min_count))
        elif name in roles.sequence or isinstance(train.schema[name], pl.List):  # libSVM's index lists
            lists = _split_lists(col(train[name]), options.sequence_sep)
            vocab = _fit_vocab(lists.explode().alias(name), options.min_count)
            max_len = int(lists.list.len().max() or 1)  # type: ignore[arg-type]
            fields.append(FieldSpec(name=name, kind=Kind.SEQUENCE, vocab_size=len(vocab) + RESERVED,
                                    min_count=options.min_count, sep=options.sequence_sep,
                                    max_len=min(max_len, options.max_seq_len),
                                    pooling=options.sequence_pooling))
        else:
            vocab = _fit_vocab(_category_strings(train, name, None, file=file), options.min_count, train_mask)
            fields.append(FieldSpec(name=name, kind=Kind.CATEGORICAL, vocab_size=len(vocab) + RESERVED,
                                    min_count=options.min_count))
        vocabs[name] = vocab

    domain_names: tuple[str, ...] = ()
    domain = None
    if dom_cols:
        # one column: its raw values; several: the combinations seen in train, named "gender=F|age=25"
        dom_vocab = _fit_vocab(col(domain_keys(train, dom_cols)), options.min_domain_count)
        vocabs["__domain__"] = dom_vocab
        domain_names = ("<missing>", "<unseen>", *dom_vocab)
        domain = dom_cols[0] if len(dom_cols) == 1 else "|".join(dom_cols)
    schema = Schema(label=roles.label, fields=tuple(fields), domain=domain,
                    domain_names=domain_names, domain_columns=dom_cols if len(dom_cols) > 1 else (),
                    group=roles.group, ignore=tuple(roles.ignore),
                    columns=tuple(c for c in train.columns if c != ROW), source_format=source_format,
                    extra={"min_domain_count": str(options.min_domain_count)} if options.min_domain_count > 1
                    else {})
    return schema, vocabs


def encode(df: pl.DataFrame, schema: Schema, vocabs: dict[str, list], *, file: str,
           require_label: bool = True) -> dict[str, np.ndarray]:
    """Encode raw rows with a fitted schema. Unseen values -> OOV; missing -> MISSING (or 0.0)."""
    needed = [f.name for f in schema.fields] + list(schema.domain_sources)
    if require_label:
        needed.append(schema.label)
    _check_columns(df, needed, file=file)
    if ROW not in df.columns:
        df = df.with_row_index(ROW, offset=2)
    n = df.height
    out: dict[str, np.ndarray] = {}

    columns = [_encode_values(_category_strings(df, f.name, f.transform, file=file), vocabs[f.name]).to_numpy()
               for f in schema.cat_fields]
    out["cat"] = _stack_columns(columns, n)

    num_cols = []
    for f in schema.num_fields:
        x = _to_float(df, f.name, file=file)
        with np.errstate(over="ignore"):
            z = ((x - f.mean) / f.std).fill_null(0.0).to_numpy().astype(np.float32)
        if not np.isfinite(z).all():  # a value float32 cannot hold once standardised (|z| > 3.4e38)
            i = int(np.argmin(np.isfinite(z)))
            raise DataError(f"{df[f.name][i]!r} is too large: standardised with the train mean {f.mean:g} and standard "
                            f"deviation {f.std:g} it does not fit a float32", file=file, row=int(df[ROW][i]),
                            column=f.name)
        num_cols.append(z)
    out["num"] = np.stack(num_cols, axis=1) if num_cols else np.zeros((n, 0), np.float32)

    for j, f in enumerate(schema.seq_fields):
        lists = _split_lists(df[f.name], f.sep)
        lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
        flat = lists.explode()
        # explode turns an empty/null list into one null item: drop those so lengths line up
        flat = flat.filter(pl.Series(np.repeat(lengths > 0, np.maximum(lengths, 1))))
        codes = _encode_values(flat, vocabs[f.name]).to_numpy().astype(np.int32)
        out[f"seq_{j}"] = _pad_lists(codes, lengths, f.max_len)

    # at predict time a label column left empty (rows still to score) is no label, not a bad one
    if require_label or (schema.label in df.columns and df[schema.label].null_count() < n):
        lab = df[schema.label]
        out["label"] = lab.to_numpy().astype(np.float32) if lab.dtype.is_numeric() and lab.null_count() == 0 \
            else _labels(df, schema.label, file=file)
    if schema.domain:
        out["domain"] = _encode_values(domain_keys(df, schema.domain_sources), vocabs["__domain__"]).to_numpy() \
            .astype(np.int32)
    if schema.group and schema.group in df.columns:
        out["group"] = df[schema.group].cast(pl.Utf8).rank("dense").fill_null(0).to_numpy().astype(np.int64)
    return out


def _labels(df: pl.DataFrame, column: str, *, file: str) -> np.ndarray:
    """Labels in {0, 1} or {-1, 1} (as numbers or text); anything else names its row."""
    s = df[column].cast(pl.Utf8).str.strip_chars()
    x = s.cast(pl.Float64, strict=False)
    ok = x.is_in([0.0, 1.0, -1.0]).fill_null(False)
    if not ok.all():
        bad = ~ok
        value = s.filter(bad)[0]
        what = "is empty" if value in (None, "") else f"{value!r} is not one of 0/1 or -1/1"
        raise DataError(f"label {what}", file=file, row=_first_bad_row(df, bad), column=column)
    neg, zero = (x == -1.0).arg_true(), (x == 0.0).arg_true()
    if len(neg) and len(zero):  # -1 is a negative only where no 0 is: a mix is ambiguous
        i = int(max(neg[0], zero[0]))
        raise DataError(f"label {s[i]!r} mixes the 0/1 and -1/1 conventions", file=file, row=int(df[ROW][i]),
                        column=column)
    return (x.to_numpy() > 0).astype(np.float32)


def check_labels(df: pl.DataFrame, column: str, *, file: str) -> pl.DataFrame:
    """Replace the label column by validated float 0/1 (done once per file, before any split)."""
    _check_columns(df, [column], file=file)
    return df.with_columns(pl.Series(column, _labels(df, column, file=file)))
