"""A standing corpus of what real files contain, through ``adactr prepare`` and ``adactr predict``.

Each case is the bytes of one file (generated here, never committed) and an outcome: either accepted,
with the decoded result checked (most often: the prepared directory equals, byte for byte, the one
from the plain UTF-8/LF file holding the same values), or refused with the exact one-line message that
names the file, the row (the line an editor shows) and the column, leaving no output behind.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from adactr.cli import main

# label, a categorical field and a numerical one (--numerical price); one price is missing
CLEAN = "label,user,price\n1,u1,1.5\n0,u2,2.5\n1,u1,\n0,u3,4.5\n"
ICONV = "convert the file to UTF-8 first, e.g. iconv -f latin1 -t utf-8"
NUL = "a NUL byte (\\x00) in the value: is this a binary, UTF-16 or damaged file?"


def _bytes(text: str, *, sep: str = ",", nl: str = "\n", encoding: str = "utf-8") -> bytes:
    return text.replace(",", sep).replace("\n", nl).encode(encoding)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(err: str, *, own_names: bytes = b"") -> str:
    """The CLI's stderr for a refused file: exactly one line, no internal names (unless the file itself
    has a column so named: ``own_names``), no traceback."""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith("error: ")
    assert ("__row" not in err or b"__row" in own_names) and "Traceback" not in err
    return err[len("error: "):-1]


def _prepare(path: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    """The file as train, valid and test at once: every split holds every row, fitted and encoded."""
    code, _, err = _run(["prepare", "--train", str(path), "--valid", str(path), "--test", str(path), "--out",
                         str(out), "--numerical", "price", "--quiet", *extra], capsys)
    return code, err


def _same_dirs(a: Path, b: Path) -> None:
    """Every file of two prepared directories is byte-identical (meta.json names the sources and times)."""
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "meta.json")
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file() and p.name != "meta.json")
    assert len(files) > 5
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


def _vocab(out: Path, name: str) -> list:
    import json

    return json.loads((out / "vocab" / f"{name}.json").read_text())


def _arrays(out: Path) -> dict[str, np.ndarray]:
    return {f"{s}/{p.stem}": np.load(p) for s in ("train", "valid", "test") for p in sorted((out / s).glob("*.npy"))}


# ------------------------------------------------------------------------------------------- prepare


@dataclass(frozen=True)
class Case:
    id: str
    name: str  # file name: the suffix picks the separator and gzip
    data: bytes
    same_as: bytes | None = None  # accepted: prepares exactly like this plain file
    check: Callable[[Path], None] | None = None  # accepted: a check of the prepared directory
    error: str | None = None  # refused: the message after "error: ", {f} standing for the file
    extra: tuple[str, ...] = ()
    as_is: bool = False  # write the bytes as they are (else a .gz name is gzipped here)


def _vocab_is(field: str, values: list[str]) -> Callable[[Path], None]:
    def check(out: Path) -> None:
        assert sorted(_vocab(out, field)) == sorted(values)

    return check


def _check_quoted(out: Path) -> None:
    assert sorted(_vocab(out, "user")) == sorted(["u,1", 'u"2"', "u\n3", "u\r\n4"])


def _check_long(out: Path) -> None:  # a row over two of pyarrow's 1 MiB blocks
    assert sorted(len(v) for v in _vocab(out, "user")) == [2, 2, 3_000_000]


def _check_slash(out: Path) -> None:
    assert sorted(p.name for p in (out / "vocab").iterdir()) == ["user%2Fid.json"]
    from adactr.data.prepare import load_vocabs

    assert sorted(load_vocabs(out)["user/id"]) == ["u1", "u2", "u3"]


def _check_nonfinite(out: Path) -> None:
    for key, a in _arrays(out).items():
        assert np.isfinite(a).all(), key


PREPARE_CASES = [
    # --- encodings and byte-order marks: accepted only as UTF-8
    Case("bom-csv", "t.csv", b"\xef\xbb\xbf" + _bytes(CLEAN), same_as=_bytes(CLEAN)),
    Case("bom-csv-gz", "t.csv.gz", b"\xef\xbb\xbf" + _bytes(CLEAN), same_as=_bytes(CLEAN)),
    Case("bom-tsv", "t.tsv", b"\xef\xbb\xbf" + _bytes(CLEAN, sep="\t"), same_as=_bytes(CLEAN)),
    Case("bom-tsv-gz", "t.tsv.gz", b"\xef\xbb\xbf" + _bytes(CLEAN, sep="\t"), same_as=_bytes(CLEAN)),
    Case("bom-quoted-header", "t.csv", b'\xef\xbb\xbf"label","user","price"\n' + _bytes(CLEAN).split(b"\n", 1)[1],
         same_as=_bytes(CLEAN)),
    Case("latin1-value", "t.csv", _bytes("label,user,price\n1,u1,1.5\n0,café,2.5\n", encoding="latin-1"),
         error=f"{{f}}, row 3, column 'user': not UTF-8 text (byte 0xe9): {ICONV}"),
    Case("latin1-value-gz-crlf", "t.csv.gz",
         _bytes("label,user,price\n1,u1,1.5\n\n0,u2,2.5\n1,Zoë,3\n", nl="\r\n", encoding="latin-1"),
         error=f"{{f}}, row 5, column 'user': not UTF-8 text (byte 0xeb): {ICONV}"),
    Case("latin1-header", "t.csv", _bytes("label,user,prix_€\n1,u1,1.5\n", encoding="cp1252"),
         error=f"{{f}}, row 1: not UTF-8 text (byte 0x80): {ICONV}"),
    Case("utf16", "t.csv", _bytes(CLEAN, encoding="utf-16"),  # Excel's "Unicode Text": BOM FF FE
         error="{f}, row 1: UTF-16 text (Excel's 'Unicode Text'): save it as 'CSV UTF-8', or convert it, e.g. "
               "iconv -f utf-16 -t utf-8"),
    Case("utf16-no-bom", "t.csv", _bytes(CLEAN, encoding="utf-16-le"),
         error="{f}, row 1: the header's field 1 has a NUL byte in its name (a UTF-16 or binary file?): every "
               "column needs a name"),
    Case("utf8-multibyte", "t.csv", _bytes(CLEAN.replace("u2", "Zoë 東京")),
         check=_vocab_is("user", ["u1", "u3", "Zoë 東京"])),
    # --- line ends and blank lines: accepted, the same dataset
    Case("crlf", "t.csv", _bytes(CLEAN, nl="\r\n"), same_as=_bytes(CLEAN)),
    Case("crlf-tsv-gz", "t.tsv.gz", _bytes(CLEAN, sep="\t", nl="\r\n"), same_as=_bytes(CLEAN)),
    Case("cr-only", "t.csv", _bytes(CLEAN, nl="\r"), same_as=_bytes(CLEAN)),
    Case("cr-only-tsv", "t.tsv", _bytes(CLEAN, sep="\t", nl="\r"), same_as=_bytes(CLEAN)),
    Case("no-final-newline", "t.csv", _bytes(CLEAN).rstrip(b"\n"), same_as=_bytes(CLEAN)),
    Case("blank-lines", "t.csv", _bytes(CLEAN.replace("\n0,u2", "\n\n\n0,u2") + "\n\n"), same_as=_bytes(CLEAN)),
    Case("blank-lines-crlf", "t.csv", _bytes("\n" + CLEAN.replace("\n1,u1,\n", "\n\n1,u1,\n") + "\n", nl="\r\n"),
         same_as=_bytes(CLEAN)),
    Case("only-blank-lines", "t.csv", b"\n\r\n\n", error="{f}: empty file: no rows"),
    # --- quoting
    Case("quoted-everything", "t.csv", _bytes('"label","user","price"\n"1","u1","1.5"\n"0","u2","2.5"\n'
                                              '"1","u1",""\n"0","u3","4.5"\n'), same_as=_bytes(CLEAN)),
    Case("quoted-separators-newlines", "t.csv",
         _bytes('label,user,price\n1,"u,1",1\n0,"u""2""",2\n1,"u\n3",3\n') + b'0,"u\r\n4",4\r\n',
         check=_check_quoted),
    Case("tsv-quotes-are-data", "t.tsv", _bytes('label\tuser\tprice\n1\t"u1\t1\n0\tu2"\t2\n'),
         check=_vocab_is("user", ['"u1', 'u2"'])),
    # --- sizes
    Case("three-mb-cell", "t.csv", _bytes("label,user,price\n1,u1,1\n0," + "x" * 3_000_000 + ",2\n1,u2,3\n"),
         check=_check_long),
    Case("three-mb-cell-tsv", "t.tsv",
         _bytes("label\tuser\tprice\n1\tu1\t1\n0\t" + "x" * 3_000_000 + "\t2\n1\tu2\t3\n"), check=_check_long),
    Case("three-mb-quoted-cell-gz", "t.csv.gz",
         _bytes('label,user,price\n1,u1,1\n0,"' + "x" * 2_999_999 + ',",2\n1,u2,3\n'), check=_check_long),
    Case("empty-file", "t.csv", b"", error="{f}: empty file: no rows"),
    Case("empty-file-gz", "t.csv.gz", b"", error="{f}: empty file: no rows"),
    Case("header-only", "t.csv", b"label,user,price\n", error="{f}: no data rows"),
    Case("header-only-bom-crlf", "t.csv", b"\xef\xbb\xbflabel,user,price\r\n\r\n", error="{f}: no data rows"),
    # --- NUL bytes
    Case("nul-in-value", "t.csv", b"label,user,price\n1,u1,1\n0,u\x002,2\n",
         error=f"{{f}}, row 3, column 'user': {NUL}"),
    Case("nul-in-value-after-blank-line", "t.tsv", b"label\tuser\tprice\n\n1\tu1\t1\n0\tu2\t2\x00\n",
         error=f"{{f}}, row 4, column 'price': {NUL}"),
    Case("nul-padding-after-a-crash", "t.csv", _bytes(CLEAN) + b"\x00" * 64,
         error=f"{{f}}, row 6, column 'label': {NUL}"),
    # --- header
    Case("duplicate-column", "t.csv", b"label,user,user\n1,a,b\n", error="{f}, row 1, column 'user': duplicate "
                                                                          "column name 'user'"),
    Case("duplicate-after-strip", "t.csv", b"label,user, user \n1,a,b\n", error="{f}, row 1, column 'user': "
                                                                                 "duplicate column name 'user'"),
    Case("empty-column-name", "t.csv", b",label,user,price\n0,1,u1,1\n",  # pandas to_csv() with its index
         error="{f}, row 1: the header's field 1 has no name: every column needs a name"),
    Case("trailing-separator-in-header", "t.csv", b"label,user,price,\n1,u1,1,\n",
         error="{f}, row 1: the header's field 4 has no name: every column needs a name"),
    Case("header-spaces-stripped", "t.csv", _bytes(CLEAN.replace("label,user,price", " label , user,price ")),
         same_as=_bytes(CLEAN)),
    Case("no-label-column-with-bom", "t.csv", b"\xef\xbb\xbfclick,user,price\n1,u1,1\n",
         error="{f}: column 'label' is missing (columns are: click, user, price)"),
    Case("semicolon-separated", "t.csv", _bytes(CLEAN, sep=";"),  # Excel's "CSV" in many locales
         error="{f}: column 'label' is missing (columns are: label;user;price): is the file ';'-separated? .csv "
               "files are read as comma-separated, .tsv/.txt as tab-separated"),
    Case("reserved-column-name", "t.csv", b"label,__row,price\n1,u1,1\n",
         error="{f}, column '__row': the column name '__row' is reserved: rename that column"),
    Case("column-name-with-slash", "t.csv", _bytes(CLEAN.replace("user", "user/id")),
         check=_check_slash),
    # --- ragged rows (the row is the line an editor shows, also after blank lines and quoted newlines)
    Case("too-many-fields", "t.csv", b"label,user,price\n1,u1,1\n0,u2,2,x\n",
         error="{f}, row 3: expected 3 columns, found 4"),
    Case("too-few-fields", "t.csv", b"label,user,price\n1,u1,1\n0,u2\n",
         error="{f}, row 3, column 'price': expected 3 columns, found 2: the row ends before this column"),
    Case("too-few-after-quoted-newline", "t.csv.gz", b'label,user,price\n1,"u\n1",1\n\n0,u2\n',
         error="{f}, row 5, column 'price': expected 3 columns, found 2: the row ends before this column"),
    Case("whitespace-only-line", "t.csv", b"label,user,price\n1,u1,1\n  \n0,u2,2\n",
         error="{f}, row 3, column 'user': expected 3 columns, found 1: the row ends before this column"),
    Case("unterminated-quote", "t.csv", b'label,user,price\n1,u1,1\n0,"u2,2\n1,u3,3\n',
         error="{f}, row 3, column 'price': expected 3 columns, found 2: the row ends before this column"),
    # --- labels
    Case("label-yes", "t.csv", b"label,user,price\n1,u1,1\nyes,u2,2\n",
         error="{f}, row 3, column 'label': label 'yes' is not one of 0/1 or -1/1"),
    Case("label-2-after-blank-lines", "t.csv", b"label,user,price\n1,u1,1\n\n\n2,u2,2\n",
         error="{f}, row 5, column 'label': label '2' is not one of 0/1 or -1/1"),
    Case("label-minus-one-among-zeros", "t.csv", b"label,user,price\n1,u1,1\n0,u2,2\n-1,u3,3\n",
         error="{f}, row 4, column 'label': label '-1' mixes the 0/1 and -1/1 conventions"),
    Case("label-empty", "t.csv", b"label,user,price\n1,u1,1\n,u2,2\n",
         error="{f}, row 3, column 'label': label is empty"),
    Case("label-minus-one-plus-one", "t.csv", _bytes(CLEAN.replace("\n0,", "\n-1,").replace("\n1,", "\n+1,")),
         same_as=_bytes(CLEAN)),
    Case("label-as-float-with-spaces", "t.csv", _bytes(CLEAN.replace("\n0,", "\n 0.0 ,").replace("\n1,", "\n1.0,")),
         same_as=_bytes(CLEAN)),
    # --- numbers
    Case("text-in-numerical", "t.csv", b"label,user,price\n1,u1,1\n0,u2,cheap\n",
         error="{f}, row 3, column 'price': 'cheap' is not a number (the column is numerical)"),
    Case("text-in-numerical-after-quoted-newline", "t.csv", b'label,user,price\n1,"u\n1",1\n0,u2,1\xc2\xa0000\n',
         error="{f}, row 4, column 'price': '1\\xa0000' is not a number (the column is numerical)"),
    Case("comma-decimal", "t.tsv", b"label\tuser\tprice\n1\tu1\t1,5\n",
         error="{f}, row 2, column 'price': '1,5' is not a number (the column is numerical)"),
    Case("inf-nan-are-missing", "t.csv", _bytes(CLEAN.replace("0,u2,2.5", "0,u2,inf").replace("1,u1,\n", "1,u1,nan\n")),
         same_as=_bytes(CLEAN.replace("0,u2,2.5", "0,u2,")), check=_check_nonfinite),
    Case("minus-inf-1e400-are-missing", "t.csv",
         _bytes(CLEAN.replace("0,u2,2.5", "0,u2,-inf").replace("1,u1,\n", "1,u1,1e400\n")),
         same_as=_bytes(CLEAN.replace("0,u2,2.5", "0,u2,")), check=_check_nonfinite),
    Case("numbers-with-spaces", "t.csv", _bytes(CLEAN.replace("1.5", " 1.5 ")), same_as=_bytes(CLEAN)),
    Case("overflowing-numbers", "t.csv", b"label,user,price\n1,u1,1e308\n0,u2,1e308\n",
         error="{f}, row 2, column 'price': '1e308' is too large to standardise (the mean or standard deviation "
               "overflows): rescale the column, or pass --numeric log_bucket"),
    Case("overflowing-numbers-log-bucket", "t.csv", b"label,user,price\n1,u1,1e308\n0,u2,1e308\n",
         extra=("--numeric", "log_bucket"), check=_check_nonfinite),
    # --- gzip
    Case("not-gzip", "t.csv.gz", _bytes(CLEAN), as_is=True, error="{f}: cannot read: Not a gzipped file (b'la')"),
    Case("truncated-gzip", "t.csv.gz", gzip.compress(_bytes(CLEAN * 200))[:-40], as_is=True,
         error="{f}: cannot read: Compressed file ended before the end-of-stream marker was reached"),
]


