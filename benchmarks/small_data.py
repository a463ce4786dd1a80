"""Small, imbalanced data: adactr's defaults against scikit-learn's logistic regression (issue 18).

    python benchmarks/small_data.py --shared ../shared/data --work bench_out/small --seeds 1,2,3

Builds subsets of Frappe_x1 and MovieLens-1M the way a user's small advertising log looks (a few
thousand rows, 1-3 % positives): each split (train / valid / test = 80 / 10 / 10 % of the total) is drawn
from the same split of the source, negatives and positives sampled separately so that the positive rate
is exactly the one asked for. Each seed draws its own subsample (and seeds the training), so the spread
over seeds is the spread a user would see across data sets of this size, not only across initialisations.
Every subset is prepared with ``adactr prepare`` (MovieLens-1M: ``rating`` and ``domain`` ignored; the
domain is the age group, already a feature).

Then, per subset and seed: scikit-learn ``LogisticRegression`` (L2, lbfgs) on the one-hot encoding of the
same prepared arrays, C chosen on validation AUC from a grid, and ``adactr train`` of LR, FM, DNN and
DeepFM with default settings. Finished runs are cached in ``--work`` (JSON per run), so a stopped table
resumes; the cache key does not cover the code: delete ``--work``/results after changing the trainer.
Everything written lives under ``--work`` (git-ignored ``bench_out/`` by default): the subsets are
derived from data that must not be redistributed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "valid", "test")
FRACTIONS = (0.8, 0.1, 0.1)


@dataclass(frozen=True)
class Subset:
    name: str  # shown in the table
    source: str  # folder under the shared data directory
    rows: int  # total over the three splits
    positive_rate: float
    prepare_args: tuple[str, ...] = ()

    def key(self, seed: int) -> str:
        return f"{self.source}-{self.rows}-p{self.positive_rate:g}-s{seed}"


ML_ARGS = ("--ignore", "rating,domain")
SUBSETS = (
    Subset("Frappe_x1 20k", "frappe_x1", 20_000, 0.02),
    Subset("Frappe_x1 100k", "frappe_x1", 100_000, 0.02),
    Subset("MovieLens-1M 20k", "movielens_1m", 20_000, 0.02, ML_ARGS),
    Subset("MovieLens-1M 100k", "movielens_1m", 100_000, 0.02, ML_ARGS),
)
MODELS = ("lr", "fm", "dnn", "deepfm")
C_GRID = (1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def build_subset(shared: Path, subset: Subset, seed: int, out: Path) -> Path:
    """Raw CSV files of one subsample in ``out`` (gzipped, same columns as the source); returns ``out``."""
    import polars as pl

    if (out / "test.csv.gz").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, subset.rows, int(subset.positive_rate * 1e6)])
    for split, frac in zip(SPLITS, FRACTIONS, strict=True):
        df = pl.read_csv(shared / subset.source / f"{split}.csv.gz", infer_schema_length=0)  # all strings
        label = df["label"].cast(pl.Int64).to_numpy()
        n = round(subset.rows * frac)
        n_pos = max(1, round(n * subset.positive_rate))
        pos, neg = np.flatnonzero(label == 1), np.flatnonzero(label == 0)
        if n_pos > len(pos) or n - n_pos > len(neg):
            raise SystemExit(f"{subset.name}: {split} has {len(pos)} positives / {len(neg)} negatives, "
                             f"{n_pos} / {n - n_pos} asked for")
        rows = np.concatenate([rng.choice(pos, n_pos, replace=False), rng.choice(neg, n - n_pos, replace=False)])
        rows = rng.permutation(rows)
        tmp = out / f"{split}.csv.gz.tmp"
        import gzip

        with gzip.open(tmp, "wb") as f:
            df[rows].write_csv(f)
        tmp.replace(out / f"{split}.csv.gz")
    return out


def prepare_subset(raw: Path, subset: Subset, out: Path) -> Path:
    from adactr.cli import main as adactr

    if (out / "schema.json").exists():
        return out
    rc = adactr(["prepare", "--train", str(raw / "train.csv.gz"), "--valid", str(raw / "valid.csv.gz"),
                 "--test", str(raw / "test.csv.gz"), *subset.prepare_args, "--out", str(out), "--overwrite",
                 "--quiet"])
    if rc:
        raise SystemExit(f"adactr prepare failed for {raw}")
    return out


def one_hot(data: Path, split: str):
    """The prepared split's categorical indices as a sparse one-hot matrix (one column per index of every
    field, OOV and missing slots included, as adactr's LR sees them) and its labels."""
    import scipy.sparse as sp

    from adactr.data.schema import Schema

    sizes = Schema.load(data / "schema.json").layout().cat_sizes
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    cat = np.load(data / split / "cat.npy").astype(np.int64) + offsets  # (N, F)
    n, f = cat.shape
    x = sp.csr_matrix((np.ones(n * f), cat.ravel(), np.arange(0, n * f + 1, f)), shape=(n, int(sum(sizes))))
    return x, np.load(data / split / "label.npy")


