"""Synthetic CTR data with a known generating model (numpy + polars only; deterministic from a seed).

``criteo_like``: the Criteo display-ads layout at any size, for speed and memory runs beyond the 7,200-row
sample (the full data is not available here; say so wherever a figure on it is reported). Same columns
and dtypes as :func:`adactr.data.readers.read_criteo`, Kaggle field cardinalities, long-tailed values,
correlated missingness, heavy-tailed integers, and clicks from a hidden logistic model.

``click_world``: a small multi-domain world for the adaptive models (APG, DynInt, AdaSparse, ADL): the
feature -> click mapping changes with the domain and with a latent user cluster::

    logit = b + b_user + b_item
          + <p_user * v_domain, q_item> / sqrt(D)        # user-item match, re-weighted per domain
          + w[domain, cluster] * z(log price)            # price sensitivity: sign differs by domain
          + a * cos(2 pi (hour - peak[domain]) / 24)     # diurnal pattern per domain
          + dev[domain, device] + mean_t T[cluster, t]   # device per domain, tag taste per cluster
"""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import polars as pl

from adactr.errors import ConfigError

# ---------------------------------------------------------------------------------------------------
# Criteo look-alike

CRITEO_ROWS = 45_840_617  # Kaggle Criteo train.txt
# Distinct values per C field in Kaggle train (the counts DLRM uses); each field draws its values from
# exactly this many, so the number of distinct values in n rows grows sub-linearly with n, as in the
# real data (Heaps' law), and never exceeds the full-data cardinality.
CRITEO_CARDINALITIES: tuple[int, ...] = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27, 14992,
    5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
# Zipf-Mandelbrot p(rank r) ~ (r + 1 + q)^-s per C field, fitted so that 7,200 rows reproduce the
# sample's distinct count and top-value share per field (e.g. C3: 4,136 distinct, top value 5%).
_C_ZIPF: tuple[tuple[float, float], ...] = (
    (2.0, 0), (1.7, 4), (1.05, 0.5), (1.1, 0), (2.6, 0), (2.8, 1), (1.1, 16), (2.35, 0), (2.95, 0),
    (1.2, 0), (1.3, 16), (1.05, 0.5), (1.3, 16), (1.5, 0), (1.35, 16), (1.1, 1), (1.55, 0), (1.5, 8),
    (1.4, 0), (0.9, 1), (1.05, 0.5), (2.8, 1), (2.05, 0.5), (1.2, 1), (2.95, 2), (1.15, 0.5))
# Fields that go missing together share one draw (as in the real data, e.g. C19/C20/C25/C26 are empty
# on the same ~44% of rows). Rates are the full-data ones.
_MISSING_GROUPS: tuple[tuple[float, tuple[str, ...]], ...] = (
    (0.454, ("I1", "I10")), (0.215, ("I3",)), (0.223, ("I4", "I13")), (0.224, ("I6",)), (0.026, ("I5",)),
    (0.043, ("I7", "I9", "I11")), (0.0005, ("I8",)), (0.766, ("I12",)),
    (0.034, ("C3", "C4", "C12", "C16", "C21", "C24")), (0.12, ("C6",)),
    (0.44, ("C19", "C20", "C25", "C26")), (0.76, ("C22",)))
# Integer fields: (median, 90th percentile) of the sample and the full-data maximum. Values are
# floor(expm1(N(mu, sigma))) with mu, sigma matching the median and p90: heavy right tails.
_I_SHAPE: tuple[tuple[float, float, int], ...] = (
    (1, 8, 5775), (3, 188, 257675), (7, 51, 65535), (4, 20, 969), (2779, 33138, 23159456),
    (41, 341, 431037), (3, 29, 56311), (7, 35, 6047), (42, 309, 29019), (0, 1, 11), (1, 5, 231),
    (0, 2, 4008), (5, 27, 7393))
_I_CORR = 0.5  # share of a row-level factor in every integer (counts of one user/page move together)
_I2_NEGATIVE = ((-1, 0.08), (-2, 0.015), (-3, 0.005))  # I2 is the only field with negatives (~10%)