@pytest.mark.parametrize("case", PREPARE_CASES, ids=[c.id for c in PREPARE_CASES])
def test_prepare_corpus(tmp_path: Path, capsys, case: Case) -> None:
    path = tmp_path / case.name
    if case.as_is:
        path.write_bytes(case.data)
    else:
        _write(path, case.data)
    out = tmp_path / "out"
    code, err = _prepare(path, out, capsys, *case.extra)
    if case.error is not None:
        assert code == 2
        assert _one_line_error(err, own_names=case.data) == case.error.format(f=path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [case.name]  # nothing half-written
        return
    assert code == 0, err
    if case.same_as is not None:
        reference = _write(tmp_path / "reference.csv", case.same_as)
        assert _prepare(reference, tmp_path / "ref", capsys, *case.extra)[0] == 0
        _same_dirs(out, tmp_path / "ref")
    if case.check is not None:
        case.check(out)


def test_prepare_help_states_what_input_is_accepted(capsys) -> None:
    assert main(["prepare", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "text must be UTF-8; a byte-order mark" in text and "iconv -f latin1 -t utf-8" in text
    assert "nan, inf and 1e400 are missing values" in text


def test_an_accepted_case_really_differs_from_a_changed_reference(tmp_path: Path, capsys) -> None:
    """The byte-for-byte comparison can fail: one changed value gives another directory."""
    a = _write(tmp_path / "a.csv", b"\xef\xbb\xbf" + _bytes(CLEAN))
    b = _write(tmp_path / "b.csv", _bytes(CLEAN.replace("u3", "u4")))
    assert _prepare(a, tmp_path / "A", capsys)[0] == 0 and _prepare(b, tmp_path / "B", capsys)[0] == 0
    with pytest.raises(AssertionError):
        _same_dirs(tmp_path / "A", tmp_path / "B")


def test_bom_file_prepares_like_the_plain_one_and_names_its_columns(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "bom.csv", b"\xef\xbb\xbf" + _bytes(CLEAN))
    assert _prepare(path, tmp_path / "out", capsys)[0] == 0
    import json

    schema = json.loads((tmp_path / "out" / "schema.json").read_text())
    assert schema["label"] == "label" and schema["columns"] == ["label", "user", "price"]
    a = _arrays(tmp_path / "out")
    for split in ("train", "valid", "test"):
        assert a[f"{split}/label"].tolist() == [1, 0, 1, 0]
        assert a[f"{split}/cat"][:, 0].tolist() == [2, 3, 2, 4]  # user: u1 (twice), then u2, u3


def test_an_error_leaves_an_existing_dataset_alone(tmp_path: Path, capsys) -> None:
    good = _write(tmp_path / "good.csv", _bytes(CLEAN))
    out = tmp_path / "out"
    assert _prepare(good, out, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = _write(tmp_path / "bad.csv", b"label,user,price\n1,u1,1\n0,u2,cheap\n")
    code, err = _prepare(bad, out, capsys, "--overwrite")
    assert code == 2 and "'cheap' is not a number" in _one_line_error(err)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "good.csv", "out"]


def test_overwrite_keeps_the_old_dataset_until_the_new_one_is_in_place(tmp_path: Path, capsys, monkeypatch) -> None:
    good = _write(tmp_path / "good.csv", _bytes(CLEAN))
    out = tmp_path / "out"
    assert _prepare(good, out, capsys)[0] == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real_rename = Path.rename

    def rename(self, target):  # the last step fails: moving the finished dataset into place
        if ".tmp-" in self.name:
            raise OSError(28, "No space left on device")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    code, err = _prepare(_write(tmp_path / "other.csv", _bytes(CLEAN.replace("u3", "u4"))), out, capsys, "--overwrite")
    assert code == 2 and _one_line_error(err) == f"{out}: cannot write: No space left on device"
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv", "other.csv", "out"]


def test_output_that_is_a_file(tmp_path: Path, capsys) -> None:
    good = _write(tmp_path / "good.csv", _bytes(CLEAN))
    (tmp_path / "file").write_text("x")
    code, err = _prepare(good, tmp_path / "file", capsys)
    assert code == 2 and _one_line_error(err) == f"{tmp_path / 'file'}: the output exists and is not a directory"
    assert (tmp_path / "file").read_text() == "x"


def test_no_permission_to_make_the_output(tmp_path: Path, capsys, monkeypatch) -> None:
    good = _write(tmp_path / "good.csv", _bytes(CLEAN))

    def denied(self, *args, **kwargs):  # as mkdir in a read-only folder (tests may run as root: simulated)
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    code, err = _prepare(good, tmp_path / "out", capsys)
    assert code == 2 and _one_line_error(err) == f"{tmp_path / 'out'}: cannot write: Permission denied"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]


def test_a_write_error_leaves_no_folder_it_made(tmp_path: Path, capsys, monkeypatch) -> None:
    good = _write(tmp_path / "good.csv", _bytes(CLEAN))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    code, err = _prepare(good, tmp_path / "a" / "b" / "out", capsys)
    out = tmp_path / "a" / "b" / "out"
    assert code == 2 and _one_line_error(err) == f"{out}: cannot write: No space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]  # a/b made for the output, removed


# ---------------------------------------------------------------------- other formats' malformed lines

CRITEO_ROW = "\t".join(["1", "5", "", *["2"] * 11, "68fd1e64", *["a1"] * 24, "9727dd16"])
CRITEO = "\n".join([CRITEO_ROW, CRITEO_ROW.replace("1\t5", "0\t7", 1), CRITEO_ROW]) + "\n"
AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,app_category,"
                "device_id,device_ip,device_model,device_type,device_conn_type,C14,C15,C16,C17,C18,C19,C20,C21")
AVAZU_ROW = "1000,{click},{hour},1005,0," + ",".join(["abc"] * 11) + "," + ",".join(["15704"] * 8)
AVAZU = "\n".join([AVAZU_HEADER, AVAZU_ROW.format(click=0, hour=14102100), AVAZU_ROW.format(click=1, hour=14102101),
                   AVAZU_ROW.format(click=0, hour=14102102)]) + "\n"
LIBSVM = "1 3:1 17:1\n0 5:1 3:1\n1 17:1\n"

FORMAT_CASES = [
    ("criteo-bom-crlf", "criteo", "c.txt", b"\xef\xbb\xbf" + _bytes(CRITEO, nl="\r\n"), _bytes(CRITEO), None),
    ("criteo-blank-lines-gz", "criteo", "c.txt.gz", _bytes(CRITEO.replace("\n", "\n\n")), _bytes(CRITEO), None),
    ("criteo-ragged", "criteo", "c.txt", _bytes(CRITEO + "\n" + CRITEO_ROW.rsplit("\t", 1)[0] + "\n"), None,
     "{f}, row 5, column 'C26': expected 40 columns, found 39: the row ends before this column"),
    ("criteo-text-integer-after-blank", "criteo", "c.txt", _bytes("\n" + CRITEO.replace("1\t5", "1\tfive", 1)),
     None, "{f}, row 2, column 'I1': 'five' is not a number (the column is numerical)"),
    ("criteo-latin1", "criteo", "c.txt", _bytes(CRITEO.replace("68fd1e64", "caf\xe9", 1), encoding="latin-1"),
     None, f"{{f}}, row 1, column 'C1': not UTF-8 text (byte 0xe9): {ICONV}"),
    ("avazu-bom-cr", "avazu", "a.csv", b"\xef\xbb\xbf" + _bytes(AVAZU, nl="\r"), _bytes(AVAZU), None),
    ("avazu-bad-hour-after-blank", "avazu", "a.csv", _bytes(AVAZU.replace("14102101", "1410210x").replace(
        "\n1000,1", "\n\n1000,1")), None,
     "{f}, row 4, column 'hour': malformed hour '1410210x': expected YYMMDDHH (e.g. 14102100)"),
    ("avazu-blank-lines-before-header", "avazu", "a.csv", _bytes("\n\n" + AVAZU), _bytes(AVAZU), None),
    ("avazu-headerless-bad-hour", "avazu", "a.csv", _bytes(AVAZU.split("\n", 1)[1].replace("14102102", "14102199")),
     None, "{f}, row 3, column 'hour': malformed hour '14102199': expected YYMMDDHH (e.g. 14102100)"),
    ("avazu-bad-click-bom", "avazu", "a.csv", b"\xef\xbb\xbf" + _bytes(AVAZU.replace("1000,1,", "1000,yes,")),
     None, "{f}, row 3, column 'label': label 'yes' is not one of 0/1 or -1/1"),
    ("libsvm-bom-cr", "libfm", "s.svm", b"\xef\xbb\xbf" + _bytes(LIBSVM, nl="\r"), _bytes(LIBSVM), None),
    ("libsvm-crlf-blank-lines", "libfm", "s.svm", _bytes("\n" + LIBSVM.replace("\n0", "\n\n0"), nl="\r\n"),
     _bytes(LIBSVM), None),
    ("libsvm-bad-label-after-blank", "libfm", "s.svm", _bytes(LIBSVM.replace("\n0 ", "\n\nyes ")), None,
     "{f}, row 3, column 'label': label 'yes' is not one of 0/1 or -1/1"),
    ("libsvm-bad-token-cr", "libfm", "s.svm", _bytes(LIBSVM.replace("5:1", "5:x"), nl="\r"), None,
     "{f}, row 2: malformed feature '5:x': expected idx:val with a number as val"),
    ("libsvm-latin1", "libfm", "s.svm", _bytes(LIBSVM.replace("17:1\n", "17:1 caf\xe9\n", 1), encoding="latin-1"),
     None, f"{{f}}, row 1: not UTF-8 text (byte 0xe9): {ICONV}"),
    ("libsvm-bom-latin1-line-2", "libfm", "s.svm", b"\xef\xbb\xbf" + _bytes(LIBSVM.replace("5:1", "5:1 \xe9"),
                                                                          encoding="latin-1"), None,
     f"{{f}}, row 2: not UTF-8 text (byte 0xe9): {ICONV}"),
    ("libsvm-nul", "libfm", "s.svm", _bytes(LIBSVM.replace("5:1", "5:1\x00")), None,
     "{f}, row 2: malformed feature '5:1\\x00': expected idx:val with a number as val"),
]


@pytest.mark.parametrize(("fmt", "name", "data", "same_as", "error"), [c[1:] for c in FORMAT_CASES],
                         ids=[c[0] for c in FORMAT_CASES])
def test_other_formats_corpus(tmp_path: Path, capsys, fmt: str, name: str, data: bytes, same_as: bytes | None,
                              error: str | None) -> None:
    path = _write(tmp_path / name, data)
    argv = ["prepare", "--format", fmt, "--train", str(path), "--out", str(tmp_path / "out"), "--quiet",
            "--min-count", "1"]
    code, _, err = _run(argv, capsys)
    if error is not None:
        assert code == 2 and _one_line_error(err) == error.format(f=path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]
        return
    assert code == 0, err
    reference = _write(tmp_path / ("ref" + "".join(Path(name).suffixes[:1])), same_as)  # type: ignore[arg-type]
    argv[argv.index(str(path))] = str(reference)
    argv[argv.index(str(tmp_path / "out"))] = str(tmp_path / "ref_out")
    assert _run(argv, capsys)[0] == 0
    _same_dirs(tmp_path / "out", tmp_path / "ref_out")


# ------------------------------------------------------------------------- iPinYou as make-ipinyou-data releases it

# train.yzx.txt rows: click, paying price, then idx:1 (0 = 'truncate' on every row; 4, 5, 7 are user tags)
IPINYOU = "0 277 0:1 2:1 4:1 5:1\n1 80 0:1 3:1 7:1\n0 5 0:1 2:1 4:1\n1 300 0:1 3:1\n"
# featindex.txt: 'truncate' first, bytes after index 3 (ESC) and index 6 (' junk'), a line without an index
FEATINDEX = b"truncate\t0\n1:other\t1\n1:3\t2\n1:4\t3\x1b\n26:10006\t4\n26:13042\t5\n30:x\t6 junk\n30:lost\n26:1\t7\n"


def _schema(out: Path) -> dict:
    import json

    return json.loads((out / "schema.json").read_text())


def test_ipinyou_without_field_map_prepares_in_one_command(tmp_path: Path, capsys) -> None:
    """The old reader ended here in a polars traceback ('cannot cast List type ... to String')."""
    path = _write(tmp_path / "train.yzx.txt", _bytes(IPINYOU))
    code, out, err = _run(["prepare", "--format", "libfm", "--train", str(path), "--test", str(path), "--out",
                           str(tmp_path / "out"), "--quiet"], capsys)
    assert (code, err) == (0, ""), err
    schema = _schema(tmp_path / "out")
    # no map: one multi-valued field of every index; the paying price (known after the auction) is no feature
    assert [(f["name"], f["kind"]) for f in schema["fields"]] == [("features", "sequence")]
    assert schema["ignore"] == ["feature_values", "extra_1"]
    assert sorted(_vocab(tmp_path / "out", "features")) == ["0", "2", "3", "4", "5", "7"]


def test_ipinyou_released_field_map_is_taken_as_it_is_with_one_warning(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path / "train.yzx.txt", _bytes(IPINYOU))
    fmap = _write(tmp_path / "featindex.txt", FEATINDEX)
    out = tmp_path / "out"
    code, _, err = _run(["prepare", "--format", "libfm", "--train", str(path), "--valid", str(path), "--test",
                         str(path), "--field-map", str(fmap), "--out", str(out), "--quiet"], capsys)
    assert code == 0, err
    note = (f"{fmap}: took the field map as it is: 1 line without field:value (line 1 'truncate\\t0'): its "
            "index is in no field, dropped from the rows; 2 lines with bytes after the index (first: line 4 "
            "'1:4\\t3\\x1b'): kept the index; 1 line without an index (line 8 '30:lost'): skipped")
    assert err == f"warning: {note}\n"  # one line, once for the three files that read the map
    import json

    assert json.loads((out / "meta.json").read_text())["warnings"] == [note]
    schema = _schema(out)
    # the user tags (several indices in a row) are multi-valued; truncate (index 0) is in no field; f30 is a
    # field of the map that no row uses (index 6 only): left out
    assert [(f["name"], f["kind"]) for f in schema["fields"]] == [("f1", "categorical"), ("f26", "sequence")]
    assert schema["ignore"] == ["feature_values", "extra_1", "f30"]
    assert sorted(_vocab(out, "f1")) == ["2", "3"] and sorted(_vocab(out, "f26")) == ["4", "5", "7"]
    assert _arrays(out)["test/seq_0"].tolist() == [[2, 3], [4, 0], [2, 0], [0, 0]]  # 4 twice first, then 5, 7


def test_a_run_on_ipinyou_predicts_raw_rows_with_its_field_map(tmp_path: Path, capsys) -> None:
    """The map travels with the prepared data into the run: predict reads raw libFM rows as prepare did."""
    path = _write(tmp_path / "train.yzx.txt", _bytes(IPINYOU))
    fmap = _write(tmp_path / "featindex.txt", FEATINDEX)
    out = tmp_path / "out"
    assert _run(["prepare", "--format", "libfm", "--train", str(path), "--valid", str(path), "--test", str(path),
                 "--field-map", str(fmap), "--out", str(out), "--quiet"], capsys)[0] == 0
    run = tmp_path / "run"
    code, _, err = _run(["train", "--data", str(out), "--model", "lr", "--out", str(run), "--quiet",
                         "--set", "train.epochs=1"], capsys)
    assert code == 0, err
    fmap.unlink()  # the run needs no file outside it
    code, _, err = _run(["predict", "--run", str(run), "--input", str(path), "--output", str(tmp_path / "p.csv"),
                         "--quiet"],
                        capsys)
    assert (code, err) == (0, ""), err
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 1 + 4


@pytest.mark.parametrize(("fmap", "data", "error"), [
    (b"1:a\t1\n1:b\t2\n1:c\t1 x\n", "0 1:1\n", "{m}, row 3: index 1 appears twice"),
    (b"1:a\t1\n1:b\n", "0 1:1\n\n1 2:1\n", "{f}, row 3: feature index 2 is not in the field map {m}"),
    (b"", "0 1:1\n", "{m}: empty field map"),
], ids=["duplicate-index", "index-on-a-skipped-line", "empty-map"])
def test_field_map_faults_that_remain_errors(tmp_path: Path, capsys, fmap: bytes, data: str, error: str) -> None:
    m = _write(tmp_path / "featindex.txt", fmap)
    path = _write(tmp_path / "train.txt", _bytes(data))
    code, _, err = _run(["prepare", "--format", "libfm", "--train", str(path), "--field-map", str(m), "--out",
                         str(tmp_path / "out"), "--quiet"], capsys)
    assert code == 2 and _one_line_error(err) == error.format(f=path, m=m)  # the error alone, no warning before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["featindex.txt", "train.txt"]


# ------------------------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def world_run(tmp_path_factory, world_data) -> Path:
    run = tmp_path_factory.mktemp("bad_input") / "run"
    assert main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(run), "--quiet",
                 "--set", "model.hidden=[16]", "--set", "train.epochs=1", "--set", "train.batch_size=512"]) == 0
    return run


