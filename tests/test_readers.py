"""Readers: tiny hand-written files with known answers, every bad-input case, and the shared samples."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adactr.data import readers
from adactr.data.readers import (
    AVAZU_COLUMNS,
    CRITEO_COLUMNS,
    read_avazu,
    read_criteo,
    read_libfm,
    read_movielens,
    read_table,
    validate_labels,
)
from adactr.errors import DataError, DataWarning


def _write(path: Path, text: str, *, encoding: str = "utf-8") -> Path:
    raw = text.encode(encoding)
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def _where(exc: pytest.ExceptionInfo[DataError], path: Path, row: int | None, column: str | None = None):
    message = str(exc.value)
    assert str(path) in message
    assert exc.value.row == row
    if row is not None:
        assert f"row {row}" in message
    if column is not None:
        assert f"column {column!r}" in message
    return message


# ---------------------------------------------------------------------------------------------- tables


@pytest.mark.parametrize("name", ["t.csv", "t.csv.gz"])
def test_csv_plain_and_gz_read_as_strings_with_empty_as_null(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path / name, 'label,user,price\n1,u7,3.5\n0,,"1,5"\n')
    df = read_table(path)
    assert df.columns == ["label", "user", "price"]
    assert df.dtypes == [pl.String] * 3
    assert df.to_dict(as_series=False) == {"label": ["1", "0"], "user": ["u7", None], "price": ["3.5", "1,5"]}


def test_tsv_and_txt_default_to_tab_and_take_column_names(tmp_path: Path) -> None:
    tsv = _write(tmp_path / "t.tsv", "a\tb\n1\t\n")
    assert read_table(tsv).to_dict(as_series=False) == {"a": ["1"], "b": [None]}
    txt = _write(tmp_path / "t.txt.gz", '1\t"x\n2\ty"\n')  # TSV has no quoting: quotes are data
    df = read_table(txt, has_header=False, column_names=["label", "c"])
    assert df.to_dict(as_series=False) == {"label": ["1", "2"], "c": ['"x', 'y"']}
    assert read_table(txt, has_header=False).columns == ["column_1", "column_2"]


def test_quoted_newline_in_csv_is_one_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.csv", 'a,b\n1,"two\nlines"\n3,x\n')
    assert read_table(path)["b"].to_list() == ["two\nlines", "x"]


def test_parquet_keeps_dtypes_plain_and_gz(tmp_path: Path) -> None:
    df = pl.DataFrame({"label": [1, 0], "price": [1.5, None], "user": ["a", "b"]})
    df.write_parquet(tmp_path / "t.parquet")
    (tmp_path / "t.parquet.gz").write_bytes(gzip.compress((tmp_path / "t.parquet").read_bytes()))
    for name in ("t.parquet", "t.parquet.gz"):
        assert read_table(tmp_path / name).equals(df)
    assert read_table(tmp_path / "t.parquet", column_names=["y", "p", "u"]).columns == ["y", "p", "u"]


@pytest.mark.parametrize("name", ["bad.csv", "bad.csv.gz"])
def test_wrong_column_count_names_file_and_editor_row(tmp_path: Path, name: str) -> None:
    # line 1 header, line 2 ok, line 3 blank (skipped), line 4 short: an editor shows row 4
    path = _write(tmp_path / name, "a,b,c\n1,2,3\n\n4,5\n6,7,8\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert "expected 3 columns, found 2" in _where(exc, path, 4)
    _write(path, "a,b,c\n1,2,3\n4,5,6,7\n")
    with pytest.raises(DataError) as exc:
        read_table(path)
    assert "expected 3 columns, found 4" in _where(exc, path, 3)


def test_headerless_tsv_with_names_checks_the_first_row_too(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.tsv", "1\t2\n")
    with pytest.raises(DataError) as exc:
        read_table(path, has_header=False, column_names=["a", "b", "c"])
    assert "expected 3 columns, found 2" in _where(exc, path, 1)


def test_empty_missing_headeronly_and_unknown_suffix(tmp_path: Path) -> None:
    empty = _write(tmp_path / "e.csv", "")
    with pytest.raises(DataError, match="empty file") as exc:
        read_table(empty)
    _where(exc, empty, None)
    header = _write(tmp_path / "h.csv.gz", "a,b\n")
    with pytest.raises(DataError, match="no data rows"):
        read_table(header)
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "absent.csv")
    with pytest.raises(DataError, match="separator"):
        read_table(_write(tmp_path / "x.dat", "a\n1\n"))
    dup = _write(tmp_path / "d.csv", "a,a\n1,2\n")
    with pytest.raises(DataError, match="duplicate column name") as exc:
        read_table(dup)
    _where(exc, dup, 1, "a")


def test_invalid_utf8_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(b"a,b\n1,x\n2,\xff\xfe\n")
    with pytest.raises(DataError, match="UTF-8") as exc:
        read_table(path)
    _where(exc, path, 3)


@pytest.mark.parametrize("nl", ["\n", "\r\n", "\r"])
def test_data_row_line_counts_blank_lines_and_quoted_newlines(tmp_path: Path, nl: str) -> None:
    # line 1 header, 2 blank, 3 row 0, 4-5 row 1 (a quoted newline), 6 blank, 7 row 2
    text = nl.join(["a,b", "", "1,x", '2,"y', 'z"', "", "3,w"]) + nl
    path = _write(tmp_path / "l.csv.gz", text)
    assert read_table(path)["b"].to_list() == ["x", f"y{nl}z", "w"]
    assert [readers.data_row_line(path, i, sep=",", has_header=True) for i in range(3)] == [3, 4, 7]
    assert readers.data_row_line(path, 0, sep=",", has_header=False) == 1  # the header is a row then


def test_bom_is_skipped_in_headers_and_first_rows(tmp_path: Path) -> None:
    assert read_table(_write(tmp_path / "b.csv", "\ufefflabel,x\n1,a\n")).columns == ["label", "x"]
    assert read_table(_write(tmp_path / "b.tsv.gz", "\ufeff1\ta\n"), has_header=False).row(0) == ("1", "a")
    assert read_libfm(_write(tmp_path / "b.svm", "\ufeff1 3:1\n"))["label"].to_list() == ["1"]


# ---------------------------------------------------------------------------------------------- criteo

_CRITEO_ROW = "\t".join(["1", "5", "-1", *[""] * 11, "68fd1e64", *[""] * 24, "9727dd16"])


def test_criteo_tiny_all_strings_empty_is_null(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.txt", _CRITEO_ROW + "\n" + _CRITEO_ROW.replace("68fd1e64", "") + "\n")
    df = read_criteo(path)
    assert df.columns == list(CRITEO_COLUMNS) and df.shape == (2, 40)
    assert set(df.dtypes) == {pl.String}
    assert df.row(0)[:4] == ("1", "5", "-1", None)
    assert df["C1"].to_list() == ["68fd1e64", None]
    assert df["C26"].to_list() == ["9727dd16"] * 2


def test_criteo_wrong_column_count_row(tmp_path: Path) -> None:
    short = _CRITEO_ROW.rsplit("\t", 1)[0]  # 39 fields
    path = _write(tmp_path / "c.txt.gz", "\n".join([_CRITEO_ROW, _CRITEO_ROW, short, _CRITEO_ROW]) + "\n")
    with pytest.raises(DataError) as exc:
        read_criteo(path)
    assert "expected 40 columns, found 39" in _where(exc, path, 3)


def test_criteo_sample(tmp_path: Path, shared_data: Path) -> None:
    df = read_criteo(shared_data / "criteo_sample" / "train.txt")
    assert df.shape == (7200, 40) and set(df.dtypes) == {pl.String}
    assert df["I1"].null_count() == 3247  # empty fields are null, not ""
    assert (df["C3"] == "").sum() == 0
    assert set(df["label"].unique()) == {"0", "1"}


# ----------------------------------------------------------------------------------------------- avazu

_AVAZU_HEADER = ",".join(AVAZU_COLUMNS)


def _avazu_row(hour: str, click: str = "0") -> str:
    return ",".join(["1000", click, hour, "1005", "0", *["abc"] * 11, *["15704"] * 8])


def test_avazu_tiny_header_detected_hour_and_weekday(tmp_path: Path) -> None:
    with_header = _write(tmp_path / "a.csv", "\n".join([_AVAZU_HEADER, _avazu_row("14102100", "1"),
                                                         _avazu_row("14102623")]) + "\n")
    without = _write(tmp_path / "b.csv", _avazu_row("14102100", "1") + "\n" + _avazu_row("14102623") + "\n")
    for path in (with_header, without):
        df = read_avazu(path)
        assert df.columns[:4] == ["label", "hour", "weekday", "C1"] and "id" not in df.columns
        assert df.width == 24 and set(df.dtypes) == {pl.String}
        # Monday = 0: 2014-10-21 is a Tuesday (1), 2014-10-26 a Sunday (6)
        assert df.select("label", "hour", "weekday").rows() == [("1", "00", "1"), ("0", "23", "6")]


@pytest.mark.parametrize("hour", ["14102124", "1410210", "1410x100", "14133100", ""])
def test_avazu_malformed_hour_names_row_and_column(tmp_path: Path, hour: str) -> None:
    path = _write(tmp_path / "a.csv", "\n".join([_AVAZU_HEADER, _avazu_row("14102100"), _avazu_row(hour)]))
    with pytest.raises(DataError, match="hour") as exc:
        read_avazu(path)
    _where(exc, path, 3, "hour")
    path = _write(tmp_path / "b.csv", _avazu_row(hour) + "\n")
    with pytest.raises(DataError) as exc:
        read_avazu(path)
    _where(exc, path, 1, "hour")


def test_avazu_sample(shared_data: Path) -> None:
    train = read_avazu(shared_data / "avazu_sample" / "train.csv")
    dev = read_avazu(shared_data / "avazu_sample" / "dev.csv")
    test = read_avazu(shared_data / "avazu_sample" / "test.csv")
    assert (train.height, dev.height, test.height) == (8087, 480, 432)
    assert train.columns == dev.columns == test.columns
    assert train.columns[:3] == ["label", "hour", "weekday"]
    assert set(train["hour"]) == {"00"} and set(train["weekday"]) == {"1"}  # 14102100: Tuesday, 0h
    assert set(train["label"]) == {"0", "1"}


# ----------------------------------------------------------------------------------------------- libfm


def test_libsvm_pairs_give_index_and_value_lists(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.svm", "+1 3:1 17:1 204:0.5\n\n-1   5:1\t9:2\n-1\n")
    df = read_libfm(path)
    assert df.columns == ["label", "features", "feature_values"]
    assert df.schema["features"] == pl.List(pl.String) and df.schema["feature_values"] == pl.List(pl.Float64)
    assert df["label"].to_list() == ["+1", "-1", "-1"]
    assert df["features"].to_list() == [["3", "17", "204"], ["5", "9"], []]
    assert df["feature_values"].to_list() == [[1.0, 1.0, 0.5], [1.0, 2.0], []]
    y = validate_labels(df["label"], file=str(path), column="label", first_row=1)
    assert y.dtype == np.float32 and y.tolist() == [1.0, 0.0, 0.0]


def test_libffm_without_map_one_column_per_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "a.ffm", "1 0:5:1 2:7:1\n0 0:6:1 1:8:1 2:9:0\n")
    df = read_libfm(path)
    assert df.columns == ["label", "f0", "f1", "f2"] and set(df.dtypes) == {pl.String}
    assert df.rows() == [("1", "5", None, "7"), ("0", "6", "8", None)]  # value 0 = inactive


_FEATINDEX = "truncate\t0\n1:other\t1\n1:3\t2\n1:4\t3\n26:10006\t4\n26:13042\t5\n30:x y\t6\n"


def test_libfm_with_ipinyou_field_map(tmp_path: Path) -> None:
    fmap = _write(tmp_path / "featindex.txt", _FEATINDEX)
    # iPinYou .yzx lines: click, paying price, then idx:1 (index 0 = 'truncate', on every line)
    path = _write(tmp_path / "train.yzx.txt", "0 277 0:1 2:1 4:1 5:1\n1 80 0:1 3:1 6:1\n0 5 0:1\n")
    df = read_libfm(path, field_map=fmap)
    assert df.columns == ["label", "extra_1", "f1", "f26", "f30"] and set(df.dtypes) == {pl.String}
    assert df.rows() == [("0", "277", "2", "4|5", None), ("1", "80", "3", None, "6"),
                         ("0", "5", None, None, None)]


# featindex.txt as make-ipinyou-data releases it, with the odd lines real copies hold: line 1 'truncate'
# (no field:value), stray bytes after an index (line 4: ESC, line 6: ' junk', line 8: NUL), a blank before an
# index (line 5), a line without an index (line 9), a key that is not UTF-8 (line 10: latin-1 'é')
_RELEASED = (b"truncate\t0\n1:other\t1\n1:3\t2\n1:4\t3\x1b\n26:10006\t 4\n26:13042\t5 junk\n30:x y\t6\n"
             b"30:z\t7\x00\x00\n30:lost\n8:caf\xe9\t8\n")


def test_field_map_as_released_is_taken_with_one_note(tmp_path: Path) -> None:
    fmap = tmp_path / "featindex.txt"
    fmap.write_bytes(_RELEASED)
    table, note = readers.read_field_map(fmap)
    assert table.rows() == [("0", None), ("1", "f1"), ("2", "f1"), ("3", "f1"), ("4", "f26"), ("5", "f26"),
                            ("6", "f30"), ("7", "f30"), ("8", "f8")]
    assert note == (f"{fmap}: took the field map as it is: "
                    "1 line without field:value (line 1 'truncate\\t0'): its index is in no field, dropped from the "
                    "rows; "
                    "3 lines with bytes after the index (first: line 4 '1:4\\t3\\x1b'): kept the index; "
                    "1 line without an index (line 9 '30:lost'): skipped; "
                    "1 line not UTF-8 (line 10 '8:caf\ufffd\\t8'): the bytes replaced")
    path = _write(tmp_path / "train.yzx.txt", "0 277 0:1 2:1 4:1 5:1 8:1\n1 80 0:1 3:1 6:1 7:1\n0 5 0:1\n")
    with pytest.warns(DataWarning) as caught:
        df = read_libfm(path, field_map=fmap)
    assert [str(w.message) for w in caught] == [note]
    assert df.columns == ["label", "extra_1", "f1", "f26", "f30", "f8"]
    assert df.rows() == [("0", "277", "2", "4|5", None, "8"), ("1", "80", "3", None, "6|7", None),
                         ("0", "5", None, None, None, None)]


def test_clean_field_map_gives_no_note(tmp_path: Path) -> None:
    fmap = _write(tmp_path / "featindex.txt", "weekday:3\t1\nusertag:10063\t 02\n")  # 02 is index 2
    table, note = readers.read_field_map(fmap)
    assert note is None and table.rows() == [("1", "weekday"), ("2", "usertag")]
    df = read_libfm(_write(tmp_path / "a.txt", "1 1:1 2:1\n"), field_map=fmap)
    assert df.rows() == [("1", "1", "2")]


def test_ipinyou_without_field_map_is_one_multi_valued_field(tmp_path: Path) -> None:
    """make-ipinyou-data rows with no featindex.txt: nothing says which index is which field, so the indices
    of a row are one list (the old reader's polars 'cannot cast List type' traceback came from here)."""
    path = _write(tmp_path / "train.yzx.txt", "0 277 0:1 5:1 23:1 101:1\n1 80 0:1 6:1 23:1 102:1 103:1\n")
    df = read_libfm(path)
    assert df.columns == ["label", "extra_1", "features", "feature_values"]
    assert df["features"].to_list() == [["0", "5", "23", "101"], ["0", "6", "23", "102", "103"]]


def test_libfm_bad_inputs_name_the_row(tmp_path: Path) -> None:
    fmap = _write(tmp_path / "featindex.txt", _FEATINDEX)
    path = _write(tmp_path / "a.txt", "0 1:1\n1 2:1 99:1\n")
    with pytest.raises(DataError, match="99 is not in the field map") as exc:
        read_libfm(path, field_map=fmap)
    _where(exc, path, 2)
    _write(path, "0 1:1\n0 2:1\n1 2:0.5\n")
    with pytest.raises(DataError, match="other than 0/1") as exc:
        read_libfm(path, field_map=fmap)
    _where(exc, path, 3)
    _write(path, "0 1:1\n\n1 2:x\n")
    with pytest.raises(DataError, match="malformed feature '2:x'") as exc:
        read_libfm(path)
    _where(exc, path, 3)
    _write(path, "0 1:1\n1 0:2:1\n")
    with pytest.raises(DataError, match="mixes") as exc:
        read_libfm(path)
    _where(exc, path, 2)
    _write(path, "0 1:1 7\n")
    with pytest.raises(DataError, match="only tokens right after the label") as exc:
        read_libfm(path)
    _where(exc, path, 1)
    _write(path, "")
    with pytest.raises(DataError, match="empty file"):
        read_libfm(path)
    bad_map = _write(tmp_path / "bad_map.txt", "1:a\t1\n1:b\t1\n")
    with pytest.raises(DataError, match="appears twice") as exc:
        read_libfm(_write(path, "0 1:1\n"), field_map=bad_map)
    _where(exc, bad_map, 2)


# ------------------------------------------------------------------------------------------- movielens


def _movielens(directory: Path, ratings: str) -> Path:
    directory.mkdir(exist_ok=True)
    _write(directory / "ratings.dat", ratings)
    _write(directory / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n")
    _write(directory / "movies.dat", "10::Café au lait (1993)::Comedy|Romance\n20::Heat (1995)::Action\n",
           encoding="latin-1")
    return directory


def test_movielens_join_label_and_latin1(tmp_path: Path) -> None:
    directory = _movielens(tmp_path / "ml", "1::10::5::978300760\n2::20::3::978302109\n1::20::4::978301968\n")
    df = read_movielens(directory)
    assert df.columns == ["user_id", "item_id", "rating", "timestamp", "gender", "age", "occupation", "zip",
                          "genres", "label"]
    assert set(df.dtypes) == {pl.String}
    assert df.row(0) == ("1", "10", "5", "978300760", "F", "1", "10", "48067", "Comedy|Romance", "1")
    assert df["label"].to_list() == ["1", "0", "1"]  # rating >= 4
    assert read_movielens(directory, threshold=5)["label"].to_list() == ["1", "0", "0"]


def test_movielens_bad_inputs(tmp_path: Path) -> None:
    directory = _movielens(tmp_path / "ml", "1::10::5::978300760\n3::20::3::978302109\n")
    with pytest.raises(DataError, match="UserID 3 is not in users.dat") as exc:
        read_movielens(directory)
    _where(exc, directory / "ratings.dat", 2, "UserID")
    _write(directory / "ratings.dat", "1::10::5::978300760\n1::10::5\n")
    with pytest.raises(DataError, match="expected 4 '::'-separated fields, found 3") as exc:
        read_movielens(directory)
    _where(exc, directory / "ratings.dat", 2)
    _write(directory / "ratings.dat", "1::10::five::978300760\n")
    with pytest.raises(DataError, match="not a number") as exc:
        read_movielens(directory)
    _where(exc, directory / "ratings.dat", 1, "Rating")
    with pytest.raises(DataError, match="not a directory"):
        read_movielens(tmp_path / "absent")


# ---------------------------------------------------------------------------------------------- labels


def test_validate_labels_accepts_both_conventions() -> None:
    assert validate_labels(pl.Series(["0", "1", "1.0", " 0 "]), file="f", column="y").tolist() == [0, 1, 1, 0]
    assert validate_labels(pl.Series([-1, 1, 1]), file="f", column="y").tolist() == [0, 1, 1]
    assert validate_labels(pl.Series([True, False]), file="f", column="y").dtype == np.float32


@pytest.mark.parametrize(("values", "bad_index", "quoted"), [
    (["0", "1", "2"], 2, "'2'"), (["1", "yes"], 1, "'yes'"), (["1", None], 1, "None"),
    (["0", "1", "-1"], 2, "'-1'"), (["-1", "1", "0"], 2, "'0'"), ([0.5], 0, "0.5")])
def test_validate_labels_bad_value_names_file_row_column(values: list, bad_index: int, quoted: str) -> None:
    with pytest.raises(DataError) as exc:
        validate_labels(pl.Series(values), file="data/train.csv", column="click", first_row=2)
    message = str(exc.value)
    assert message.startswith(f"data/train.csv, row {2 + bad_index}, column 'click': ")
    assert quoted in message


def test_module_does_not_import_torch() -> None:
    assert "torch" not in readers.__dict__
    source = Path(readers.__file__).read_text()
    assert "import torch" not in source