# Hidden click model. Per-value effects are hashes of the value, so they are part of the "world" and do
# not depend on the seed: criteo_like(n, seed=1) is a fair test set for a model fit on seed=0.
_C_AMP = {"C1": 0.3, "C2": 0.3, "C3": 0.4, "C4": 0.3, "C5": 0.3, "C6": 0.2, "C8": 0.3, "C9": 0.2,
          "C11": 0.2, "C13": 0.2, "C14": 0.4, "C15": 0.2, "C17": 0.3, "C18": 0.2, "C19": 0.2, "C20": 0.3,
          "C23": 0.4, "C24": 0.2, "C25": 0.2, "C26": 0.2}
_C_PAIRS = (("C14", "C23", 0.5), ("C1", "C20", 0.4))  # second-order effects only a cross/deep part sees
# order=3 only: third-order effects amp * e_a(v_a) * e_b(v_b) * e_c(v_c), a product of one unit effect per
# value of each of three low-cardinality fields. A polynomial of degree 3 in the fields' embeddings (two PIN
# layers, a 3-layer CIN) holds it exactly; FM (degree 2) cannot, and a DNN must approximate the product
_C_TRIPLES = (("C6", "C17", "C23", 0.6), ("C14", "C20", "C25", 0.5))
_I_WEIGHT = {"I1": 0.2, "I3": -0.1, "I5": -0.2, "I6": 0.15, "I7": 0.25, "I11": 0.2, "I13": -0.1}
_I2_CURVE = -0.15  # weight on z(I2)^2 - 1: a non-monotone numeric effect
_CRITEO_BIAS = -1.60  # calibrated (1M rows) so that the click rate is ~25.6%, the Kaggle train rate

_M32 = np.uint64(0xFFFFFFFF)


def criteo_like(n_rows: int, *, seed: int = 0, order: int = 2) -> pl.DataFrame:
    """``n_rows`` rows in the layout of :func:`~adactr.data.readers.read_criteo` (all ``pl.String``).

    ``label`` is ``"0"``/``"1"`` (click rate ~25.6%); ``I1``..``I13`` are integer text or null;
    ``C1``..``C26`` are 8-digit hex text or null. 5M rows take about 15 s on two cores. ``order`` is the
    highest interaction order of the hidden click model: 2 (pairwise effects only, the default) or 3 (two
    third-order effects added, for the polynomial-interaction models of DynInt; the rest is unchanged).

    >>> df = criteo_like(1000, seed=0)
    >>> df.shape, df.columns[:3], df["C9"].n_unique() <= 3
    ((1000, 40), ['label', 'I1', 'I2'], True)
    """
    return _criteo_like(n_rows, seed, order)[0]