def sklearn_lr(data: Path, grid: tuple[float, ...] = C_GRID) -> dict:
    """L2 logistic regression (lbfgs) for every C of ``grid``; the kept C is the one with the lowest
    validation log loss (validation AUC on a few dozen positives picks C almost at random: see the docs).
    Also records the test AUC that choosing C by validation AUC would have given."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss, roc_auc_score

    xs = {s: one_hot(data, s) for s in SPLITS}
    runs = []
    for c in grid:
        m = LogisticRegression(C=c, solver="lbfgs", max_iter=10_000).fit(*xs["train"])
        pv, pt = (m.predict_proba(xs[s][0])[:, 1] for s in ("valid", "test"))
        runs.append({"C": c, "valid": {"auc": float(roc_auc_score(xs["valid"][1], pv)),
                                       "logloss": float(log_loss(xs["valid"][1], pv))},
                     "test": {"auc": float(roc_auc_score(xs["test"][1], pt)),
                              "logloss": float(log_loss(xs["test"][1], pt))}})
    by_loss = min(runs, key=lambda r: r["valid"]["logloss"])
    by_auc = max(runs, key=lambda r: r["valid"]["auc"])
    return {**by_loss, "by_valid_auc": {"C": by_auc["C"], "test": by_auc["test"]}, "grid": runs}


def adactr_run(data: Path, model: str, seed: int, sets: list[str]) -> dict:
    from adactr.config import override, parse_sets
    from adactr.train.config import RunConfig
    from adactr.train.run import train_run

    cfg = override(RunConfig(), parse_sets([*sets, f"train.seed={seed}", "train.progress=false"]))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = train_run(data=data, model_name=model, out=Path(tmp) / "run", config=cfg)
        r["config"] = json.loads((Path(tmp) / "run" / "config.json").read_text())["config"]["train"]
    r["warnings"] = [str(w.message) for w in caught]
    return r


def cached(path: Path, fn):
    if path.exists():
        return json.loads(path.read_text())
    r = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part")
    tmp.write_text(json.dumps(r, default=str))
    tmp.replace(path)
    return r


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def signed(values: list[float]) -> str:
    text = mean_std(values)
    return "+" + text if statistics.mean(values) >= 0 else text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--work", type=Path, default=Path("bench_out/small"))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--subsets", default=",".join(s.name for s in SUBSETS),
                    help="comma-separated names from: " + ", ".join(s.name for s in SUBSETS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--set", action="append", default=[], help="config override for every adactr run")
    ap.add_argument("--tag", default="defaults", help="cache folder name for these adactr settings")
    ap.add_argument("--out", type=Path, help="write every run's results as JSON here")
    args = ap.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    wanted = [n.strip() for n in args.subsets.split(",") if n.strip()]
    subsets = [s for s in SUBSETS if s.name in wanted]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    sets = [*args.set, "train.threads=1"] if not any(s.startswith("train.threads=") for s in args.set) else args.set
    t0 = time.perf_counter()
    table: dict[str, dict[str, list[dict]]] = {}
    for sub in subsets:
        table[sub.name] = {k: [] for k in ("sklearn", *models)}
        for seed in seeds:
            key = sub.key(seed)
            raw = build_subset(args.shared, sub, seed, args.work / "raw" / key)
            data = prepare_subset(raw, sub, args.work / "prepared" / key)
            sk = cached(args.work / "results" / "sklearn" / f"{key}.json", lambda d=data: sklearn_lr(d))
            table[sub.name]["sklearn"].append(sk)
            print(f"[{time.perf_counter() - t0:.0f}s] {key} sklearn LR C={sk['C']}: test AUC {sk['test']['auc']:.4f}",
                  file=sys.stderr, flush=True)
            for model in models:
                r = cached(args.work / "results" / args.tag / f"{key}-{model}.json",
                           lambda d=data, m=model, s=seed: adactr_run(d, m, s, sets))
                table[sub.name][model].append(r)
                print(f"[{time.perf_counter() - t0:.0f}s] {key} {model}: test AUC {r['test']['auc']:.4f} "
                      f"epochs {r['epochs']} best {r['best_epoch']}", file=sys.stderr, flush=True)

    names = {"lr": "LR", "fm": "FM", "dnn": "DNN", "deepfm": "DeepFM"}
    head = ["subset (positive rate)", "sklearn LR", *[f"adactr {names.get(m, m)}" for m in models],
            *[f"{names.get(m, m)} − sklearn" for m in models], "sklearn LR, C by valid AUC"]
    print(f"\ntest AUC, mean ± std over seeds {args.seeds} (each seed its own subsample); differences per seed "
          f"(same subsample), then mean ± std")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for sub in subsets:
        row = table[sub.name]
        cells = [f"{sub.name} ({sub.positive_rate:.0%})", mean_std([r["test"]["auc"] for r in row["sklearn"]])]
        cells += [mean_std([r["test"]["auc"] for r in row[m]]) for m in models]
        for m in models:
            diff = [a["test"]["auc"] - b["test"]["auc"] for a, b in zip(row[m], row["sklearn"], strict=True)]
            cells.append(signed(diff))
        cells.append(mean_std([r["by_valid_auc"]["test"]["auc"] for r in row["sklearn"]]))
        print("| " + " | ".join(cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"seeds": seeds, "sets": sets, "results": table}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
