"""Accuracy tables: models x seeds on prepared datasets, mean +- std, printed as Markdown.

    python benchmarks/accuracy.py --data prepared/frappe --models lr,fm,dnn,deepfm,dcnv2 --seeds 1,2,3 \
        --set model.dropout=0.2 --out bench_out/frappe.json

Each (model, seed) is a full `adactr train` run (early stopping on validation AUC, best weights) through
the same function the CLI calls; the table reports the test split. Per-domain AUC and GAUC columns appear
when the dataset has domain / group columns.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import ExitStack
from pathlib import Path

from adactr.config import override, parse_sets, to_dict
from adactr.train.config import RunConfig
from adactr.train.run import train_run


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def paired_delta(a: list[float], b: list[float]) -> str:
    """``a - b`` seed by seed (both lists in the same seed order): the mean difference, the standard
    deviation of the per-seed differences, and how many seeds have ``a >= b``. Runs with the same seed share
    their data order and part of their initialisation, so the per-seed difference is less noisy than the
    two columns' own spreads suggest (or more, when it is not). "-" when a run lacks the metric (NaN)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    if any(x != x for x in d):  # a run without the metric (NaN)
        return "-"
    if len(d) == 1:
        return f"{d[0]:+.4f}"
    return f"{statistics.mean(d):+.4f} ± {statistics.stdev(d):.4f} ({sum(x >= 0 for x in d)}/{len(d)})"


def read_cached(hit: Path | None, config: dict) -> dict | None:
    """The run cached at ``hit``, or None when there is none or it is stale.

    The cache key is the overrides, not the code, so a changed default would silently reuse runs trained
    with the old one. Each entry therefore stores its resolved configuration (``config``: every setting,
    defaults included); an entry whose stored configuration differs from ``config`` is moved to ``stale/``
    beside it, reported on stderr, and the run is trained again. A setting added to the library after the
    entry was stored is not a difference: a new option's default must keep the behaviour the library had
    without it (the rule every option added so far follows), so the entry was trained under that default.
    Entries written before configurations were stored carry none and are trusted.
    """
    if hit is None or not hit.exists():
        return None
    r = json.loads(hit.read_text())
    stored = r.get("config")
    if stored is None:
        return r
    changed = sorted(_diff_keys(stored, config))
    if not changed:
        return r
    stale = hit.parent / "stale" / hit.name
    stale.parent.mkdir(parents=True, exist_ok=True)
    hit.replace(stale)
    print(f"stale cache entry {hit.name} (settings changed since: {', '.join(changed[:6])}"
          f"{' ...' if len(changed) > 6 else ''}): moved to {stale.parent}, training again",
          file=sys.stderr, flush=True)
    return None


_ABSENT = object()


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    """The settings of stored configuration ``a`` that ``b`` drops or sets otherwise (keys ``b`` adds are
    options added since ``a`` was stored: not a difference, see :func:`read_cached`)."""
    out = []
    for k in sorted(a):
        x, y = a[k], b.get(k, _ABSENT)
        if isinstance(x, dict) and isinstance(y, dict):
            out += _diff_keys(x, y, f"{prefix}{k}.")
        elif x != y:
            out.append(f"{prefix}{k}")
    return out


def write_cached(hit: Path | None, r: dict, config: dict) -> None:
    """Store run ``r`` at ``hit`` with its resolved configuration and the code's commit (atomically)."""
    if hit is None:
        return
    r["config"] = config
    r.setdefault("commit", _commit())
    hit.parent.mkdir(parents=True, exist_ok=True)
    tmp_hit = hit.with_suffix(".part")
    tmp_hit.write_text(json.dumps(r, default=str))
    tmp_hit.replace(hit)