def _criteo_like(n_rows: int, seed: int, order: int = 2) -> tuple[pl.DataFrame, np.ndarray]:
    """criteo_like's frame and the hidden click logit of each row (N,)."""
    if n_rows < 1:
        raise ConfigError(f"n_rows must be >= 1, got {n_rows}")
    if order not in (2, 3):
        raise ConfigError(f"order must be 2 or 3, got {order}")
    rng = np.random.default_rng(seed)
    missing: dict[str, np.ndarray] = {}
    for rate, names in _MISSING_GROUPS:
        together = rng.random(n_rows) < rate  # fields missing together share one mask
        missing.update((name, together) for name in names)

    logit = np.full(n_rows, _CRITEO_BIAS)
    cols: dict[str, pl.Series] = {}
    g = rng.standard_normal(n_rows)  # row factor shared by the integers
    for k, (median, p90, top) in enumerate(_I_SHAPE):
        name = f"I{k + 1}"
        mu = np.log1p(median)
        sigma = max((np.log1p(p90) - mu) / 1.2816, 0.3)
        z = _I_CORR * g + np.sqrt(1 - _I_CORR**2) * rng.standard_normal(n_rows)
        v = np.clip(np.floor(np.expm1(mu + sigma * z)), 0, top).astype(np.int64)
        if name == "I2":
            u = rng.random(n_rows)
            lo = 0.0
            for value, p in _I2_NEGATIVE:
                v[(u >= lo) & (u < lo + p)] = value
                lo += p
            logit += _I2_CURVE * (z * z - 1)
        m = missing.get(name)
        if name in _I_WEIGHT:
            logit += _I_WEIGHT[name] * (z if m is None else np.where(m, -0.5, z))
        cols[name] = _with_nulls(pl.Series(name, v).cast(pl.String), m)

    hashes: dict[str, np.ndarray] = {}
    for j, (card, (s, q)) in enumerate(zip(CRITEO_CARDINALITIES, _C_ZIPF, strict=True)):
        name = f"C{j + 1}"
        rank = _zipf_mandelbrot(rng.random(n_rows), card, s, q)
        h = _mix32(rank.astype(np.uint64) + np.uint64(j << 24))  # a bijection: no two values collide
        m = missing.get(name)
        # a missing value has its own effect: the hash of a value no field produces
        hashes[name] = h if m is None else np.where(m, _mix32(np.array([0xFFFF0000 + j], np.uint64)), h)
        if name in _C_AMP:
            logit += _C_AMP[name] * _unit_effect(hashes[name] ^ np.uint64(0x5BD1E995))
        # few distinct values: format each once and gather (a 5M-row frame builds in ~1/3 of the time)
        text = _hex8(_mix32(np.arange(card, dtype=np.uint64) + np.uint64(j << 24))).gather(rank) \
            if card < n_rows else _hex8(h)
        cols[name] = _with_nulls(text.alias(name), m)
    for a, b, amp in _C_PAIRS:
        logit += amp * _unit_effect(_mix32(((hashes[a] * np.uint64(0x9E3779B1)) & _M32) ^ hashes[b]))
    for *names, amp in _C_TRIPLES if order == 3 else ():
        logit += amp * np.prod([_unit_effect(hashes[f] ^ np.uint64(0x3C6EF372)) for f in names], axis=0)

    click = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))
    label = pl.Series("label", click.astype(np.int8)).cast(pl.String)
    order = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    return pl.DataFrame([label, *(cols[c] for c in order[1:])]), logit


def write_criteo_like(path: str | Path, n_rows: int, seed: int = 0, order: int = 2) -> Path:
    """Write :func:`criteo_like` rows as a Criteo file (tab-separated, no header; gzipped if ``.gz``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = criteo_like(n_rows, seed=seed, order=order)
    options = dict(separator="\t", include_header=False, null_value="", quote_style="never")
    if path.suffix == ".gz":
        buf = io.BytesIO()
        df.write_csv(buf, **options)  # type: ignore[call-overload]
        with gzip.open(path, "wb", compresslevel=3) as fh:
            fh.write(buf.getvalue())
    else:
        df.write_csv(path, **options)  # type: ignore[call-overload]
    return path


def _zipf_mandelbrot(u: np.ndarray, card: int, s: float, q: float) -> np.ndarray:
    """Ranks 0..card-1 with p(r) ~ (r + 1 + q)^-s, by inverting the continuous CDF of x^-s."""
    a, b = 1.0 + q, card + 1.0 + q
    if abs(s - 1.0) < 1e-9:
        x = a * (b / a) ** u
    else:
        e = 1.0 - s
        x = (a**e + u * (b**e - a**e)) ** (1.0 / e)
    return np.minimum(np.floor(x - a), card - 1).astype(np.int64)


def _mix32(x: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finaliser (a bijection on 0..2^32-1), computed in uint64 and masked."""
    x = x & _M32
    x ^= x >> np.uint64(16)
    x = (x * np.uint64(0x85EBCA6B)) & _M32
    x ^= x >> np.uint64(13)
    x = (x * np.uint64(0xC2B2AE35)) & _M32
    x ^= x >> np.uint64(16)
    return x


