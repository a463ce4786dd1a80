"""Readers: one raw file -> a ``polars.DataFrame`` of raw columns (stage 1 of the data pipeline).

A reader only parses: every column comes back as text (``pl.String``, empty field -> null) unless a
docstring says otherwise, and the encoder later decides roles (label, categorical, numerical,
multi-valued) and casts. Bad input raises :class:`~adactr.errors.DataError` naming the file, the row
(1-based line number as a text editor shows it, header line included) and the column.

What real files contain, and what happens to it:

* text must be UTF-8; a byte-order mark (Excel's "CSV UTF-8") is skipped. Other encodings (latin-1,
  cp1252, UTF-16) are refused naming the row and column of the first byte that is not UTF-8, never
  guessed: a guess that differs between the train file and a later predict file would silently turn
  known values into unseen ones. Convert such a file first (``iconv -f latin1 -t utf-8``).
* line ends may be LF, CRLF or CR alone; blank lines (anywhere) are skipped, and rows keep the line
  number an editor shows them on.
* CSV fields may be quoted (``"a,b"`` keeps its comma, ``"two\nlines"`` its newline, ``""`` is a
  quote); TSV has no quoting. A field may be of any length.
* a NUL byte, a row with too many or too few fields, an empty or duplicate column name is an error.

The happy path is vectorised (pyarrow's CSV parser, polars string kernels). Python only walks a file
line by line after a parse has failed, to say where. No torch here.
"""

from __future__ import annotations

import csv
import gzip
import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from adactr.errors import DataError, DataWarning

CRITEO_COLUMNS: tuple[str, ...] = ("label", *(f"I{i}" for i in range(1, 14)),
                                   *(f"C{i}" for i in range(1, 27)))
AVAZU_COLUMNS: tuple[str, ...] = (
    "id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
    "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
    "device_conn_type", *(f"C{i}" for i in range(14, 22)))
_SEP_BY_SUFFIX = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
_ROW = "__row"  # private line-number column used while parsing line-oriented formats
_BLOCK = 1 << 20  # pyarrow's default block size; a row longer than a block is read again with bigger ones
_MAX_BLOCK = 1 << 30
_NOT_UTF8 = "convert the file to UTF-8 first, e.g. iconv -f latin1 -t utf-8"
_NUL = "a NUL byte (\\x00) in the value: is this a binary, UTF-16 or damaged file?"


# --------------------------------------------------------------------------------------------------
# delimited text (CSV / TSV) and Parquet


def read_table(path: str | Path, *, sep: str | None = None, has_header: bool = True,
               column_names: list[str] | None = None) -> pl.DataFrame:
    """Read a CSV / TSV / Parquet file, plain or gzipped (``.gz``).

    CSV and TSV: every column as ``pl.String`` (empty field -> null), so the encoder controls casting.
    ``sep`` defaults from the suffix (``.csv`` -> ``,``; ``.tsv``/``.txt`` -> tab). Tab-separated files are
    read without quote processing (TSV has no quoting); comma-separated ones honour ``"..."``.
    UTF-8 only (a BOM is fine, latin-1 is refused naming its row and column: see the module docstring);
    any line ends; blank lines skipped.
    ``column_names`` names the columns of a headerless file, or replaces the header's names.
    Parquet keeps its stored dtypes (it is typed already). Layout::

        label,user,item        <- row 1 (header)
        1,u7,i3                <- row 2: the first data row
    """
    path = _existing(path)
    if base_suffix(path) == ".parquet":
        return _read_parquet(path, column_names)
    if sep is None:
        if base_suffix(path) not in _SEP_BY_SUFFIX:
            raise DataError(f"cannot tell the separator from the suffix {path.suffix!r}: pass sep=",
                            file=str(path))
        sep = _SEP_BY_SUFFIX[base_suffix(path)]
    return _read_delimited(path, sep=sep, has_header=has_header, column_names=column_names)


def read_criteo(path: str | Path) -> pl.DataFrame:
    """Read the Criteo display-ads layout: tab-separated, no header, 40 columns.

    Columns ``label, I1..I13, C1..C26``, all ``pl.String`` (integers are *not* cast here, so real and
    synthetic Criteo go through one encoder path); an empty field is null. Layout (tabs shown as ``|``)::

        0|1|1|5|0|1382|4|15|2|181|1|2||2|68fd1e64|80e26c9b|...|e8b83407|9727dd16
    """
    return _read_delimited(_existing(path), sep="\t", has_header=False, column_names=list(CRITEO_COLUMNS))