def _commit() -> str | None:
    """The checkout's commit (a dirty tree marked ``+``), for provenance; None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def data_fingerprint(data: Path) -> str:
    """What identifies a prepared dataset in a cache key: its schema (fields, kinds, vocabulary sizes) and
    rows per split, not where it lies, so a cache committed from one checkout is reused by another (the
    tables take longer than a session, and a session may start on a fresh machine). A directory without
    a schema.json (not a prepared one) is keyed by its resolved path."""
    schema, meta = data / "schema.json", data / "meta.json"
    if not schema.exists():
        return str(data.resolve())
    rows = json.loads(meta.read_text()).get("rows") if meta.exists() else None
    return "schema:" + hashlib.sha1((schema.read_text() + json.dumps(rows, sort_keys=True)).encode()).hexdigest()


def _train_one(data: str, model: str, sets: list[str], cache: str | None) -> dict:
    """One full training run (in a worker process when jobs > 1); its metrics.json without the history."""
    key = hashlib.sha1(json.dumps([data_fingerprint(Path(data)), model, sets]).encode()).hexdigest()[:16]
    hit = Path(cache) / f"{model}-{key}.json" if cache else None
    cfg = override(RunConfig(), parse_sets([*sets, "train.progress=false"]))
    resolved = to_dict(cfg)
    r = read_cached(hit, resolved)
    if r is not None:
        return r
    with tempfile.TemporaryDirectory() as tmp:
        r = train_run(data=Path(data), model_name=model, out=Path(tmp) / "run", config=cfg)
    r.pop("history", None)
    r["overrides"] = sets
    write_cached(hit, r, resolved)
    return r


def one_thread_each(sets: list[str], jobs: int) -> list[str]:
    """``sets`` with ``train.threads=1`` appended when ``jobs`` > 1 trainings share the machine (unless the
    threads are given). Appended last, after the seed: that layout is the cache key every script shares."""
    if jobs > 1 and not any(x.startswith("train.threads=") for x in sets):
        return [*sets, "train.threads=1"]
    return list(sets)


def run_tasks(data: Path, tasks: list[tuple[str, str, list[str]]], *, jobs: int = 1, cache: Path | None = None,
              describe: Callable[[dict], str] | None = None) -> list[dict]:
    """Train each task (name, model, overrides); the runs' metrics (no history) in task order.

    ``jobs`` > 1 runs that many trainings at once, each in its own process. Each run is reported on stderr
    as it finishes (``[n/N seconds] name: describe(run)``), not in submission order, where one slow run
    would hide the others. A failed run is reported at once with its name and the others go on (and are
    cached); when all are done, ``SystemExit`` names every failure. ``cache``: see ``run_grid``.
    """
    describe = describe or (lambda r: f"test AUC {r['test']['auc']:.5f} logloss {r['test']['logloss']:.5f} "
                                      f"epochs {r['epochs']} ({r['samples_per_second']:.0f}/s)")
    cache_s = str(cache) if cache else None
    t0 = time.perf_counter()
    done: dict[int, dict] = {}
    failed: list[str] = []

    def report(k: int, r: dict | None, error: BaseException | None) -> None:
        name = tasks[k][0]
        head = f"[{len(done) + len(failed) + 1}/{len(tasks)} {time.perf_counter() - t0:.0f}s] {name}:"
        if error is not None:
            failed.append(f"{name}: {type(error).__name__}: {error}")
            print(f"{head} FAILED ({type(error).__name__}: {error})", file=sys.stderr, flush=True)
        else:
            done[k] = r
            print(f"{head} {describe(r)}", file=sys.stderr, flush=True)

    with ExitStack() as stack:
        if jobs <= 1:
            for k, (_, model, sets) in enumerate(tasks):
                try:
                    r = _train_one(str(data), model, sets, cache_s)
                except Exception as e:  # noqa: BLE001 - reported with its task, the other runs go on
                    report(k, None, e)
                else:
                    report(k, r, None)
        else:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=jobs,
                                                           mp_context=multiprocessing.get_context("spawn")))
            futures = {pool.submit(_train_one, str(data), model, sets, cache_s): k
                       for k, (_, model, sets) in enumerate(tasks)}
            for f in as_completed(futures):
                err = f.exception()
                report(futures[f], None if err else f.result(), err)
    if failed:
        raise SystemExit(f"{len(failed)} of {len(tasks)} runs failed (the others are cached): " + "; ".join(failed))
    return [done[k] for k in range(len(tasks))]


def run_grid(data: Path, models: list[str], seeds: list[int], sets: list[str],
             per_model: dict[str, list[str]] | None = None, *, jobs: int = 1, cache: Path | None = None,
             variants: dict[str, list[str]] | None = None) -> dict[str, dict[str, list[dict]]]:
    """Train every (variant, model, seed); results[variant][model] = the runs' metrics (no history).

    ``variants`` maps a name to extra overrides (default: one variant "" with none). ``jobs`` > 1 runs
    that many trainings at once, each in its own process with ``train.threads`` set to 1 unless given.
    ``cache``: a directory of finished runs keyed by (data, model, overrides); a run found there is not
    repeated, so an interrupted grid picks up where it stopped. The key does not cover the code: a run
    whose resolved configuration changed (a new default) is retrained (``read_cached``), but empty the cache
    after changing a model's or the trainer's code. Runs are reported and failures handled as in
    ``run_tasks``.
    """
    variants = variants or {"": []}
    keys, tasks = [], []
    # model-major order: if the grid is stopped, the finished part is whole rows (every variant and seed)
    for model in models:
        for vname, vsets in variants.items():
            for seed in seeds:
                run_sets = [*sets, *vsets, *(per_model or {}).get(model, []), f"train.seed={seed}"]
                keys.append((vname, model))
                tasks.append((f"{vname or model} {model} seed {seed}", model, one_thread_each(run_sets, jobs)))
    results: dict[str, dict[str, list[dict]]] = {v: {m: [] for m in models} for v in variants}
    for (vname, model), r in zip(keys, run_tasks(data, tasks, jobs=jobs, cache=cache), strict=True):
        results[vname][model].append(r)
    return results


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--models", required=True, help="comma-separated model names")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--model-set", action="append", default=[],
                    help="override for one model: NAME:key=value (e.g. dcnv2:model.cross_layers=2)")
    ap.add_argument("--out", type=Path, help="write all results as JSON here")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (each 1 thread unless --set train.threads)")
    ap.add_argument("--cache", type=Path, help="directory of finished runs: reused, so a stopped grid resumes")
    ap.add_argument("--label", default="", help="name shown in the table header")
    args = ap.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_model: dict[str, list[str]] = {}
    for item in args.model_set:
        name, kv = item.split(":", 1)
        per_model.setdefault(name, []).append(kv)
    results = run_grid(args.data, models, seeds, args.set, per_model, jobs=args.jobs, cache=args.cache)[""]

    first = next(iter(results.values()))[0]["test"]
    has_gauc = "gauc" in first
    domains = sorted(d for d, v in first.get("per_domain", {}).items() if v["count"] > 0)
    head = ["model", "test AUC", "test LogLoss"] + (["GAUC"] if has_gauc else []) + \
        [f"AUC domain {d}" for d in domains] + ["epochs", "samples/s"]
    print(f"\n{args.label} ({len(seeds)} seeds: {args.seeds}; device {first and results[models[0]][0]['device']})")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for model, runs in results.items():
        row = [model, mean_std([r["test"]["auc"] for r in runs]), mean_std([r["test"]["logloss"] for r in runs])]
        if has_gauc:
            row.append(mean_std([r["test"]["gauc"] for r in runs]))
        row += [mean_std([r["test"]["per_domain"][d]["auc"] for r in runs]) for d in domains]
        row += [f"{statistics.mean(r['epochs'] for r in runs):.1f}",
                f"{statistics.mean(r['samples_per_second'] for r in runs):,.0f}"]
        print("| " + " | ".join(row) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"data": str(args.data), "out": str(args.out)},
                                        "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
