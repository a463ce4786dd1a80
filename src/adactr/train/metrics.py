"""Evaluation metrics for CTR models: AUC, LogLoss, GAUC, RelaImp, per-domain breakdowns.

All metrics run on the device the tensors live on (CPU or CUDA) and return plain Python numbers, so a
result dict can go straight to ``json.dumps``. Undefined values (AUC with one class only) are ``nan``.

* **AUC** -- area under the ROC curve, computed exactly as the Mann-Whitney statistic
  ``U / (P * N)`` with ``U = R_pos - P (P + 1) / 2``, where ``R_pos`` is the sum of the positives'
  ranks and tied scores share their average rank. A tied (positive, negative) pair therefore counts
  1/2, as in scikit-learn's ``roc_auc_score``. One sort plus segment sums: no loop over rows.
* **LogLoss** -- mean binary cross entropy, computed from logits (``BCEWithLogits``) so that large
  logits give a large finite loss instead of ``log(0)``.
* **GAUC** -- group AUC: the AUC of each group (typically a user) that has both labels, averaged with
  the group's impression count as weight, as defined in APG (Yan et al., NeurIPS'22) and AdaSparse
  (Yang et al., CIKM'22)::

      GAUC = sum_g n_g * AUC_g / sum_g n_g      (over groups with a positive and a negative)

  One global sort by (group, score) and segment sums: no loop over groups.
* **RelaImp** -- relative improvement over a base model, ADL (Li et al., SIGIR'23) eq. 10::

      RelaImp = ((AUC_model - 0.5) / (AUC_base - 0.5) - 1) * 100%

  ``adactr evaluate --run R --base B`` reports it against the named base run ``B`` (:func:`relaimp_report`).
* **domain_auc_mean** -- the count-weighted mean of per-domain AUC (the "GAUC over domains" that the
  multi-domain benchmarks early-stop on, e.g. CDC's ``run.py``)::

      domain_auc_mean = sum_d n_d * AUC_d / sum_d n_d      (over domains with a positive and a negative)

  which is :func:`gauc` with the domain as the group; one-class domains are left out and counted in
  ``domain_auc_excluded``.

>>> import torch
>>> auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
0.75
>>> round(relaimp(0.76, 0.75), 6)
4.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["auc", "logloss", "gauc", "relaimp", "relaimp_report", "per_domain", "domain_auc_mean", "evaluate"]


# --- validation ------------------------------------------------------------------------------------


def _check_1d(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")


def _check_like(name: str, t: torch.Tensor, ref_name: str, ref: torch.Tensor) -> None:
    """``t`` must be 1-D, as long as ``ref`` and on the same device."""
    _check_1d(name, t)
    if t.numel() != ref.numel():
        raise ValueError(f"{name} has length {t.numel()} but {ref_name} has length {ref.numel()}")
    if t.device != ref.device:
        raise ValueError(f"{name} is on {t.device} but {ref_name} is on {ref.device}")


def _check_inputs(score_name: str, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Validate scores and labels; return the labels as int64 0/1 (exact counts in cumsums)."""
    _check_1d(score_name, scores)
    _check_like("labels", labels, score_name, scores)
    if scores.is_floating_point() and bool(torch.isnan(scores).any()):
        # NaN compares unequal to itself, so it would silently break the tie runs below.
        raise ValueError(f"{score_name} contains NaN")
    if not bool(((labels == 0) | (labels == 1)).all()):
        raise ValueError("labels must be 0 or 1")
    return labels.to(torch.int64)


# --- rank statistics -------------------------------------------------------------------------------


