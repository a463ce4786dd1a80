"""Encoder: vocabularies fitted on train only, OOV/missing slots, numerical transforms, sequences."""

import math

import numpy as np
import polars as pl
import pytest

from adactr.data.encode import ROW, EncodeOptions, Roles, check_labels, encode, fit
from adactr.data.schema import MISSING, OOV, NumericTransform, Schema
from adactr.errors import DataError


def frame(**cols):
    return pl.DataFrame(cols).with_row_index(ROW, offset=2)


TRAIN = frame(label=["1", "0", "0", "1", "0"], city=["a", "b", None, "a", "c"], price=["1", "", "3", "5", "1"],
              tags=["x|y", "y", None, "z|x|y", "y"], dom=["p", "q", "p", "p", "q"])


def fitted(**kw):
    df = check_labels(TRAIN, "label", file="train.csv")
    roles = Roles(numerical=("price",), sequence=("tags",), domain="dom")
    return fit(df, roles, EncodeOptions(**kw), file="train.csv"), df


def test_vocab_by_frequency_and_reserved_slots():
    (schema, vocabs), df = fitted()
    assert vocabs["city"] == ["a", "b", "c"]  # a twice, then b, c by value
    arrays = encode(df, schema, vocabs, file="train.csv")
    assert arrays["cat"][:, 0].tolist() == [2, 3, MISSING, 2, 4]  # city column
    assert arrays["label"].tolist() == [1, 0, 0, 1, 0]


def test_labels_in_either_convention_but_not_both():
    assert check_labels(frame(label=["-1", "1", "+1", " -1 "]), "label", file="f")["label"].to_list() == [0, 1, 1, 0]
    assert check_labels(frame(label=["1.0", "0", "0.0"]), "label", file="f")["label"].to_list() == [1, 0, 0]
    # a -1 among 0s is ambiguous (a typo, or another convention?): named where the mix shows
    with pytest.raises(DataError, match=r"^f.csv, row 4, column 'label': label '-1' mixes the 0/1 and -1/1 conv"):
        check_labels(frame(label=["1", "0", "-1", "0"]), "label", file="f.csv")
    with pytest.raises(DataError, match=r"^f.csv, row 3, column 'label': label is empty$"):
        check_labels(frame(label=["1", None]), "label", file="f.csv")


def test_unseen_values_go_to_oov_not_an_error():
    (schema, vocabs), _ = fitted()
    new = frame(label=["1"], city=["never-seen"], price=["2"], tags=["w|x"], dom=["zz"])
    arrays = encode(new, schema, vocabs, file="new.csv")
    assert arrays["cat"][0, 0] == OOV
    assert arrays["seq_0"][0, :2].tolist() == [OOV, 2 + vocabs["tags"].index("x")]
    assert arrays["domain"][0] == OOV


def test_min_count_sends_rare_values_to_oov():
    (schema, vocabs), df = fitted(min_count=2)
    assert vocabs["city"] == ["a"]
    assert encode(df, schema, vocabs, file="t")["cat"][:, 0].tolist() == [2, OOV, MISSING, 2, OOV]


def test_standardised_numerical_uses_train_mean_and_fills_missing_with_mean():
    (schema, vocabs), df = fitted()
    spec = schema.num_fields[0]
    values = np.array([1, 3, 5, 1.0])
    assert spec.mean == pytest.approx(values.mean())
    assert spec.std == pytest.approx(values.std(ddof=1))
    num = encode(df, schema, vocabs, file="t")["num"][:, 0]
    assert num[1] == 0.0  # missing -> the mean, i.e. 0 after standardising
    assert num[0] == pytest.approx((1 - values.mean()) / values.std(ddof=1), rel=1e-6)


def test_log_bucket_is_floor_ln_squared_above_2():
    df = check_labels(frame(label=["1"] * 5, v=["0", "2", "3", "100", None]), "label", file="t")
    schema, vocabs = fit(df, Roles(numerical=("v",)), EncodeOptions(numeric_transform=NumericTransform.LOG_BUCKET),
                         file="t")
    # 3 -> floor(ln(3)^2) = floor(1.206) = 1 ; 100 -> floor(ln(100)^2) = floor(21.2) = 21
    assert math.floor(math.log(100) ** 2) == 21
    # big buckets are offset by 1_000_000 so that bucket 1 and the integer 1 stay apart
    assert sorted(vocabs["v"]) == [0, 2, 1_000_001, 1_000_021]
    cat = encode(df, schema, vocabs, file="t")["cat"][:, 0]
    assert cat[4] == MISSING