def read_avazu(path: str | Path, *, has_header: bool | None = None) -> pl.DataFrame:
    """Read the Avazu layout (comma-separated, 24 columns, header optional).

    The header is detected when ``has_header`` is None (first field == ``id``); a headerless file gets
    the canonical 24 names. ``id`` is dropped, ``click`` becomes ``label`` (a Kaggle test file without
    ``click`` has no label column), and ``hour`` (``YYMMDDHH``) is replaced by ``hour`` (hour of day,
    ``"00"``..``"23"``) and ``weekday`` (``"0"``..``"6"``, Monday = 0 as Python's ``date.weekday()``, so
    14102100 = Tuesday 2014-10-21 -> ``"1"``). All columns ``pl.String``. Layout::

        id,click,hour,C1,banner_pos,site_id,...,C21
        10000169349117863715,0,14102100,1005,0,1fbe01fe,...,79
    """
    path = _existing(path)
    if has_header is None:
        has_header = avazu_has_header(path)
    df = _read_delimited(path, sep=",", has_header=has_header,
                         column_names=None if has_header else list(AVAZU_COLUMNS))
    if "hour" not in df.columns:
        raise DataError("no 'hour' column", file=str(path), row=1, column="hour")

    raw = pl.col("hour")
    date = raw.str.slice(0, 6).str.strptime(pl.Date, "%y%m%d", strict=False)
    hh = raw.str.slice(6, 2).cast(pl.Int32, strict=False)
    parsed = df.select(
        date=date, hh=hh,
        ok=raw.str.contains(r"^\d{8}$").fill_null(False) & date.is_not_null() & (hh < 24).fill_null(False))
    if not parsed["ok"].all():
        i = int(parsed["ok"].not_().arg_true()[0])
        raise DataError(f"malformed hour {df['hour'][i]!r}: expected YYMMDDHH (e.g. 14102100)",
                        file=str(path), row=data_row_line(path, i, sep=",", has_header=has_header), column="hour")
    cols: list[pl.Series] = []
    for name in df.columns:
        if name == "id":
            continue
        if name == "hour":
            cols.append(parsed["hh"].cast(pl.String).str.zfill(2).alias("hour"))
            cols.append((parsed["date"].dt.weekday() - 1).cast(pl.String).alias("weekday"))
        else:
            cols.append(df[name].alias("label" if name == "click" else name))
    return pl.DataFrame(cols)


def avazu_has_header(path: str | Path) -> bool:
    """True when the first non-blank row of an Avazu file is its header (first field ``id``)."""
    path = _existing(path)
    first = _first_record(path, ",", quoted=True, names=AVAZU_COLUMNS, header=True)
    if first is None:
        raise DataError("empty file: no rows", file=str(path))
    return first[1][0].strip() == "id"


def _read_delimited(path: Path, *, sep: str, has_header: bool,
                    column_names: Sequence[str] | None) -> pl.DataFrame:
    quoted = sep != "\t"
    found = _first_record(path, sep, quoted=quoted, names=column_names or (), header=has_header)
    if found is None:
        raise DataError("empty file: no rows", file=str(path))
    header_end, first = found  # pyarrow's skip_rows counts lines, blank ones included
    if column_names is not None:
        names = list(column_names)
        if has_header and len(names) != len(first):
            raise DataError(f"expected {len(names)} columns (column_names), found {len(first)} in the header",
                            file=str(path), row=1)
    elif has_header:
        names = [c.strip() for c in first]
        for j, name in enumerate(names):
            if name == "" or "\x00" in name:
                what = "no name" if name == "" else "a NUL byte in its name (a UTF-16 or binary file?)"
                raise DataError(f"the header's field {j + 1} has {what}: every column needs a name",
                                file=str(path), row=1)
    else:
        names = [f"column_{i + 1}" for i in range(len(first))]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"duplicate column name {name!r}", file=str(path),
                            row=1 if has_header and column_names is None else None, column=name)
        seen.add(name)

    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=True,
                                   null_values=[""], quoted_strings_can_be_null=True)
    table = None
    newlines_in_values, block = False, _BLOCK
    while table is None:
        # pyarrow skips a UTF-8 BOM, blank lines, and reads CR, LF and CRLF line ends
        read = pacsv.ReadOptions(column_names=names, skip_rows=header_end if has_header else 0, block_size=block)
        parse = pacsv.ParseOptions(delimiter=sep, quote_char='"' if quoted else False,
                                   newlines_in_values=newlines_in_values)
        try:
            table = pacsv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as exc:
            straddling = "straddl" in str(exc)  # a row longer than a block, or a quoted newline at its edge
            if not straddling:
                _raise_located(path, sep=sep, quoted=quoted, names=names, skip=int(has_header), exc=exc)
            if quoted and not newlines_in_values:  # second try only when a quoted field holds a newline
                newlines_in_values = True
            elif straddling and block < _MAX_BLOCK:
                block *= 16
            else:
                raise DataError(f"cannot parse: {exc}", file=str(path)) from exc
    _refuse_nul(table, path, sep=sep, has_header=has_header)
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    if df.height == 0:
        raise DataError("no data rows", file=str(path))
    return df


