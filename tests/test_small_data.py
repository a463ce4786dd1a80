"""Small, imbalanced data (issue 18): adactr's defaults against scikit-learn's logistic regression, and the
pieces of benchmarks/small_data.py that build the subsets and the anchor."""

import gzip
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import small_data  # noqa: E402

from adactr.cli import main  # noqa: E402


def _write(path: Path, header: list[str], rows) -> None:
    with gzip.open(path, "wt") as f:
        f.write(",".join(header) + "\n")
        for r in rows:
            f.write(",".join(str(v) for v in r) + "\n")


def _ad_log(root: Path, n: int, *, base_logit: float, seed: int) -> Path:
    """An advertising log with a few percent clicks: three categorical fields whose values shift the click
    log-odds (a long-tailed third one with many rare values), split 80/10/10 into CSV files."""
    rng = np.random.default_rng(seed)
    sizes = (8, 60, 600)
    w = [rng.normal(0, s, k) for s, k in zip((0.8, 0.8, 0.6), sizes, strict=True)]
    cols = [rng.integers(0, k, n) if k < 100 else np.minimum(rng.zipf(1.3, n) - 1, k - 1) for k in sizes]
    logit = base_logit + sum(wi[c] for wi, c in zip(w, cols, strict=True))
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    root.mkdir(parents=True, exist_ok=True)
    cut = (int(0.8 * n), int(0.9 * n))
    for name, sl in (("train", slice(0, cut[0])), ("valid", slice(*cut)), ("test", slice(cut[1], n))):
        _write(root / f"{name}.csv.gz", ["label", "site", "ad", "publisher"],
               ((label[i], f"s{cols[0][i]}", f"a{cols[1][i]}", f"p{cols[2][i]}") for i in range(n)[sl]))
    return root


@pytest.fixture(scope="module")
def ad_data(tmp_path_factory) -> Path:
    """20,000 rows, about 2.5 % clicks (400 in train, 50 in valid and test), prepared."""
    root = tmp_path_factory.mktemp("ads")
    raw = _ad_log(root / "raw", 20_000, base_logit=-4.6, seed=0)
    out = root / "prepared"
    assert main(["prepare", "--train", str(raw / "train.csv.gz"), "--valid", str(raw / "valid.csv.gz"),
                 "--test", str(raw / "test.csv.gz"), "--out", str(out), "--quiet"]) == 0
    return out


def _train(data: Path, out: Path, *sets: str) -> dict:
    argv = ["train", "--data", str(data), "--model", "lr", "--out", str(out), "--quiet", "--set", "train.seed=1"]
    for s in sets:
        argv += ["--set", s]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the small-validation warning (tested elsewhere)
        assert main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


def test_defaults_fit_a_small_imbalanced_log_that_the_former_ones_did_not(ad_data, tmp_path):
    """16k training rows (4 steps an epoch), about 50 positives in the validation split. The former
    defaults (Adam 1e-3, early stopping on the validation AUC from the first epoch, patience 2) stop after
    4 epochs with the bias still near 0 (test AUC 0.48 where scikit-learn's L2 logistic regression, C chosen
    on validation, gets 0.75); the defaults train on (0.72). Not to 0.75: with a long-tailed field Adam moves
    a rare value's weight as far per step as a common one's, so early stopping regularises the rare values
    less than L2 does; docs/small-data.md gives the figures for real data."""
    labels = np.load(ad_data / "train" / "label.npy")
    assert 300 < labels.sum() < 500 and len(labels) == 16_000
    sk = small_data.sklearn_lr(ad_data, grid=(0.01, 0.1, 1.0, 10.0))
    new = _train(ad_data, tmp_path / "new")
    old = _train(ad_data, tmp_path / "old", "train.lr=0.001", "train.embedding_l2=0", "train.min_steps=0",
                 "train.early_stopping=auc", "train.epochs=30")
    assert sk["test"]["auc"] - 0.04 < new["test"]["auc"], (new["test"]["auc"], sk["test"]["auc"])
    assert old["test"]["auc"] < sk["test"]["auc"] - 0.15, (old["test"]["auc"], sk["test"]["auc"])
    assert new["test"]["logloss"] < old["test"]["logloss"] / 4