def _segment_sum(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """Sums of ``x`` over the contiguous segments ``[starts[i], ends[i])``.

    Cumsum differences instead of scatter_add: exact for int64 and deterministic on CUDA.
    """
    cs = x.new_zeros(x.numel() + 1)  # (n + 1,) cs[i] = sum of x[:i]
    torch.cumsum(x, 0, out=cs[1:])
    return cs[ends] - cs[starts]  # (S,)


def _rank_stats(
    y: torch.Tensor, tie_start: torch.Tensor, group_start: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-group (size, positives, 2 * rank sum of positives) of rows sorted by (group, score).

    ``y`` (n,) int64 labels in sorted order; ``tie_start`` (n,) bool marks the first row of each run of
    equal (group, score); ``group_start`` (n,) bool marks the first row of each group and must imply
    ``tie_start``. Ranks are 1-based within the group; ranks are doubled so that the average rank of a
    tie run, ``(first + last) / 2``, stays an integer and the whole computation is exact in int64.
    """
    n = y.numel()
    end = torch.full((1,), n, dtype=torch.int64, device=y.device)
    runs = torch.nonzero(tie_start).squeeze(1)  # (R,) first row of each tie run
    run_end = torch.cat([runs[1:], end])  # (R,) one past the last row of each run
    groups = torch.nonzero(group_start).squeeze(1)  # (G,) first row of each group
    run_opens_group = group_start[runs]  # (R,) bool
    group_runs = torch.nonzero(run_opens_group).squeeze(1)  # (G,) first run of each group
    group_runs_end = torch.cat([group_runs[1:], end.new_tensor([runs.numel()])])  # (G,)
    if groups.numel() == 1:
        group_first: torch.Tensor | int = 0  # one group starting at row 0: skip a gather of R indices
    else:
        run_gid = torch.cumsum(run_opens_group, 0) - 1  # (R,) group index of each run
        group_first = groups[run_gid]  # (R,) first row of the run's group
    # 2 * average 1-based in-group rank of a run over rows [s, e): (s - g + 1) + (e - 1 - g + 1).
    rank2 = runs + run_end + 1 - 2 * group_first  # (R,)
    pos_in_run = _segment_sum(y, runs, run_end)  # (R,)
    rank_sum2 = _segment_sum(rank2 * pos_in_run, group_runs, group_runs_end)  # (G,)
    pos = _segment_sum(pos_in_run, group_runs, group_runs_end)  # (G,)
    size = torch.cat([groups[1:], end]) - groups  # (G,)
    return size, pos, rank_sum2


def _auc_from_stats(
    size: torch.Tensor, pos: torch.Tensor, rank_sum2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group AUC (float64, nan where a class is missing) and a mask of groups with both classes."""
    neg = size - pos
    both = (pos > 0) & (neg > 0)
    # U = R_pos - P (P + 1) / 2; numerator and denominator are doubled to stay in exact int64.
    u2 = rank_sum2 - pos * (pos + 1)  # (G,)
    pn2 = 2 * pos * neg  # (G,)
    aucs = u2.to(torch.float64) / pn2.to(torch.float64)  # (G,) nan where pn2 == 0 (0 / 0)
    return aucs, both


def _run_starts(sorted_key: torch.Tensor) -> torch.Tensor:
    """(n,) bool, True where a sorted key differs from the previous row (and at row 0)."""
    first = torch.ones(1, dtype=torch.bool, device=sorted_key.device)
    return torch.cat([first, sorted_key[1:] != sorted_key[:-1]])


# --- public metrics --------------------------------------------------------------------------------


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC with tied scores counted 1/2 (= ``sklearn.metrics.roc_auc_score``).

    ``scores`` (n,) any real dtype (logits or probabilities: AUC only uses their order); ``labels`` (n,)
    0/1. Returns ``nan`` when only one class is present.

    >>> import torch
    >>> auc(torch.tensor([0.2, 0.5, 0.5, 0.9]), torch.tensor([0, 1, 0, 1]))
    0.875
    """
    y = _check_inputs("scores", scores, labels)
    if y.numel() == 0:
        return math.nan
    s, order = torch.sort(scores)  # ties in any order: they share one average rank
    tie_start = _run_starts(s)  # (n,)
    group_start = torch.zeros_like(tie_start)
    group_start[0] = True  # one group: the whole data set
    aucs, both = _auc_from_stats(*_rank_stats(y[order], tie_start, group_start))
    return float(aucs[0]) if bool(both[0]) else math.nan


def logloss(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean binary cross entropy from logits, in float64 (``nan`` for empty input).

    >>> import math, torch
    >>> math.isclose(logloss(torch.tensor([0.0, 0.0]), torch.tensor([0, 1])), math.log(2))
    True
    """
    y = _check_inputs("logits", logits, labels)
    if y.numel() == 0:
        return math.nan
    # float64 per element and in the sum: a float32 sum over 50M rows loses digits the papers report.
    return float(F.binary_cross_entropy_with_logits(logits.to(torch.float64), y.to(torch.float64)))


def gauc(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> float:
    """Impression-weighted mean AUC over the groups that have both labels (APG, AdaSparse).

    ``groups`` (n,) group id of each row (e.g. user id), any sortable dtype. Returns ``nan`` if no group
    has both labels.

    >>> import torch
    >>> s = torch.tensor([0.1, 0.7, 0.4, 0.2, 0.35, 0.8])
    >>> y = torch.tensor([0, 1, 0, 0, 1, 1])
    >>> g = torch.tensor([5, 9, 5, 9, 5, 5])  # group 5: AUC 0.75 on 4 rows; group 9: AUC 1 on 2 rows
    >>> round(gauc(s, y, g), 6)  # (4 * 0.75 + 2 * 1) / 6
    0.833333
    """
    y = _check_inputs("scores", scores, labels)
    _check_like("groups", groups, "scores", scores)
    if y.numel() == 0:
        return math.nan
    # Lexicographic sort by (group, score): sort by score, then a stable sort by group keeps the
    # score order inside each group.
    by_score = torch.argsort(scores)  # (n,)
    g_sorted, by_group = torch.sort(groups[by_score], stable=True)  # (n,), (n,)
    order = by_score[by_group]  # (n,)
    group_start = _run_starts(g_sorted)  # (n,)
    tie_start = group_start | _run_starts(scores[order])  # (n,) a tie run never crosses groups
    size, pos, rank_sum2 = _rank_stats(y[order], tie_start, group_start)
    aucs, both = _auc_from_stats(size, pos, rank_sum2)
    w = size[both].to(torch.float64)  # (G',) impressions of each group with both labels
    if w.numel() == 0:
        return math.nan
    return float((w * aucs[both]).sum() / w.sum())


def relaimp(auc_model: float, auc_base: float) -> float:
    """RelaImp in percent, ADL (SIGIR'23) eq. 10: ``((auc_model - 0.5) / (auc_base - 0.5) - 1) * 100``.

    The 0.5 subtracted is the AUC of a random guess, so the gain is measured over what the base model
    learnt. ``nan`` when ``auc_base`` is 0.5 (nothing learnt to compare against).

    >>> relaimp(0.75, 0.75)
    0.0
    """
    if auc_base == 0.5:
        return math.nan
    return ((auc_model - 0.5) / (auc_base - 0.5) - 1.0) * 100.0


def relaimp_report(result: dict, base: dict) -> dict:
    """RelaImp (percent) of one evaluation against a base run's evaluation of the same split: of ``auc``,
    ``gauc`` and ``domain_auc_mean`` where both have them, and ``per_domain`` for the domains both report.

    >>> r = relaimp_report({"auc": 0.76, "per_domain": {"a": {"auc": 0.7}}},
    ...                    {"auc": 0.75, "per_domain": {"a": {"auc": 0.8}}})
    >>> round(r["auc"], 6), round(r["per_domain"]["a"], 6)
    (4.0, -33.333333)
    """
    out: dict = {k: relaimp(result[k], base[k]) for k in ("auc", "gauc", "domain_auc_mean")
                 if k in result and k in base}
    mine, theirs = result.get("per_domain") or {}, base.get("per_domain") or {}
    if mine and theirs:
        out["per_domain"] = {name: relaimp(d["auc"], theirs[name]["auc"]) for name, d in mine.items() if name in theirs}
    return out


def domain_auc_mean(per_domain_result: dict[str, dict]) -> tuple[float, dict[str, int]]:
    """Count-weighted mean of per-domain AUC from a :func:`per_domain` result, and what was left out.

    Domains with one class (AUC undefined) are left out of the mean; the second value counts them
    (``{"domains": k, "rows": n}``). ``nan`` when no domain has both classes.

    >>> domain_auc_mean({"a": {"auc": 0.5, "count": 10}, "b": {"auc": 1.0, "count": 30},
    ...                  "c": {"auc": float("nan"), "count": 2}})
    (0.875, {'domains': 1, 'rows': 2})
    """
    kept = [(d["count"], d["auc"]) for d in per_domain_result.values() if not math.isnan(d["auc"])]
    left = [d["count"] for d in per_domain_result.values() if math.isnan(d["auc"])]
    n = sum(c for c, _ in kept)
    mean = sum(c * a for c, a in kept) / n if n else math.nan
    return mean, {"domains": len(left), "rows": sum(left)}


def per_domain(
    logits: torch.Tensor,
    labels: torch.Tensor,
    domains: torch.Tensor,
    names: Sequence[str] | None = None,
) -> dict[str, dict]:
    """AUC, logloss, count and positive rate of each domain present in ``domains``.

    ``domains`` (n,) integer domain index of each row; keys are ``names[d]`` if ``names`` is given,
    else ``str(d)``, in increasing order of ``d``.

    >>> import torch
    >>> r = per_domain(torch.zeros(3), torch.tensor([0, 1, 1]), torch.tensor([2, 0, 2]), ["a", "b", "c"])
    >>> {k: (v["count"], v["positive_rate"]) for k, v in r.items()}
    {'a': (1, 1.0), 'c': (2, 0.5)}
    """
    _check_inputs("logits", logits, labels)
    _check_like("domains", domains, "logits", logits)
    values = [int(d) for d in torch.unique(domains).tolist()]
    if names is not None:
        bad = [d for d in values if not 0 <= d < len(names)]
        if bad:
            raise ValueError(f"domains has values {bad} outside names (length {len(names)})")
    out: dict[str, dict] = {}
    for d in values:  # a handful of domains: one masked pass each is cheap next to the sorts
        mask = domains == d  # (n,)
        x, y = logits[mask], labels[mask]
        out[names[d] if names is not None else str(d)] = {
            "auc": auc(x, y),
            "logloss": logloss(x, y),
            "count": int(y.numel()),
            "positive_rate": float(y.to(torch.float64).mean()),
        }
    return out


def evaluate(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    groups: torch.Tensor | None = None,
    domains: torch.Tensor | None = None,
    domain_names: Sequence[str] | None = None,
) -> dict:
    """All metrics of one evaluation as a JSON-serialisable dict.

    Keys: ``auc``, ``logloss``, ``count``; ``gauc`` when ``groups`` is given; ``per_domain`` (see
    :func:`per_domain`), ``domain_auc_mean`` and ``domain_auc_excluded`` (see :func:`domain_auc_mean`) when
    ``domains`` is given. AUC and GAUC are taken on the logits, not on
    probabilities: the sigmoid is monotone, and in float32 it rounds large logits to exactly 1.0,
    which would create ties that the model did not make.
    """
    _check_inputs("logits", logits, labels)
    result: dict = {"auc": auc(logits, labels), "logloss": logloss(logits, labels), "count": logits.numel()}
    if groups is not None:
        result["gauc"] = gauc(logits, labels, groups)
    if domains is not None:
        result["per_domain"] = per_domain(logits, labels, domains, domain_names)
        result["domain_auc_mean"], result["domain_auc_excluded"] = domain_auc_mean(result["per_domain"])
    elif domain_names is not None:
        raise ValueError("domain_names given without domains")
    return result