# Criteo's integers by the three bucketings in circulation, worked by hand (ln 2 = 0.693, ln 3 = 1.099,
# ln 4 = 1.386, ln 5 = 1.609, ln 9 = 2.197, ln 10 = 2.303, ln 100 = 4.605, ln 101 = 4.615):
#   v        : empty  0      1  2  3        -1  -2  -3  10
#   log_v2   : miss   own    0  1  2        0   1   2   4    floor(ln v^2)  (0: ln 0 = -inf, a bucket of its own)
#   log1p_v2 : miss   0      0  1  2        0   1   2   4    floor(ln(v^2 + 1))
#   log_bucket: miss  0      1  2  big 1    -1  -2  -3  big 5  floor((ln v)^2) for v > 2, else v
BUCKET_VALUES = ["", "0", "1", "2", "3", "-1", "-2", "-3", "10"]
BUCKETS = {
    NumericTransform.LOG_V2: [None, -1_000_000, 0, 1, 2, 0, 1, 2, 4],
    NumericTransform.LOG1P_V2: [None, 0, 0, 1, 2, 0, 1, 2, 4],
    NumericTransform.LOG_BUCKET: [None, 0, 1, 2, 1_000_001, -1, -2, -3, 1_000_005],
}


@pytest.mark.parametrize("transform", list(BUCKETS), ids=lambda t: t.value)
def test_bucket_transforms_by_hand(transform):
    expected = BUCKETS[transform]
    df = check_labels(frame(label=["1"] * len(BUCKET_VALUES), v=BUCKET_VALUES), "label", file="t")
    schema, vocabs = fit(df, Roles(numerical=("v",)), EncodeOptions(numeric_transform=transform), file="t")
    (spec,) = schema.fields
    assert spec.transform is transform and spec.embedded_as_index and schema.cat_fields == (spec,)
    assert sorted(vocabs["v"]) == sorted(set(expected) - {None})
    cat = encode(df, schema, vocabs, file="t")["cat"][:, 0]
    decoded = [None if i == MISSING else vocabs["v"][i - 2] for i in cat.tolist()]
    assert decoded == expected
    # the transform is in schema.json, so a figure can say which one its data had
    assert Schema.from_json(schema.to_json()).fields[0].transform is transform


def test_paper_bucket_keeps_zero_apart_and_large_values_finite():
    df = check_labels(frame(label=["1"] * 5, v=["0", "0.5", "1e200", "-1e200", "1e308"]), "label", file="t")
    schema, vocabs = fit(df, Roles(numerical=("v",)), EncodeOptions(numeric_transform=NumericTransform.LOG_V2),
                         file="t")
    cat = encode(df, schema, vocabs, file="t")["cat"][:, 0]
    tokens = [vocabs["v"][i - 2] for i in cat.tolist()]
    # 0.5: floor(ln 0.25) = floor(-1.386) = -2; 1e200 squared overflows: 2 ln(1e200) = 921.03 -> 921, also for -1e200
    assert tokens == [-1_000_000, -2, 921, 921, 1418]
    for transform in (NumericTransform.LOG1P_V2, NumericTransform.LOG_BUCKET):
        s, v = fit(df, Roles(numerical=("v",)), EncodeOptions(numeric_transform=transform), file="t")
        assert MISSING not in encode(df, s, v, file="t")["cat"][:, 0].tolist()  # no value lost to an overflow


def test_min_count_applies_to_buckets():
    # buckets of log_v2: 1 -> 0 (three times), 3 -> 2 (twice), 10 -> 4 (once)
    df = check_labels(frame(label=["1"] * 6, v=["1", "1", "-1", "3", "3", "10"]), "label", file="t")
    schema, vocabs = fit(df, Roles(numerical=("v",)),
                         EncodeOptions(numeric_transform=NumericTransform.LOG_V2, min_count=2), file="t")
    assert vocabs["v"] == [0, 2] and schema.fields[0].min_count == 2
    assert encode(df, schema, vocabs, file="t")["cat"][:, 0].tolist() == [2, 2, 2, 3, 3, OOV]