def _unit_effect(h: np.ndarray) -> np.ndarray:
    """A hash -> a deterministic effect with mean 0 and variance 1 (uniform on +-sqrt(3))."""
    return (_mix32(h).astype(np.float64) / 2.0**32 - 0.5) * np.sqrt(12.0)


# byte -> its two hex digits as one little-endian uint16 (so a (n, 4) gather is n 8-byte strings)
_HEX2 = np.array([ord(a) | (ord(b) << 8) for a in "0123456789abcdef" for b in "0123456789abcdef"],
                 dtype="<u2")


def _hex8(h: np.ndarray) -> pl.Series:
    """uint32 values (held in uint64) -> 8-digit lowercase hex strings, without a Python loop."""
    b = h.astype(">u4").view(np.uint8).reshape(-1, 4)  # big-endian bytes: most significant first
    return pl.Series(np.ascontiguousarray(_HEX2[b]).view("S8").ravel()).cast(pl.String)


def _with_nulls(s: pl.Series, missing: np.ndarray | None) -> pl.Series:
    if missing is None or not missing.any():
        return s
    return s.scatter(np.flatnonzero(missing), None)


# ---------------------------------------------------------------------------------------------------
# multi-domain click world

_N_CLUSTERS = 4  # latent user groups with their own tag tastes and price sensitivity
_LATENT = 8  # user/item latent dimension
_N_TAGS = 30
_N_SEGMENTS = 8  # observed user_segment: a noisy view of the latent cluster
_DEVICES = ("android", "ios", "web")
_BASE_CTR = 0.25


