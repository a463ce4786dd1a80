"""Synthetic data: determinism, layout (same as the readers'), rates, and the signal it is meant to carry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from adactr.data import synthetic
from adactr.data.readers import CRITEO_COLUMNS, read_criteo, read_table
from adactr.data.synthetic import click_world, criteo_like, write_click_world, write_criteo_like
from adactr.errors import ConfigError


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """Rank AUC (no ties in continuous scores)."""
    ranks = np.empty(len(score))
    ranks[np.argsort(score)] = np.arange(1, len(score) + 1)
    pos = y.astype(bool)
    return float((ranks[pos].sum() - pos.sum() * (pos.sum() + 1) / 2) / (pos.sum() * (~pos).sum()))


@pytest.fixture(scope="module")
def criteo() -> pl.DataFrame:
    return criteo_like(20_000, seed=0)


def test_criteo_like_layout_matches_read_criteo(criteo: pl.DataFrame) -> None:
    assert criteo.columns == list(CRITEO_COLUMNS)
    assert set(criteo.dtypes) == {pl.String}
    assert criteo["C1"].str.contains(r"^[0-9a-f]{8}$").all()
    assert criteo["I5"].drop_nulls().cast(pl.Int64).min() >= 0


def test_criteo_like_is_deterministic_and_seeded() -> None:
    assert criteo_like(300, seed=3).equals(criteo_like(300, seed=3))
    assert not criteo_like(300, seed=3).equals(criteo_like(300, seed=4))
    with pytest.raises(ConfigError, match="n_rows"):
        criteo_like(0)


def test_criteo_like_rates_tails_and_missingness(criteo: pl.DataFrame) -> None:
    ctr = criteo["label"].cast(pl.Int64).mean()
    assert 0.22 < ctr < 0.29  # Kaggle train: 25.6%
    # fields that are empty together in the real data are empty together here, at the real rates
    nulls = {c: criteo[c].is_null().to_numpy() for c in ("C19", "C20", "C25", "C26", "I1", "I10", "C22")}
    assert (nulls["C19"] == nulls["C26"]).all() and (nulls["I1"] == nulls["I10"]).all()
    assert 0.40 < nulls["C19"].mean() < 0.48 and 0.72 < nulls["C22"].mean() < 0.80
    assert criteo["C2"].null_count() == 0
    # I2 has ~10% negatives; integers are heavy-tailed
    i2 = criteo["I2"].cast(pl.Int64)
    assert 0.07 < (i2 < 0).mean() < 0.13 and i2.min() >= -3
    i5 = criteo["I5"].drop_nulls().cast(pl.Int64)
    assert i5.max() > 50 * i5.median()
    # long tails: C3 (10M values in the full data) has a popular head and thousands of rare values
    counts = criteo["C3"].drop_nulls().value_counts(sort=True)["count"]
    assert counts[0] / counts.sum() > 0.02 and criteo["C3"].n_unique() > 5000
    assert criteo["C9"].n_unique() <= 3 and criteo["C20"].drop_nulls().n_unique() <= 4


def test_criteo_like_hidden_model_carries_signal() -> None:
    df, logit = synthetic._criteo_like(20_000, 1)
    y = df["label"].cast(pl.Int64).to_numpy()
    assert _auc(y, logit) > 0.75  # the best model's ceiling; real Criteo models reach ~0.80


@pytest.mark.parametrize("name", ["c.txt", "c.txt.gz"])
def test_write_criteo_like_round_trip(tmp_path: Path, name: str) -> None:
    path = write_criteo_like(tmp_path / name, 400, seed=2)
    assert read_criteo(path).equals(criteo_like(400, seed=2))


def test_criteo_like_prepares_as_in_the_dynint_paper_in_one_command(tmp_path: Path) -> None:
    """The command of docs/data.md: floor(ln(v^2)) buckets, values seen < 20 times in train -> OOV, a seeded
    random 70/10/20 split."""
    import json

    from adactr.cli import main

    raw = write_criteo_like(tmp_path / "crit.txt", 3000, seed=0)

    def prepare(out: str, seed: int) -> Path:
        assert main(["prepare", "--format", "criteo", "--train", str(raw), "--numeric", "log_v2", "--min-count",
                     "20", "--split", "0.7,0.1,0.2", "--seed", str(seed), "--out", str(tmp_path / out),
                     "--quiet"]) == 0
        return tmp_path / out

    out = prepare("a", 7)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["rows"] == {"train": 2100, "valid": 300, "test": 600}
    assert meta["split"] == {"fractions": [0.7, 0.1, 0.2], "time_column": None, "seed": 7}
    fields = json.loads((out / "schema.json").read_text())["fields"]
    assert [f["name"] for f in fields] == list(CRITEO_COLUMNS[1:])
    assert {f["transform"] for f in fields[:13]} == {"log_v2"} and {f["transform"] for f in fields[13:]} == {None}
    assert {f["min_count"] for f in fields} == {20}
    cat = np.load(out / "train" / "cat.npy")  # (2100, 39): I1-I13 buckets, then C1-C26
    oov = 0
    for j in range(cat.shape[1]):
        kept = np.bincount(cat[:, j])[2:]  # rows per vocabulary index (0 missing, 1 OOV)
        assert (kept >= 20).all()  # every kept value was seen at least 20 times in train
        oov += int((cat[:, j] == 1).sum())
    assert oov > 1000  # and rarer ones went to OOV: Criteo's long tails
    i2 = json.loads((out / "vocab" / "I2.json").read_text())
    assert 0 in i2 and -1_000_000 in i2  # v = +-1 -> bucket 0; v = 0 keeps its own bucket
    again, other = prepare("b", 7), prepare("c", 8)
    assert np.array_equal(np.load(again / "test" / "cat.npy"), np.load(out / "test" / "cat.npy"))
    assert not np.array_equal(np.load(other / "test" / "label.npy"), np.load(out / "test" / "label.npy"))


# ------------------------------------------------------------------------------------------- click world


@pytest.fixture(scope="module")
def world() -> pl.DataFrame:
    return click_world(40_000, seed=0)


def test_click_world_layout_and_ranges(world: pl.DataFrame) -> None:
    assert world.schema == pl.Schema({
        "label": pl.Int8, "user_id": pl.Int32, "item_id": pl.Int32, "item_category": pl.Int32,
        "user_segment": pl.Int32, "device": pl.String, "hour": pl.Int8, "domain": pl.Int8,
        "price": pl.Float64, "tags": pl.String})
    assert world.null_count().sum_horizontal().item() == 0
    assert set(world["label"].unique()) == {0, 1}
    assert 0.2 <= world["label"].mean() <= 0.3
    assert world["hour"].min() >= 0 and world["hour"].max() <= 23
    assert world["user_id"].max() < 2000 and world["item_id"].max() < 1000
    assert (world["price"] > 0).all()
    assert world["tags"].str.contains(r"^t\d+(\|t\d+){0,2}$").all()
    assert set(world["device"].unique()) == {"android", "ios", "web"}


def test_click_world_domains_unequal_and_popularity_long_tailed(world: pl.DataFrame) -> None:
    share = world["domain"].value_counts().sort("domain")["count"].to_numpy() / world.height
    assert share.tolist() == pytest.approx([4 / 7, 2 / 7, 1 / 7], abs=0.02)
    users = world["user_id"].value_counts(sort=True)["count"].to_numpy()
    assert users[:20].sum() > 0.15 * world.height  # top 1% of users make >15% of the traffic


def test_click_world_is_deterministic() -> None:
    assert click_world(500, seed=5).equals(click_world(500, seed=5))
    assert not click_world(500, seed=5).equals(click_world(500, seed=6))
    assert click_world(300, seed=0, n_domains=1)["domain"].unique().to_list() == [0]
    with pytest.raises(ConfigError, match="n_domains"):
        click_world(10, n_domains=0)


def test_click_world_price_effect_flips_between_domains(world: pl.DataFrame) -> None:
    """The same feature pushes clicks opposite ways in domain 0 and domain 2: a shared weight cannot fit."""
    slopes = []
    for d in (0, 2):
        part = world.filter(pl.col("domain") == d)
        cheap = part["price"] < part["price"].median()
        slopes.append(part.filter(~cheap)["label"].mean() - part.filter(cheap)["label"].mean())
    assert slopes[0] < -0.03 and slopes[1] > 0.03


def test_write_click_world_splits_and_reads_back(tmp_path: Path) -> None:
    paths = write_click_world(tmp_path / "w", n_rows=1000, seed=3)
    assert set(paths) == {"train", "valid", "test"}
    frames = {k: read_table(p) for k, p in paths.items()}
    assert [frames[k].height for k in ("train", "valid", "test")] == [800, 100, 100]
    assert frames["train"].columns == click_world(10).columns
    assert set(frames["test"]["label"].unique()) <= {"0", "1"}
    full = click_world(1000, seed=3)
    assert frames["valid"]["user_id"].cast(pl.Int32).equals(full["user_id"][800:900])


def test_click_world_many_long_tailed_domains() -> None:
    """domain_tail: 3, 30 or 300 domains on the same number of rows, sizes ~ (d + 1)^-s; default unchanged."""
    df = click_world(5000, seed=3, n_domains=5)  # the default 2^-d sizes, as before the option existed
    assert df["domain"].value_counts().sort("domain")["count"].to_list() == [2616, 1292, 637, 292, 163]
    assert (int(df["label"].sum()), int(df["item_id"].sum())) == (1263, 2596112)
    many = click_world(60_000, seed=0, n_domains=300, domain_tail=1.0)
    assert many.schema["domain"] == pl.Int16 and many["domain"].n_unique() == 300  # 2^-d would leave ~280 empty
    counts = many["domain"].value_counts().sort("domain")["count"].to_numpy()
    # p(0) / p(299) = 300 under s = 1 (sampling noise aside): largest ~ 60000 / H_300 = 9.6k, smallest ~ 32
    assert 9000 < counts[0] < 10_200 and counts[-20:].mean() < 60
    assert abs(float(many["label"].mean()) - 0.25) < 0.01
    with pytest.raises(ConfigError, match="domain_tail"):
        click_world(10, domain_tail=-1.0)


def test_criteo_like_order_3_adds_only_third_order_effects() -> None:
    df2, logit2 = synthetic._criteo_like(20_000, 1)
    df3, logit3 = synthetic._criteo_like(20_000, 1, order=3)
    assert df3.drop("label").equals(df2.drop("label"))  # same rows; only the clicks change
    six = ["C6", "C17", "C23", "C14", "C20", "C25"]
    extra = pl.DataFrame({"d": logit3 - logit2}).with_columns(df3.select(six))
    # the added logit is a function of the two triples' six fields alone (constant within their values)
    assert extra.group_by(six).agg(pl.col("d").std())["d"].fill_null(0).max() < 1e-9
    # two products of unit effects with amplitudes 0.6 and 0.5: variance ~ 0.36 + 0.25 (the values' long
    # tails make the per-row effects only roughly unit-variance)
    assert 0.25 < float(np.var(logit3 - logit2)) < 1.2
    assert 0.2 < df3["label"].cast(pl.Int64).mean() < 0.33
    with pytest.raises(ConfigError, match="order"):
        criteo_like(10, order=4)