def test_sequence_padding_and_truncation():
    (schema, vocabs), df = fitted(max_seq_len=2)
    seq = encode(df, schema, vocabs, file="t")["seq_0"]
    assert seq.shape == (5, 2)
    code = {v: i + 2 for i, v in enumerate(vocabs["tags"])}
    assert seq[0].tolist() == [code["x"], code["y"]]
    assert seq[2].tolist() == [0, 0]  # missing list -> all padding
    assert seq[3].tolist() == [code["z"], code["x"]]  # truncated to max_len


def test_text_in_numerical_column_names_file_row_column():
    (schema, vocabs), _ = fitted()
    bad = frame(label=["1", "0"], city=["a", "b"], price=["2", "cheap"], tags=["x", "y"], dom=["p", "p"])
    with pytest.raises(DataError, match=r"^new.csv, row 3, column 'price': 'cheap' is not a number"):
        encode(bad, schema, vocabs, file="new.csv")


def test_bad_label_names_file_row_column():
    with pytest.raises(DataError, match=r"^f.csv, row 4, column 'label': label '2' is not one of 0/1 or -1/1"):
        check_labels(frame(label=["1", "0", "2"]), "label", file="f.csv")


def test_missing_column_is_named_and_the_list_has_no_internal_names():
    (schema, vocabs), _ = fitted()
    with pytest.raises(DataError) as exc:
        encode(frame(label=["1"], city=["a"], tags=["x"], dom=["p"]), schema, vocabs, file="x.csv")
    assert str(exc.value) == "x.csv: column 'price' is missing (columns are: label, city, tags, dom)"


def test_columns_named_like_internal_ones_are_ordinary_columns():
    df = check_labels(frame(label=["1", "0", "1"], __n=["a", "b", "a"], value=["x", "x", "y"]), "label", file="t")
    schema, vocabs = fit(df, Roles(), EncodeOptions(), file="t")
    assert vocabs == {"__n": ["a", "b"], "value": ["x", "y"]}


def test_non_finite_numbers_are_missing_and_never_reach_the_arrays():
    (schema, vocabs), _ = fitted()
    new = frame(label=["1"] * 5, city=["a"] * 5, price=["inf", "-inf", "1e400", "nan", ""], tags=["x"] * 5,
                dom=["p"] * 5)
    assert encode(new, schema, vocabs, file="n.csv")["num"][:, 0].tolist() == [0.0] * 5  # missing -> the mean


def test_numbers_too_large_to_standardise_are_named():
    df = check_labels(frame(label=["1", "0"], v=["1e308", "1e308"]), "label", file="t.csv")
    # float64 mean of two 1e308 overflows to inf (and std to NaN): every encoded value would be NaN
    with pytest.raises(DataError, match=r"^t.csv, row 2, column 'v': '1e308' is too large to standardise"):
        fit(df, Roles(numerical=("v",)), EncodeOptions(), file="t.csv")
    (schema, vocabs), _ = fitted()  # price: mean 2.5, std 1.91
    huge = frame(label=["1", "0"], city=["a", "a"], price=["1", "1e39"], tags=["x", "x"], dom=["p", "p"])
    with pytest.raises(DataError, match=r"^h.csv, row 3, column 'price': '1e39' is too large: standardised"):
        encode(huge, schema, vocabs, file="h.csv")


def test_schema_json_round_trip(tmp_path):
    (schema, _), _ = fitted()
    schema.save(tmp_path / "schema.json")
    again = Schema.load(tmp_path / "schema.json")
    assert again == schema and again.fingerprint() == schema.fingerprint()
    assert schema.layout().names == ("city", "dom", "price", "tags")


# --- a domain made of several columns (issue 15) ---------------------------------------------------

MULTI = frame(label=["1", "0", "0", "1", "0", "1"], gender=["F", "M", "F", "F", "M", "F"],
              age=[25, 1, 25, 18, 1, 25], city=["a", "b", "a", "c", "b", "a"])


