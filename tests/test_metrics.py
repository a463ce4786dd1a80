"""Tests for adactr.train.metrics: hand goldens, equality with scikit-learn, nan cases, bad arguments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss, roc_auc_score

from adactr.train.metrics import (
    auc,
    domain_auc_mean,
    evaluate,
    gauc,
    logloss,
    per_domain,
    relaimp,
    relaimp_report,
)

# --- hand goldens ----------------------------------------------------------------------------------


def test_auc_golden_no_ties() -> None:
    # Positives 0.35, 0.8 vs negatives 0.1, 0.4: 0.35 beats 0.1 only, 0.8 beats both -> 3 of 4 pairs.
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75


def test_auc_golden_with_tie() -> None:
    # Positives 0.5, 0.9 vs negatives 0.2, 0.5: 0.5 beats 0.2 (1) and ties 0.5 (1/2), 0.9 beats both (2)
    # -> 3.5 / 4. By ranks: 1, 2.5, 2.5, 4; R_pos = 2.5 + 4 = 6.5; U = 6.5 - 2 * 3 / 2 = 3.5.
    assert auc(torch.tensor([0.2, 0.5, 0.5, 0.9]), torch.tensor([0.0, 1.0, 0.0, 1.0])) == 0.875


@pytest.mark.parametrize(
    ("scores", "expected"),
    [([1.0, 2.0, 3.0, 4.0], 1.0), ([4.0, 3.0, 2.0, 1.0], 0.0), ([7.0, 7.0, 7.0, 7.0], 0.5)],
)
def test_auc_extremes(scores: list[float], expected: float) -> None:
    assert auc(torch.tensor(scores), torch.tensor([0, 0, 1, 1])) == expected


def test_logloss_golden() -> None:
    # sigmoid(0) = 1/2 for both rows -> ln 2; sigmoid(ln 3) = 3/4 with label 1 -> -ln(3/4).
    assert logloss(torch.tensor([0.0, 0.0]), torch.tensor([0, 1])) == pytest.approx(math.log(2), abs=1e-12)
    assert logloss(torch.tensor([math.log(3)]), torch.tensor([1])) == pytest.approx(math.log(4 / 3), abs=1e-7)


def test_logloss_is_stable_for_large_logits() -> None:
    # float32 sigmoid(300) == 1.0, so a loss from probabilities would be -log(0) = inf (PyTorch's BCE clamps
    # the log at -100, which would give 50); from logits it is 300 + log1p(e^-300) = 300 for the wrong
    # label and ~0 for the right one: mean 150.
    assert logloss(torch.tensor([300.0, -300.0]), torch.tensor([0, 0])) == pytest.approx(150.0, abs=1e-12)


def test_gauc_golden() -> None:
    # Group 7 (rows 0, 2, 4, 6): the 0.75 case above, 4 rows. Group 3 (rows 1, 5): 0.7 positive above
    # 0.2 negative, AUC 1, 2 rows. Group 42 (rows 3, 7): positives only, left out.
    # GAUC = (4 * 0.75 + 2 * 1) / (4 + 2) = 5 / 6.
    s = torch.tensor([0.1, 0.7, 0.4, 0.3, 0.35, 0.2, 0.8, 0.6])
    y = torch.tensor([0, 1, 0, 1, 1, 0, 1, 1])
    g = torch.tensor([7, 3, 7, 42, 7, 3, 7, 42])
    assert gauc(s, y, g) == pytest.approx(5 / 6, abs=1e-15)


def test_gauc_golden_ties_only_within_group() -> None:
    # Score 0.5 appears in both groups; the tie must count only inside each group.
    # Group 0: 0.5 (pos) vs 0.5 (neg) -> 1/2. Group 1: 0.5 (pos) vs 0.1 (neg) -> 1. Equal sizes: 0.75.
    s = torch.tensor([0.5, 0.5, 0.5, 0.1])
    y = torch.tensor([1, 0, 1, 0])
    g = torch.tensor([0, 0, 1, 1])
    assert gauc(s, y, g) == 0.75


def test_relaimp_golden() -> None:
    # (0.26 / 0.25 - 1) * 100 = 4; (0.2 / 0.25 - 1) * 100 = -20.
    assert relaimp(0.76, 0.75) == pytest.approx(4.0, abs=1e-9)
    assert relaimp(0.70, 0.75) == pytest.approx(-20.0, abs=1e-9)
    assert relaimp(0.75, 0.75) == 0.0


# --- equality with scikit-learn on random data with many ties ---------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_logloss_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 10_000
    y = rng.integers(0, 2, n)
    # Scores carry signal and are rounded to 2 decimals: ~100 distinct values, so ties are everywhere.
    logits = np.round(rng.normal(0.8 * y - 0.4, 1.0), 2).astype(np.float32)
    got = auc(torch.from_numpy(logits), torch.from_numpy(y))
    assert got == pytest.approx(roc_auc_score(y, logits), abs=1e-6)
    probs = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    assert logloss(torch.from_numpy(logits), torch.from_numpy(y).float()) == pytest.approx(
        log_loss(y, probs), abs=1e-6
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gauc_matches_per_group_sklearn_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 3_000
    # Zipf-like group sizes: a few large groups, many of 1-3 rows (single-class groups among them).
    g = (rng.pareto(1.2, n) * 5).astype(np.int64)
    y = (rng.random(n) < 0.3).astype(np.int64)
    s = np.round(rng.random(n) + 0.2 * y, 1).astype(np.float32)
    num = den = 0.0
    skipped = 0
    for k in np.unique(g):
        m = g == k
        if len(np.unique(y[m])) < 2:
            skipped += 1
            continue
        num += m.sum() * roc_auc_score(y[m], s[m])
        den += m.sum()
    assert skipped > 0 and den > 0  # the data exercises both kinds of group
    got = gauc(torch.from_numpy(s), torch.from_numpy(y), torch.from_numpy(g))
    assert got == pytest.approx(num / den, abs=1e-9)


def test_gauc_of_one_group_is_auc() -> None:
    rng = np.random.default_rng(3)
    s = torch.from_numpy(np.round(rng.random(1000), 2))
    y = torch.from_numpy(rng.integers(0, 2, 1000))
    assert gauc(s, y, torch.full((1000,), 5)) == pytest.approx(auc(s, y), abs=1e-15)


# --- per_domain and evaluate -------------------------------------------------------------------------


def test_per_domain_keys_and_counts() -> None:
    logits = torch.tensor([0.3, -1.0, 2.0, 0.5, -0.2])
    labels = torch.tensor([1, 0, 1, 0, 0])
    domains = torch.tensor([2, 0, 2, 2, 0])
    named = per_domain(logits, labels, domains, ["news", "video", "shop"])
    assert list(named) == ["news", "shop"]
    assert named["news"]["count"] == 2 and named["news"]["positive_rate"] == 0.0
    assert math.isnan(named["news"]["auc"])  # negatives only
    assert named["shop"]["count"] == 3 and named["shop"]["positive_rate"] == pytest.approx(2 / 3)
    # Domain 2: positives 0.3, 2.0 vs negative 0.5 -> 1 of 2 pairs.
    assert named["shop"]["auc"] == 0.5
    assert list(per_domain(logits, labels, domains)) == ["0", "2"]


def test_domain_auc_mean_by_hand() -> None:
    # domain 0 (4 rows): positives 0.35, 0.8 vs negatives 0.1, 0.4 -> AUC 3/4; domain 1 (2 rows): 1.0;
    # domain 2 (3 rows): positives only, left out and counted. Mean (4 * 0.75 + 2 * 1) / 6 = 5/6.
    logits = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.0, 1.0, 0.2, 0.3, 0.4])
    labels = torch.tensor([0, 0, 1, 1, 0, 1, 1, 1, 1])
    domains = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    r = evaluate(logits, labels, domains=domains, domain_names=["<missing>", "<unseen>", "gender=F|age=25"])
    assert r["domain_auc_mean"] == pytest.approx(5 / 6)
    assert r["domain_auc_excluded"] == {"domains": 1, "rows": 3}
    assert r["domain_auc_mean"] == pytest.approx(gauc(logits, labels, domains))  # GAUC with domains as groups
    assert r["domain_auc_mean"] != pytest.approx(r["auc"])  # not the pooled AUC
    mean, left = domain_auc_mean({"x": {"auc": math.nan, "count": 3}})
    assert math.isnan(mean) and left == {"domains": 1, "rows": 3}


def test_relaimp_report_against_a_base() -> None:
    mine = {"auc": 0.8, "gauc": 0.7, "domain_auc_mean": 0.6, "per_domain": {"a": {"auc": 0.9}, "b": {"auc": 0.6}}}
    base = {"auc": 0.75, "domain_auc_mean": 0.55, "per_domain": {"a": {"auc": 0.8}}}
    r = relaimp_report(mine, base)
    # (0.3 / 0.25 - 1) * 100 = 20; (0.1 / 0.05 - 1) * 100 = 100; (0.4 / 0.3 - 1) * 100 = 33.3
    assert r["auc"] == pytest.approx(20.0) and r["domain_auc_mean"] == pytest.approx(100.0)
    assert r["per_domain"] == {"a": pytest.approx(100 / 3)} and "gauc" not in r  # only what both have


def test_evaluate_keys_types_and_json() -> None:
    logits = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.0, 1.0])
    labels = torch.tensor([0, 0, 1, 1, 1, 1])
    groups = torch.tensor([1, 1, 1, 1, 2, 2])
    domains = torch.tensor([0, 0, 0, 0, 1, 1])
    r = evaluate(logits, labels, groups=groups, domains=domains, domain_names=["a", "b"])
    assert set(r) == {"auc", "logloss", "count", "gauc", "per_domain", "domain_auc_mean", "domain_auc_excluded"}
    assert r["domain_auc_mean"] == 0.75 and r["domain_auc_excluded"] == {"domains": 1, "rows": 2}  # only "a"
    assert r["count"] == 6 and type(r["count"]) is int
    assert type(r["auc"]) is float and type(r["logloss"]) is float
    assert r["gauc"] == 0.75  # group 2 has positives only
    assert math.isnan(r["per_domain"]["b"]["auc"])
    json.dumps(r)  # plain Python numbers all the way down
    assert set(evaluate(logits, labels)) == {"auc", "logloss", "count"}


# --- nan cases ---------------------------------------------------------------------------------------


def test_nan_when_undefined() -> None:
    ones = torch.ones(3)
    assert math.isnan(auc(torch.tensor([0.1, 0.2, 0.3]), ones))
    assert math.isnan(auc(torch.tensor([]), torch.tensor([])))
    assert math.isnan(gauc(torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([0, 1, 0, 1]), torch.arange(4)))
    assert math.isnan(relaimp(0.7, 0.5))


# --- bad arguments -----------------------------------------------------------------------------------


def test_bad_shapes_name_the_argument() -> None:
    with pytest.raises(ValueError, match="scores must be 1-D"):
        auc(torch.zeros(2, 2), torch.zeros(4))
    with pytest.raises(ValueError, match="labels must be 1-D"):
        auc(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match="labels has length 3 but scores has length 4"):
        auc(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="labels has length 3 but logits has length 4"):
        logloss(torch.zeros(4), torch.zeros(3))
    with pytest.raises(ValueError, match="groups has length 2 but scores has length 4"):
        gauc(torch.zeros(4), torch.zeros(4), torch.zeros(2))
    with pytest.raises(ValueError, match="domains has length 5 but logits has length 4"):
        evaluate(torch.zeros(4), torch.zeros(4), domains=torch.zeros(5, dtype=torch.long))


def test_bad_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        auc(torch.zeros(3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="scores contains NaN"):
        auc(torch.tensor([0.1, math.nan]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"domains has values \[3\] outside names"):
        per_domain(torch.zeros(2), torch.tensor([0, 1]), torch.tensor([0, 3]), ["a", "b"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    rng = np.random.default_rng(4)
    s = torch.from_numpy(np.round(rng.random(5000), 2).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, 5000))
    g = torch.from_numpy(rng.integers(0, 50, 5000))
    cpu = evaluate(s, y, groups=g)
    cuda = evaluate(s.cuda(), y.cuda(), groups=g.cuda())
    assert cuda == pytest.approx(cpu, abs=1e-12)


def test_cli_evaluate_base_adds_relaimp_against_the_named_run(monkeypatch, capsys) -> None:
    """`adactr evaluate --base B` evaluates B on the same split and reports RelaImp against it, by name."""
    import adactr.train.run as run
    from adactr.cli import main

    results = {"runs/star": {"auc": 0.8, "domain_auc_mean": 0.7, "per_domain": {"<unseen>": {"auc": 0.6}}},
               "runs/dnn": {"auc": 0.75, "domain_auc_mean": 0.65, "per_domain": {"<unseen>": {"auc": 0.6}}}}
    seen = []

    def fake(*, run, data, split, device, progress):
        seen.append((str(run), str(data), split))
        return dict(results[str(run)])

    monkeypatch.setattr(run, "evaluate_run", fake)
    assert main(["evaluate", "--run", "runs/star", "--data", "d", "--split", "valid", "--base", "runs/dnn"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert seen == [("runs/star", "d", "valid"), ("runs/dnn", "d", "valid")]  # the same split for both
    assert out["relaimp"]["base"] == "runs/dnn"
    assert out["relaimp"]["auc"] == pytest.approx(20.0)  # (0.3 / 0.25 - 1) * 100
    assert out["relaimp"]["domain_auc_mean"] == pytest.approx(100 * (0.2 / 0.15 - 1))
    assert out["relaimp"]["per_domain"] == {"<unseen>": 0.0}