@pytest.mark.slow
def test_lr_defaults_within_0005_of_sklearn_on_small_frappe(shared_data, tmp_path):
    """The issue's target on real data: Frappe_x1 subsets of 20k rows with 2 % positives (seeds 1-3, as in
    docs/small-data.md), adactr LR with default settings against scikit-learn's L2 logistic regression with
    C chosen on validation log loss, test AUC averaged over the seeds."""
    sub = next(s for s in small_data.SUBSETS if s.name == "Frappe_x1 20k")
    diffs = []
    for seed in (1, 2, 3):
        raw = small_data.build_subset(shared_data, sub, seed, tmp_path / f"raw{seed}")
        data = small_data.prepare_subset(raw, sub, tmp_path / f"prepared{seed}")
        r = _train(data, tmp_path / f"run{seed}", f"train.seed={seed}")
        diffs.append(r["test"]["auc"] - small_data.sklearn_lr(data)["test"]["auc"])
    assert np.mean(diffs) > -0.005, diffs


def test_one_hot_has_one_column_per_index_of_every_field(ad_data):
    from adactr.data.schema import Schema

    x, y = small_data.one_hot(ad_data, "valid")
    cat = np.load(ad_data / "valid" / "cat.npy")
    sizes = Schema.load(ad_data / "schema.json").layout().cat_sizes
    assert x.shape == (len(cat), sum(sizes)) and len(y) == len(cat)
    assert (np.asarray(x.sum(1)).ravel() == cat.shape[1]).all()  # one 1 per field
    row = x[7].toarray().ravel()
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    assert list(np.flatnonzero(row)) == list(offsets + cat[7])


def test_sklearn_anchor_keeps_the_c_with_the_lowest_validation_log_loss(ad_data):
    r = small_data.sklearn_lr(ad_data, grid=(0.001, 1.0))
    losses = {g["C"]: g["valid"]["logloss"] for g in r["grid"]}
    assert r["C"] == min(losses, key=losses.get)
    assert r["by_valid_auc"]["C"] == max(r["grid"], key=lambda g: g["valid"]["auc"])["C"]


def test_subsets_keep_their_splits_and_the_positive_rate(tmp_path):
    """Each split of a subset is drawn from the same split of the source, with exactly the positive rate
    asked for; a seed gives the same subset again, another seed another one."""
    shared = tmp_path / "shared"
    src = shared / "toy"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", 3000), ("valid", 800), ("test", 800)):
        _write(src / f"{split}.csv.gz", ["label", "row", "f"],
               ((int(rng.random() < 0.3), f"{split}{i}", rng.integers(0, 5)) for i in range(n)))
    sub = small_data.Subset("toy 1k", "toy", 1000, 0.02)

    def read(d: Path, split: str) -> list[list[str]]:
        with gzip.open(d / f"{split}.csv.gz", "rt") as f:
            return [line.strip().split(",") for line in f][1:]

    a = small_data.build_subset(shared, sub, 1, tmp_path / "a")
    for split, n in (("train", 800), ("valid", 100), ("test", 100)):
        rows = read(a, split)
        assert len(rows) == n and sum(r[0] == "1" for r in rows) == max(1, round(n * 0.02))
        assert all(r[1].startswith(split) for r in rows) and len({r[1] for r in rows}) == n
    again = small_data.build_subset(shared, sub, 1, tmp_path / "again")
    other = small_data.build_subset(shared, sub, 2, tmp_path / "other")
    assert read(again, "train") == read(a, "train") and read(other, "train") != read(a, "train")
    with pytest.raises(SystemExit, match="positives"):
        small_data.build_subset(shared, small_data.Subset("x", "toy", 4000, 0.5), 1, tmp_path / "x")