def click_world(n_rows: int, *, seed: int = 0, n_domains: int = 3, n_users: int = 2000,
                n_items: int = 1000, domain_tail: float | None = None) -> pl.DataFrame:
    """A multi-domain click log whose click model depends on the domain and on a latent user cluster.

    Domains have unequal sizes (p(domain d) ~ 2^-d: 57/29/14% for three), user and item popularity are
    long-tailed, and the click rate is ~25%. Columns and dtypes: ``label`` (Int8 0/1), ``user_id``,
    ``item_id``, ``item_category``, ``user_segment`` (Int32), ``device`` (String), ``hour`` (Int8, 0-23),
    ``domain`` (Int8; Int16 above 127 domains), ``price`` (Float64, 2 decimals), ``tags`` (String, e.g.
    ``"t3|t17"``). The whole world (users, items, weights) and the rows come from ``seed``: split one call,
    don't mix seeds.

    ``domain_tail=s`` gives many long-tailed domains instead: p(domain d) ~ (d + 1)^-s (Zipf), so that 30 or
    300 domains all get rows (under 2^-d the domains past ~20 get none). With s = 1 and 300 domains the
    largest is 16% of the rows and the smallest 0.05%. The default (None) keeps 2^-d and the rows as they were.

    >>> df = click_world(2000, seed=0)
    >>> df.shape, df.columns[5:]
    ((2000, 10), ['device', 'hour', 'domain', 'price', 'tags'])
    >>> click_world(20_000, seed=0, n_domains=300, domain_tail=1.0)["domain"].n_unique()
    300
    """
    for name, value in (("n_rows", n_rows), ("n_domains", n_domains), ("n_users", n_users),
                        ("n_items", n_items)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if domain_tail is not None and not domain_tail >= 0:
        raise ConfigError(f"domain_tail must be >= 0, got {domain_tail}")
    rng = np.random.default_rng(seed)
    D, K, nd = _LATENT, _N_CLUSTERS, n_domains

    # users: cluster, latent vector P (D), observed segment, preferred device, popularity
    cluster = rng.integers(0, K, n_users)
    P = rng.normal(0, 1, (K, D))[cluster] + 0.6 * rng.normal(0, 1, (n_users, D))  # (U, D)
    segment = np.where(rng.random(n_users) < 0.75, 2 * cluster + rng.integers(0, 2, n_users),
                       rng.integers(0, _N_SEGMENTS, n_users))
    device_by_cluster = np.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.45, 0.45, 0.1]])
    pref_device = _sample_grouped(device_by_cluster, cluster, rng.random(n_users))
    user_pop = _long_tail(n_users, 1.1, 5.0, rng)

    # items: category, latent vector Q (D), price, 1-3 tags, popularity
    n_cat = min(20, n_items)
    category = rng.choice(n_cat, n_items, p=_normalise(1.0 / (np.arange(n_cat) + 2.0)))
    Q = rng.normal(0, 1, (n_cat, D))[category] + 0.6 * rng.normal(0, 1, (n_items, D))  # (I, D)
    item_price = np.exp(rng.normal(3.0, 0.8, n_cat))[category] * np.exp(0.3 * rng.normal(0, 1, n_items))
    item_tags = np.stack([category % _N_TAGS, rng.integers(0, _N_TAGS, n_items),
                          rng.integers(0, _N_TAGS, n_items)], axis=1)  # (I, 3)
    item_tags[:, 1:][rng.random((n_items, 2)) < np.array([0.4, 0.7])] = -1  # 1, 2 or 3 tags
    item_pop = _long_tail(n_items, 1.2, 3.0, rng)

    # domains: size, item taste by category, latent re-weighting, hour pattern, price/device weights
    dom_p = _normalise(0.5 ** np.arange(nd) if domain_tail is None else (np.arange(nd) + 1.0) ** -domain_tail)
    cat_taste = 0.8 * rng.normal(0, 1, (nd, n_cat))
    item_p = _normalise_rows(item_pop[None, :] * np.exp(cat_taste[:, category]))  # (nd, I)
    v = np.ones((nd, D))
    v[1:] = np.where(rng.random((nd - 1, D)) < 0.4, -1.0, 1.0) * rng.uniform(0.5, 1.5, (nd - 1, D))
    traffic_peak = (20 + 7 * np.arange(nd)) % 24
    click_peak = (traffic_peak + 6) % 24
    hours = np.arange(24)
    hour_p = _normalise_rows(1 + 0.8 * np.cos(2 * np.pi * (hours[None, :] - traffic_peak[:, None]) / 24))
    w_price = (np.linspace(-1.0, 0.8, nd) if nd > 1 else np.array([-0.5]))[:, None] \
        + np.linspace(-0.5, 0.5, K)[None, :]  # (nd, K): price sensitivity by domain and cluster
    dev_w = 0.4 * rng.normal(0, 1, (nd, len(_DEVICES)))
    tag_w = 0.6 * rng.normal(0, 1, (K, _N_TAGS))
    b_user, b_item = 0.3 * rng.normal(0, 1, n_users), 0.3 * rng.normal(0, 1, n_items)

    # impressions
    dom = rng.choice(nd, n_rows, p=dom_p)
    user = _sample(user_pop, rng.random(n_rows))
    item = _sample_grouped(item_p, dom, rng.random(n_rows))
    hour = _sample_grouped(hour_p, dom, rng.random(n_rows))
    device = np.where(rng.random(n_rows) < 0.8, pref_device[user], rng.integers(0, len(_DEVICES), n_rows))
    price = np.round(item_price[item] * np.exp(0.15 * rng.normal(0, 1, n_rows)), 2)
    log_p = np.log(item_price)
    z_price = (np.log(np.maximum(price, 0.01)) - log_p.mean()) / max(log_p.std(), 1e-6)
    c = cluster[user]
    tags = item_tags[item]  # (N, 3), -1 = none
    has = tags >= 0
    tag_eff = (tag_w[c[:, None], np.maximum(tags, 0)] * has).sum(1) / has.sum(1)

    logit = (b_user[user] + b_item[item]
             + (P[user] * v[dom] * Q[item]).sum(1) / np.sqrt(D)  # (N,)
             + w_price[dom, c] * z_price
             + 0.6 * np.cos(2 * np.pi * (hour - click_peak[dom]) / 24)
             + dev_w[dom, device] + tag_eff)
    logit += _bias_for_rate(logit, _BASE_CTR)
    label = rng.random(n_rows) < 1.0 / (1.0 + np.exp(-logit))

    tag_text = _tag_strings(item_tags)
    return pl.DataFrame({
        "label": pl.Series(label.astype(np.int8)),
        "user_id": pl.Series(user.astype(np.int32)),
        "item_id": pl.Series(item.astype(np.int32)),
        "item_category": pl.Series(category[item].astype(np.int32)),
        "user_segment": pl.Series(segment[user].astype(np.int32)),
        "device": pl.Series(_DEVICES, dtype=pl.String).gather(device),
        "hour": pl.Series(hour.astype(np.int8)),
        "domain": pl.Series(dom.astype(np.int8 if nd <= 127 else np.int16)),
        "price": pl.Series(price),
        "tags": tag_text.gather(item),
    })