def multi_fitted(**kw):
    df = check_labels(MULTI, "label", file="train.csv")
    return fit(df, Roles(domain=("gender", "age"), **kw), EncodeOptions(), file="train.csv"), df


def test_combined_domain_vocabulary_names_and_ids_by_hand():
    (schema, vocabs), df = multi_fitted()
    # F|25 three times, M|1 twice, F|18 once: most frequent first, as every vocabulary
    assert vocabs["__domain__"] == ["gender=F|age=25", "gender=M|age=1", "gender=F|age=18"]
    assert schema.domain_names == ("<missing>", "<unseen>", "gender=F|age=25", "gender=M|age=1", "gender=F|age=18")
    assert schema.domain == "gender|age" and schema.domain_columns == ("gender", "age")
    assert schema.layout().n_domains == 5
    assert encode(df, schema, vocabs, file="train.csv")["domain"].tolist() == [2, 3, 2, 4, 3, 2]
    # the columns stay ordinary features (as Scenario-Wise-Rec keeps gender/age/occupation); the
    # combination is not a field of its own
    assert [f.name for f in schema.fields] == ["gender", "age", "city"]
    (schema, _), _ = multi_fitted(domain_as_feature=False)
    assert [f.name for f in schema.fields] == ["city"]


def test_combined_domain_unseen_and_missing_go_to_the_reserved_slots():
    (schema, vocabs), _ = multi_fitted()
    new = frame(label=["1", "0", "1", "0"], gender=["M", "F", None, "M"], age=[25, 25, 25, 1], city=["a"] * 4)
    # M|25 exists in no train row although M and 25 each do: the shared domain <unseen> (1); an empty
    # column: <missing> (0)
    assert encode(new, schema, vocabs, file="new.csv")["domain"].tolist() == [1, 2, 0, 3]


def test_min_domain_count_pools_rare_domains_into_unseen():
    df = check_labels(MULTI, "label", file="train.csv")
    schema, vocabs = fit(df, Roles(domain=("gender", "age")), EncodeOptions(min_domain_count=2), file="train.csv")
    assert vocabs["__domain__"] == ["gender=F|age=25", "gender=M|age=1"]
    assert encode(df, schema, vocabs, file="t")["domain"].tolist() == [2, 3, 2, OOV, 3, 2]
    assert schema.extra == {"min_domain_count": "2"}


def test_separators_inside_names_and_values_cannot_make_two_domains_one():
    df = check_labels(frame(label=["1", "0"], a=["x|b=y", "x"], b=["z", "y|b=z"]), "label", file="t")
    schema, vocabs = fit(df, Roles(domain=("a", "b")), EncodeOptions(), file="t")
    assert sorted(vocabs["__domain__"]) == ["a=x%7Cb%3Dy|b=z", "a=x|b=y%7Cb%3Dz"]


def test_combined_domain_schema_round_trip_and_one_column_json_unchanged(tmp_path):
    (schema, _), _ = multi_fitted()
    schema.save(tmp_path / "schema.json")
    assert Schema.load(tmp_path / "schema.json") == schema
    (one, _), _ = fitted()
    assert "domain_columns" not in one.to_json() and one.domain_sources == ("dom",)


def test_cli_domain_columns_errors_are_one_line(tmp_path, capsys):
    from adactr.cli import main

    path = tmp_path / "t.csv"
    path.write_text("label,gender,age\n1,F,25\n0,M,1\n")
    assert main(["prepare", "--train", str(path), "--domain", "gender,nosuch", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {path}: column 'nosuch' is missing (columns are: label, gender, age)\n"
    assert main(["prepare", "--train", str(path), "--domain", "gender,gender", "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == "error: --domain 'gender,gender': 'gender' is named twice\n"
    assert not (tmp_path / "o").exists()
    assert main(["prepare", "--train", str(path), "--domain", "gender,age", "--split", "0.5,0.5,0",
                 "--out", str(tmp_path / "o"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "domains: 1 combinations of gender, age in train; rows per domain largest 1, median 1, smallest 1" in out