@pytest.fixture(scope="module")
def world_text(world_csv) -> str:
    """Header + the first 12 rows of the click world's test file (label, ..., price, tags)."""
    lines = world_csv["test"].read_text().splitlines()
    assert lines[0] == "label,user_id,item_id,item_category,user_segment,device,hour,domain,price,tags"
    return "\n".join(lines[:13]) + "\n"


def _cell(text: str, line: int, column: int, value: str) -> str:
    """``text`` with the cell at (1-based line, 0-based column) replaced."""
    lines = text.split("\n")
    cells = lines[line - 1].split(",")
    cells[column] = value
    lines[line - 1] = ",".join(cells)
    return "\n".join(lines)


def _label_last(text: str) -> str:
    """The same rows with the label column moved to the end (predict finds columns by name)."""
    return "\n".join(",".join([*line.split(",")[1:], line.split(",")[0]]) if line else line
                     for line in text.split("\n"))


PRICE, USER, DEVICE, LABEL = 8, 1, 5, 0

# (id, file name, bytes from the clean text, same output as (text -> bytes) or None, error or None)
PREDICT_CASES: list[tuple[str, str, Callable[[str], bytes], Callable[[str], bytes] | None, str | None]] = [
    ("bom", "p.csv", lambda t: b"\xef\xbb\xbf" + _bytes(t), _bytes, None),
    ("bom-gz", "p.csv.gz", lambda t: b"\xef\xbb\xbf" + _bytes(t), _bytes, None),
    ("bom-before-a-feature", "p.csv", lambda t: b"\xef\xbb\xbf" + _bytes(_label_last(t)), _bytes, None),
    ("crlf", "p.csv", lambda t: _bytes(t, nl="\r\n"), _bytes, None),
    ("cr-only", "p.csv", lambda t: _bytes(t, nl="\r"), _bytes, None),
    ("blank-lines", "p.csv", lambda t: _bytes(t.replace("\n", "\n\n", 3) + "\n\n"), _bytes, None),
    ("inf-nan-price", "p.csv", lambda t: _bytes(_cell(_cell(t, 3, PRICE, "inf"), 4, PRICE, "nan")),
     lambda t: _bytes(_cell(_cell(t, 3, PRICE, ""), 4, PRICE, "")), None),
    ("latin1", "p.csv", lambda t: _bytes(_cell(t, 5, DEVICE, "tél"), encoding="latin-1"), None,
     f"{{f}}, row 5, column 'device': not UTF-8 text (byte 0xe9): {ICONV}"),
    ("nul", "p.csv", lambda t: _bytes(_cell(t, 4, DEVICE, "w\x00eb")), None, f"{{f}}, row 4, column 'device': {NUL}"),
    ("ragged", "p.csv", lambda t: _bytes(_cell(t, 6, PRICE, "1,2")), None, "{f}, row 6: expected 10 columns, found 11"),
    ("text-price-after-blank", "p.csv", lambda t: _bytes(_cell(t, 7, PRICE, "cheap").replace("\n", "\n\n", 1)), None,
     "{f}, row 8, column 'price': 'cheap' is not a number (the column is numerical)"),
    ("bad-label", "p.csv", lambda t: _bytes(_cell(t, 3, LABEL, "yes")), None,
     "{f}, row 3, column 'label': label 'yes' is not one of 0/1 or -1/1"),
    ("duplicate-column", "p.csv", lambda t: _bytes(t.replace("device", "price", 1)), None,
     "{f}, row 1, column 'price': duplicate column name 'price'"),
    ("label-column-left-empty", "p.csv", lambda t: _bytes("\n".join(
        _cell(line, 1, LABEL, "") if i else line for i, line in enumerate(t.split("\n")))), _bytes, None),
    ("label-column-partly-empty", "p.csv", lambda t: _bytes(_cell(t, 4, LABEL, "")), None,
     "{f}, row 4, column 'label': label is empty"),
    ("header-only", "p.csv", lambda t: _bytes(t.split("\n")[0] + "\n"), None, "{f}: no data rows"),
    ("empty", "p.csv", lambda t: b"", None, "{f}: empty file: no rows"),
]