def write_click_world(directory: str | Path, *, n_rows: int = 200_000, seed: int = 0, n_domains: int = 3,
                      domain_tail: float | None = None) -> dict[str, Path]:
    """Write one :func:`click_world` as ``train.csv`` / ``valid.csv`` / ``test.csv`` (80/10/10, headers).

    Rows are i.i.d., so the split is by position. 200k rows train a demo model in about a minute on two
    CPU cores. Returns ``{"train": path, "valid": path, "test": path}``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    df = click_world(n_rows, seed=seed, n_domains=n_domains, domain_tail=domain_tail)
    a, b = int(round(0.8 * n_rows)), int(round(0.9 * n_rows))
    paths = {}
    for name, part in (("train", df[:a]), ("valid", df[a:b]), ("test", df[b:])):
        paths[name] = directory / f"{name}.csv"
        part.write_csv(paths[name])
    return paths


def _normalise(w: np.ndarray) -> np.ndarray:
    return w / w.sum()


def _normalise_rows(w: np.ndarray) -> np.ndarray:
    return w / w.sum(axis=1, keepdims=True)


def _long_tail(n: int, s: float, q: float, rng: np.random.Generator) -> np.ndarray:
    """Popularity ~ (rank + q)^-s over ids in a random order (so popular ids are not the small ones)."""
    return _normalise((np.arange(n) + q) ** -s)[rng.permutation(n)]


def _sample(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF draws from one distribution p (K,) for uniforms u (N,)."""
    return np.minimum(np.searchsorted(np.cumsum(p), u, side="right"), len(p) - 1)


def _sample_grouped(p: np.ndarray, group: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One draw per row from its group's distribution: p (G, K), group (N,), u (N,) -> (N,) in 0..K-1.

    The G CDFs are laid end to end, shifted by their group number, so one searchsorted serves all rows.
    """
    G, K = p.shape
    cdf = (np.cumsum(p, axis=1) + np.arange(G)[:, None]).ravel()  # (G*K,), group g in [g, g+1]
    idx = np.searchsorted(cdf, u + group, side="right") - group * K
    return np.clip(idx, 0, K - 1)


def _bias_for_rate(logit: np.ndarray, rate: float) -> float:
    """The shift b with mean(sigmoid(logit + b)) = rate (bisection; the mean is monotone in b)."""
    lo, hi = -20.0, 20.0
    sample = logit[: 200_000]
    for _ in range(50):
        mid = (lo + hi) / 2
        if np.mean(1.0 / (1.0 + np.exp(-(sample + mid)))) < rate:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _tag_strings(item_tags: np.ndarray) -> pl.Series:
    """(I, 3) tag ids, -1 = none -> one "t3|t17" string per item (duplicates removed, order kept)."""
    n_items = item_tags.shape[0]
    long = pl.DataFrame({"item": np.repeat(np.arange(n_items), item_tags.shape[1]),
                         "tag": item_tags.ravel()})
    text = (long.filter(pl.col("tag") >= 0).unique(maintain_order=True)
            .group_by("item", maintain_order=True)
            .agg(pl.format("t{}", pl.col("tag")).str.join("|").alias("tags")))
    return text.sort("item")["tags"]