def _refuse_nul(table: pa.Table, path: Path, *, sep: str, has_header: bool) -> None:
    """A NUL byte in any value is an error: text files hold none, but UTF-16 text and files a crash left
    padded with zeros do. The check reads each column's bytes once (no copy)."""
    for name, column in zip(table.column_names, table.columns, strict=True):
        for chunk in column.chunks:
            data = chunk.buffers()[2]
            if data is None or data.size == 0 or np.frombuffer(data, dtype=np.uint8).all():
                continue
            hit = pl.from_arrow(column).str.contains("\x00", literal=True).fill_null(False)
            assert isinstance(hit, pl.Series)
            if hit.any():
                i = int(hit.arg_true()[0])
                raise DataError(_NUL, file=str(path), row=data_row_line(path, i, sep=sep, has_header=has_header),
                                column=name)


def text_row_line(path: str | Path, index: int) -> int:
    """The line an editor shows data row ``index`` (0-based) of a line-oriented file (libFM) on: blank
    lines are skipped by the reader, so rows after one sit lower. Reads the file again: error path only."""
    rows = _read_lines(Path(path))[_ROW]
    return int(rows[index]) if 0 <= index < len(rows) else index + 1


def data_row_line(path: str | Path, index: int, *, sep: str, has_header: bool) -> int:
    """The line an editor shows data row ``index`` (0-based) of a delimited file on.

    It differs from the row count when blank lines or quoted newlines come before; worked out by
    reading the file again, so only on the way to an error.
    """
    path = Path(path)
    want = index + int(has_header)
    for k, (line, _, _) in enumerate(_records(path, sep, quoted=sep != "\t")):
        if k == want:
            return line
    return want + 1  # not reached for a row the parser returned