@pytest.mark.parametrize(("name", "make", "same_as", "error"), [c[1:] for c in PREDICT_CASES],
                         ids=[c[0] for c in PREDICT_CASES])
def test_predict_corpus(tmp_path: Path, capsys, world_run: Path, world_text: str, name: str,
                        make: Callable[[str], bytes], same_as: Callable[[str], bytes] | None,
                        error: str | None) -> None:
    path = _write(tmp_path / name, make(world_text))
    out = tmp_path / "pred.csv"
    code, _, err = _run(["predict", "--run", str(world_run), "--input", str(path), "--output", str(out),
                         "--quiet"], capsys)
    if error is not None:
        assert code == 2 and _one_line_error(err) == error.format(f=path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no output, no temporary file
        return
    assert code == 0, err
    reference = _write(tmp_path / "ref.csv", same_as(world_text))  # type: ignore[misc]
    assert _run(["predict", "--run", str(world_run), "--input", str(reference), "--output",
                 str(tmp_path / "ref_pred.csv"), "--quiet"], capsys)[0] == 0
    assert out.read_bytes() == (tmp_path / "ref_pred.csv").read_bytes()
    assert out.read_text().count("\n") == 13  # header + 12 probabilities


def test_predict_output_in_the_way(tmp_path: Path, capsys, world_run: Path, world_text: str) -> None:
    path = _write(tmp_path / "p.csv", _bytes(world_text))
    (tmp_path / "out").mkdir()
    code, _, err = _run(["predict", "--run", str(world_run), "--input", str(path), "--output", str(tmp_path / "out"),
                         "--quiet"], capsys)
    assert code == 2 and _one_line_error(err) == f"{tmp_path / 'out'}: cannot write: Is a directory"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "p.csv"] and not any((tmp_path / "out").iterdir())