def _records(path: Path, sep: str, *, quoted: bool, errors: str = "replace"):
    """(first line, last line, fields) of each non-blank record, as Python's csv module reads it."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with _open_text(path, errors=errors) as fh:
        reader = csv.reader(fh, delimiter=sep, quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE)
        while True:
            start = reader.line_num + 1
            try:
                record = next(reader)
            except StopIteration:
                return
            except csv.Error as err:
                raise DataError(f"cannot parse: {err}", file=str(path), row=start) from None
            if record:
                yield start, reader.line_num, record


def _raise_located(path: Path, *, sep: str, quoted: bool, names: list[str], skip: int, exc: Exception) -> None:
    """Error path: find the first bad row by a Python scan and raise a DataError; return if none found."""
    _refuse_non_utf8(path, sep=sep, quoted=quoted, names=names, header=bool(skip))
    expected = len(names)
    for k, (line, _, record) in enumerate(_records(path, sep, quoted=quoted)):
        if k < skip or len(record) == expected:
            continue
        nul = next((j for j, value in enumerate(record) if "\x00" in value), None)
        if nul is not None:  # say why the row is broken: zeros a crash left, or UTF-16
            raise DataError(_NUL, file=str(path), row=line, column=names[nul] if nul < expected else None) from exc
        if len(record) < expected:
            raise DataError(f"expected {expected} columns, found {len(record)}: the row ends before this column",
                            file=str(path), row=line, column=names[len(record)]) from exc
        raise DataError(f"expected {expected} columns, found {len(record)}", file=str(path), row=line) from exc


def _refuse_non_utf8(path: Path, *, sep: str, quoted: bool, names: Sequence[str], header: bool) -> None:
    """Error path: raise at the row and column of the first byte that is not UTF-8; return if none."""
    data = _read_bytes(path)
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError("UTF-16 text (Excel's 'Unicode Text'): save it as 'CSV UTF-8', or convert it, e.g. "
                        "iconv -f utf-16 -t utf-8", file=str(path), row=1)
    try:
        data.decode("utf-8")
        return
    except UnicodeDecodeError as err:
        bad_line, byte = _line_of_offset(data, err.start), data[err.start]
    message = f"not UTF-8 text (byte 0x{byte:02x}): {_NOT_UTF8}"
    for k, (line, last, record) in enumerate(_records(path, sep, quoted=quoted, errors="surrogateescape")):
        if last < bad_line:
            continue
        for j, value in enumerate(record):
            if _has_bad_byte(value):
                in_header = header and k == 0
                column = names[j] if j < len(names) and not in_header else None
                raise DataError(message, file=str(path), row=line, column=column)
        break
    raise DataError(message, file=str(path), row=bad_line)


def _has_bad_byte(value: str) -> bool:
    """True where ``errors="surrogateescape"`` decoding put a byte that is not UTF-8."""
    return any("\udc80" <= c <= "\udcff" for c in value)


def _line_of_offset(data: bytes, offset: int) -> int:
    """1-based line of a byte offset, counting LF, CRLF and lone CR line ends as an editor does."""
    return data.count(b"\n", 0, offset) + data.count(b"\r", 0, offset) - data.count(b"\r\n", 0, offset) + 1


def _read_parquet(path: Path, column_names: list[str] | None) -> pl.DataFrame:
    try:
        if _is_gz(path):
            with gzip.open(path, "rb") as fh:
                df = pl.read_parquet(io.BytesIO(fh.read()))
        else:
            df = pl.read_parquet(path)
    except Exception as exc:  # polars/pyarrow raise many types for a corrupt file
        raise DataError(f"cannot read Parquet: {exc}", file=str(path)) from exc
    if column_names is not None:
        if len(column_names) != df.width:
            raise DataError(f"expected {len(column_names)} columns (column_names), found {df.width}",
                            file=str(path))
        df.columns = list(column_names)
    if df.height == 0:
        raise DataError("no data rows", file=str(path))
    return df


# --------------------------------------------------------------------------------------------------
# libFM / libSVM / libFFM


def read_libfm(path: str | Path, *, field_map: str | Path | None = None) -> pl.DataFrame:
    """Read libSVM/libFM (``label idx:val ...``) or libFFM (``label field:idx:val ...``) lines.

    ``label`` is the raw first token (``pl.String``; 0/1, -1/+1 ... are checked by the encoder).
    The feature columns depend on what is known about fields:

    * ``field_map`` given (iPinYou ``featindex.txt``: lines ``field:value<TAB>index``, e.g.
      ``8:115.45.195.*\\t29``; the field is the text before the first ``:``): one ``pl.String`` column per
      field of the map, in the map's order, holding the index active in that row (null if none; several
      active indices, e.g. iPinYou user tags, are joined with ``|`` like other multi-valued columns).
      A map key without a field (make-ipinyou-data's ``truncate\\t0``, active on every row) is dropped.
      Odd map lines (that one, bytes after an index, no index) are taken as they are and reported in one
      :class:`~adactr.errors.DataWarning` line (see :func:`read_field_map`).
    * no map, libFFM triples: one ``pl.String`` column per field id ``0..max`` seen, likewise.
    * no map, ``idx:val`` pairs: ``features`` (``List(String)``, the indices in line order) and
      ``feature_values`` (``List(Float64)``, the values beside them).

    Field columns are named ``f<field>`` when the field is a number, else the field text. Field-wise
    reading keeps only *which* feature is active: a value of 0 drops the token, any value but 0/1 is an
    error (read without ``field_map`` to keep values). Tokens without ``:`` right after the label
    (iPinYou ``.yzx``: ``click price idx:1 ...``) become ``extra_1``, ``extra_2``... Layouts::

        1 3:1 17:1 204:0.5        # libSVM (label may be -1/+1)
        0 0:3:1 1:17:1 2:204:1    # libFFM
        0 277 0:1 5:1 21:1        # iPinYou .yzx (paying price kept as extra_1)
    """
    path = _existing(path)
    lines = _read_lines(path)
    if lines.height == 0:
        raise DataError("empty file: no rows", file=str(path))
    lines = lines.with_columns(
        tok=pl.col("line").str.strip_chars().str.replace_all(r"\s+", " ").str.split(" "))
    # one row per token after the label: (__row, pos, tok, ncolon)
    tokens = (lines.select(_ROW, tok=pl.col("tok").list.slice(1))
              .with_columns(pos=pl.int_ranges(0, pl.col("tok").list.len(), dtype=pl.Int32))
              .explode("tok", "pos")
              .with_columns(ncolon=pl.col("tok").str.count_matches(":", literal=True)))

    # leading ':'-free tokens (same count on every line) -> extra_k columns
    is_extra = pl.col("ncolon") == 0
    tokens = tokens.with_columns(n_extra=is_extra.sum().over(_ROW))
    misplaced = tokens.filter(is_extra & (pl.col("pos") >= pl.col("n_extra")))
    if misplaced.height:
        _fail(path, misplaced, f"token {misplaced['tok'][0]!r} is not idx:val (only tokens right after the "
                               "label may lack ':')")
    per_line = tokens.group_by(_ROW).agg(n=pl.col("n_extra").first())
    n_extra = (lines.select(_ROW).join(per_line, on=_ROW, how="left", maintain_order="left")
               .with_columns(pl.col("n").fill_null(0)))
    k = int(n_extra["n"][0])
    odd = n_extra.filter(pl.col("n") != k)
    if odd.height:
        _fail(path, odd, f"expected {k} token(s) between the label and the features (as on line "
                         f"{n_extra[_ROW][0]}), found {odd['n'][0]}")
    base = lines.select(_ROW, pl.col("tok").list.first().alias("label"),
                        *[pl.col("tok").list.get(1 + j).alias(f"extra_{j + 1}") for j in range(k)])

    feats = tokens.filter(~is_extra)
    bad = feats.filter(pl.col("ncolon") > 2)
    if bad.height:
        _fail(path, bad, f"malformed feature {bad['tok'][0]!r}: expected idx:val or field:idx:val")
    if feats.height:
        kind = int(feats["ncolon"][0])
        mixed = feats.filter(pl.col("ncolon") != kind)
        if mixed.height:
            _fail(path, mixed, f"feature {mixed['tok'][0]!r} mixes libFFM field:idx:val and libSVM idx:val "
                               f"tokens (line {feats[_ROW][0]} has {feats['tok'][0]!r})")
    else:
        kind = 1
    parts = pl.col("tok").str.split_exact(":", kind)
    feats = feats.select(_ROW, "tok",
                         field=parts.struct.field("field_0") if kind == 2 else pl.lit(None, pl.String),
                         idx=parts.struct.field(f"field_{kind - 1}"),
                         val=parts.struct.field(f"field_{kind}").cast(pl.Float64, strict=False))
    bad = feats.filter(pl.col("val").is_null() | pl.col("val").is_nan() | pl.col("val").is_infinite()
                       | (pl.col("idx").str.len_chars() == 0))
    if bad.height:
        _fail(path, bad, f"malformed feature {bad['tok'][0]!r}: expected idx:val with a number as val")

    if field_map is None and kind == 1:
        lists = feats.group_by(_ROW, maintain_order=True).agg(features=pl.col("idx"),
                                                               feature_values=pl.col("val"))
        out = base.join(lists, on=_ROW, how="left", maintain_order="left").with_columns(
            pl.col("features").fill_null(pl.lit([], dtype=pl.List(pl.String))),
            pl.col("feature_values").fill_null(pl.lit([], dtype=pl.List(pl.Float64))))
        return out.drop(_ROW)

    bad = feats.filter((pl.col("val") != 0) & (pl.col("val") != 1))
    if bad.height:
        _fail(path, bad, f"feature {bad['tok'][0]!r} has a value other than 0/1, which field-wise reading "
                         "cannot keep (read without field_map to keep values)")
    feats = feats.filter(pl.col("val") == 1).with_columns(
        idx_int=pl.col("idx").cast(pl.Int64, strict=False))
    bad = feats.filter(pl.col("idx_int").is_null())
    if bad.height:
        _fail(path, bad, f"feature index in {bad['tok'][0]!r} is not an integer")
    feats = feats.with_columns(idx=pl.col("idx_int").cast(pl.String))
    if field_map is not None:
        fmap, note = read_field_map(field_map)
        if note is not None:
            warnings.warn(note, DataWarning, stacklevel=2)
        feats = feats.join(fmap.select("idx", "col", known=pl.lit(True)), on="idx", how="left",
                           maintain_order="left")
        bad = feats.filter(pl.col("known").is_null())
        if bad.height:
            _fail(path, bad, f"feature index {bad['idx'][0]} is not in the field map {field_map}")
        feats = feats.filter(pl.col("col").is_not_null())
        columns = fmap.filter(pl.col("col").is_not_null())["col"].unique(maintain_order=True).to_list()
        feats = feats.with_columns(code=pl.col("col").replace_strict(columns, range(len(columns)),
                                                                      return_dtype=pl.Int64))
    else:
        feats = feats.with_columns(field_int=pl.col("field").cast(pl.Int64, strict=False))
        bad = feats.filter(pl.col("field_int").is_null() | (pl.col("field_int") < 0))
        if bad.height:
            _fail(path, bad, f"field in {bad['tok'][0]!r} is not a non-negative integer")
        feats = feats.with_columns(col=pl.format("f{}", pl.col("field_int")), code=pl.col("field_int"))
        top = feats["field_int"].max()
        columns = [f"f{i}" for i in range(int(top) + 1)] if top is not None else []  # type: ignore[arg-type]
    clash = set(columns) & set(base.columns)
    if clash:
        raise DataError(f"field name(s) {sorted(clash)} clash with reader columns", file=str(path))
    if feats.height:
        # several active indices in one field of one row (iPinYou user tags) are joined with '|'; that
        # aggregation is slow, so only the (row, field) pairs that need it go through it
        multi = (pl.col(_ROW) * len(columns) + pl.col("code")).is_duplicated()
        feats = feats.with_columns(multi=multi)
        long = feats.filter(~pl.col("multi")).select(_ROW, "col", "idx")
        if feats["multi"].any():
            joined = (feats.filter(pl.col("multi")).group_by(_ROW, "col", maintain_order=True)
                      .agg(pl.col("idx").str.join("|")))
            long = pl.concat([long, joined])
        wide = long.pivot(on="col", index=_ROW, values="idx")
        base = base.join(wide, on=_ROW, how="left", maintain_order="left")
    base = base.with_columns(pl.lit(None, pl.String).alias(c) for c in columns if c not in base.columns)
    return base.select("label", *[f"extra_{j + 1}" for j in range(k)], *columns)


def read_field_map(path: str | Path) -> tuple[pl.DataFrame, str | None]:
    """featindex.txt -> (a frame of ``idx``, ``col``: index text and column name, null for a key without a
    field; a one-line note on the odd lines taken as they are, or None).

    A line is ``key<whitespace>index``, ``key`` being ``field:value`` (the field is the text before the
    first ``:``). Released files are taken as they are; their odd lines are counted, the first of each
    kind quoted in the note, and none of them refuses the file:

    * a key without ``:`` (make-ipinyou-data's ``truncate<TAB>0``, an index active on every row): the index
      belongs to no field and is dropped from the rows;
    * bytes after the index (``8:x<TAB>12 junk``, ``12\x00``, ``12\x1b``): the index is kept, the bytes dropped;
    * no index at all (``8:x`` alone): the line is skipped; a data row that uses an index the map does not
      hold is then an error naming that row;
    * bytes that are not UTF-8 (only keys hold free text): replaced, since only the field and index are read.

    The same index twice is an error (the map would be ambiguous). Layout::

        truncate\t0
        1:other\t1
        26:10063\t 2
    """
    path = _existing(path)
    lines = _read_lines(path, errors="replace")
    if lines.height == 0:
        raise DataError("empty field map", file=str(path))
    line = pl.col("line").str.strip_chars()
    clean = line.str.extract_groups(r"^(.*\S)\s+(\d+)$")
    trailing = line.str.extract_groups(r"^(.*\S)\s+(\d+)(\D.*)$")  # the longest key still followed by an index
    m = lines.with_columns(c=clean, t=trailing).select(
        _ROW, "line",
        key=pl.coalesce(pl.col("c").struct.field("1"), pl.col("t").struct.field("1")),
        idx=pl.coalesce(pl.col("c").struct.field("2"), pl.col("t").struct.field("2")),
        stray=pl.col("c").struct.field("2").is_null() & pl.col("t").struct.field("2").is_not_null(),
        replaced=pl.col("line").str.contains("\ufffd", literal=True))
    m = m.with_columns(field=pl.when(pl.col("key").str.contains(":", literal=True))
                       .then(pl.col("key").str.split(":").list.first()))
    kinds = [("without field:value", m.filter(pl.col("idx").is_not_null() & pl.col("field").is_null()),
              "its index is in no field, dropped from the rows"),
             ("with bytes after the index", m.filter(pl.col("stray")), "kept the index"),
             ("without an index", m.filter(pl.col("idx").is_null()), "skipped"),
             ("not UTF-8", m.filter(pl.col("replaced")), "the bytes replaced")]
    parts = []
    for what, rows, done in kinds:
        if rows.height:
            shown = rows["line"][0].strip()
            shown = repr(shown if len(shown) <= 40 else shown[:40] + "...")
            first = "line" if rows.height == 1 else "first: line"
            parts.append(f"{rows.height} line{'s' if rows.height > 1 else ''} {what} ({first} {rows[_ROW][0]} "
                         f"{shown}): {done}")
    m = m.filter(pl.col("idx").is_not_null()).with_columns(
        idx=pl.col("idx").str.strip_chars_start("0").replace("", "0"))  # 007 and 7 are one index
    dup = m.filter(~pl.col("idx").is_first_distinct())
    if dup.height:
        _fail(path, dup, f"index {dup['idx'][0]} appears twice")
    col = pl.when(pl.col("field").str.contains(r"^\d+$")).then(pl.format("f{}", pl.col("field"))) \
        .otherwise(pl.col("field"))
    note = f"{path}: took the field map as it is: {'; '.join(parts)}" if parts else None
    return m.select("idx", col=col), note


# --------------------------------------------------------------------------------------------------
# MovieLens-1M


def read_movielens(directory: str | Path, *, threshold: float = 4.0) -> pl.DataFrame:
    """Read and join MovieLens-1M's ``ratings.dat``, ``users.dat`` and ``movies.dat`` (``::``-separated).

    Columns, all ``pl.String``, one row per rating in file order: ``user_id, item_id, rating, timestamp,
    gender, age, occupation, zip, genres, label`` with ``label = "1" if rating >= threshold else "0"``;
    ``genres`` is kept as ``"Comedy|Romance"`` (the encoder splits it); titles are not returned.
    ``movies.dat`` is latin-1, the others UTF-8. Layout::

        ratings.dat  1::1193::5::978300760
        users.dat    1::F::1::10::48067
        movies.dat   1::Toy Story (1995)::Animation|Children's|Comedy
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError("not a directory (expected ratings.dat, users.dat, movies.dat in it)",
                        file=str(directory))
    ratings = _read_dat(directory / "ratings.dat", ["user_id", "item_id", "rating", "timestamp"], "utf-8")
    users = _read_dat(directory / "users.dat", ["user_id", "gender", "age", "occupation", "zip"], "utf-8")
    movies = _read_dat(directory / "movies.dat", ["item_id", "title", "genres"], "latin-1")

    for name, table, key, column in ((str(directory / "users.dat"), users, "user_id", "UserID"),
                                     (str(directory / "movies.dat"), movies, "item_id", "MovieID")):
        dup = table.filter(~pl.col(key).is_first_distinct())
        if dup.height:
            raise DataError(f"{column} {dup[key][0]} appears twice", file=name, row=int(dup[_ROW][0]),
                            column=column)
    rating = pl.col("rating").cast(pl.Float64, strict=False)
    bad = ratings.filter(rating.is_null())
    if bad.height:
        raise DataError(f"rating {bad['rating'][0]!r} is not a number", file=str(directory / "ratings.dat"),
                        row=int(bad[_ROW][0]), column="Rating")
    df = (ratings.join(users.drop(_ROW).with_columns(_u=pl.lit(True)), on="user_id", how="left",
                       maintain_order="left")
          .join(movies.drop(_ROW, "title").with_columns(_m=pl.lit(True)), on="item_id", how="left",
                maintain_order="left"))
    for flag, key, column, other in (("_u", "user_id", "UserID", "users.dat"),
                                     ("_m", "item_id", "MovieID", "movies.dat")):
        bad = df.filter(pl.col(flag).is_null())
        if bad.height:
            raise DataError(f"{column} {bad[key][0]} is not in {other}", file=str(directory / "ratings.dat"),
                            row=int(bad[_ROW][0]), column=column)
    return df.select("user_id", "item_id", "rating", "timestamp", "gender", "age", "occupation", "zip",
                     "genres", label=pl.when(rating >= threshold).then(pl.lit("1")).otherwise(pl.lit("0")))


def _read_dat(path: Path, names: list[str], encoding: str) -> pl.DataFrame:
    """A ``::``-separated file -> (__row, *names) as strings; the last name may itself hold no '::'."""
    lines = _read_lines(_existing(path), encoding=encoding)
    if lines.height == 0:
        raise DataError("empty file: no rows", file=str(path))
    parts = pl.col("line").str.split("::")
    n = len(names)
    if n == 3:  # movies: a title could contain '::'; the id and the genres cannot
        g = pl.col("line").str.extract_groups(r"^([^:]*)::(.*)::([^:]*)$")
        fields = [g.struct.field(str(i + 1)).alias(nm) for i, nm in enumerate(names)]
        df = lines.select(_ROW, "line", *fields, parts.list.len().alias("n"))
        bad = df.filter(pl.col(names[0]).is_null())
    else:
        fields = [parts.list.get(i, null_on_oob=True).alias(nm) for i, nm in enumerate(names)]
        df = lines.select(_ROW, "line", *fields, parts.list.len().alias("n"))
        bad = df.filter(pl.col("n") != n)
    if bad.height:
        raise DataError(f"expected {n} '::'-separated fields, found {bad['n'][0]}", file=str(path),
                        row=int(bad[_ROW][0]))
    return df.drop("line", "n")


# --------------------------------------------------------------------------------------------------
# labels


def validate_labels(values: pl.Series, *, file: str, column: str, first_row: int = 2) -> np.ndarray:
    """Check a label column and return it as float32 0/1.

    Accepts {0, 1} or {-1, 1} as numbers or text (``"1"``, ``"-1"``, ``"+1"``, ``"1.0"``); -1 maps to 0.
    ``first_row`` is the file row of ``values[0]`` (2 after a header line, 1 without one), so the error
    names the row a text editor shows.

    >>> validate_labels(pl.Series(["-1", "1", "+1"]), file="a.svm", column="label", first_row=1)
    array([0., 1., 1.], dtype=float32)
    >>> validate_labels(pl.Series(["0", "2"]), file="a.csv", column="click")
    Traceback (most recent call last):
    ...
    adactr.errors.DataError: a.csv, row 3, column 'click': bad label '2': expected 0/1 or -1/1
    """
    if values.dtype == pl.String:
        f = values.str.strip_chars().cast(pl.Float64, strict=False)
    elif values.dtype.is_numeric() or values.dtype == pl.Boolean:
        f = values.cast(pl.Float64)
    else:
        raise DataError(f"label column has dtype {values.dtype}, expected numbers or text", file=file,
                        column=column)
    bad = (f.is_null() | ~f.is_in([-1.0, 0.0, 1.0])).fill_null(True)
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(f"bad label {values[i]!r}: expected 0/1 or -1/1", file=file, row=first_row + i,
                        column=column)
    neg, zero = (f == -1.0).arg_true(), (f == 0.0).arg_true()
    if len(neg) and len(zero):
        i = int(max(neg[0], zero[0]))
        raise DataError(f"label {values[i]!r} mixes the 0/1 and -1/1 conventions", file=file,
                        row=first_row + i, column=column)
    return np.clip(f.to_numpy(), 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# helpers


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file" if not path.exists() else "not a file", file=str(path))
    return path


def _is_gz(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def base_suffix(path: Path) -> str:
    """Suffix ignoring a trailing ``.gz``: ``a.csv.gz`` -> ``.csv``."""
    return (path.with_suffix("") if _is_gz(path) else path).suffix.lower()


def _open_text(path: Path, encoding: str = "utf-8", errors: str = "replace") -> io.TextIOBase:
    """Text with line ends untranslated (the csv module reads LF, CRLF and CR); a UTF-8 BOM is skipped."""
    encoding = "utf-8-sig" if encoding == "utf-8" else encoding
    if _is_gz(path):
        return gzip.open(path, "rt", encoding=encoding, errors=errors, newline="")
    return open(path, encoding=encoding, errors=errors, newline="")


def _read_bytes(path: Path) -> bytes:
    try:
        if _is_gz(path):
            with gzip.open(path, "rb") as fh:
                return fh.read()
        return path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read: {exc}", file=str(path)) from exc


def _first_record(path: Path, sep: str, *, quoted: bool, names: Sequence[str],
                  header: bool) -> tuple[int, list[str]] | None:
    """(its last line, fields) of the first non-blank record of a delimited file; None when it has none.
    ``names`` and ``header`` only serve an error message: a byte that is not UTF-8 in this record."""
    try:
        for _, last, record in _records(path, sep, quoted=quoted, errors="surrogateescape"):
            if any(_has_bad_byte(value) for value in record):
                _refuse_non_utf8(path, sep=sep, quoted=quoted, names=names, header=header)
            return last, record
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read: {exc}", file=str(path)) from exc
    return None


def _read_lines(path: Path, *, encoding: str = "utf-8", errors: str = "strict") -> pl.DataFrame:
    """Non-blank lines as (__row: 1-based line number, line); LF, CRLF and CR end a line, a BOM is skipped.
    ``errors="replace"`` puts U+FFFD for bytes that are not ``encoding`` instead of refusing the file."""
    data = _read_bytes(path)
    try:
        text = data.decode(encoding, errors)  # not "utf-8-sig": its error offsets would not count the BOM
    except UnicodeDecodeError as exc:
        raise DataError(f"not {'UTF-8' if encoding == 'utf-8' else encoding} text (byte 0x{data[exc.start]:02x})"
                        + (f": {_NOT_UTF8}" if encoding == "utf-8" else ""), file=str(path),
                        row=_line_of_offset(data, exc.start)) from exc
    if encoding == "utf-8" and text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = pl.DataFrame({"line": pl.Series([text]).str.split("\n").explode()})
    return (lines.with_row_index(_ROW, offset=1).with_columns(pl.col(_ROW).cast(pl.Int64))
            .filter(pl.col("line").str.strip_chars() != ""))


def _fail(path: Path, bad: pl.DataFrame, message: str) -> None:
    """Raise a DataError at the first row of ``bad`` (frames here keep file order)."""
    raise DataError(message, file=str(path), row=int(bad[_ROW][0]))
