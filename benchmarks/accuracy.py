"""Accuracy tables: models x seeds on prepared datasets, mean +- std, printed as Markdown.

    python benchmarks/accuracy.py --data prepared/frappe --models lr,fm,dnn,deepfm,dcnv2 --seeds 1,2,3 \
        --set model.dropout=0.2 --out bench_out/frappe.json

Each (model, seed) is a full `adactr train` run (early stopping on validation AUC, best weights) through
the same function the CLI calls; the table reports the test split. Per-domain AUC and GAUC columns appear
when the dataset has domain / group columns.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from adactr.config import override, parse_sets
from adactr.train.config import RunConfig
from adactr.train.run import train_run


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def run_grid(data: Path, models: list[str], seeds: list[int], sets: list[str],
             per_model: dict[str, list[str]] | None = None) -> dict[str, list[dict]]:
    """Train every (model, seed) with the same overrides; the results of each run (metrics.json, no history)."""
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            for seed in seeds:
                cfg = override(RunConfig(), parse_sets([*sets, *(per_model or {}).get(model, []),
                                                        f"train.seed={seed}", "train.progress=false"]))
                t0 = time.perf_counter()
                r = train_run(data=data, model_name=model, out=Path(tmp) / f"{model}-{seed}", config=cfg)
                r.pop("history", None)
                results.setdefault(model, []).append(r)
                print(f"{model} seed {seed}: test AUC {r['test']['auc']:.5f} logloss {r['test']['logloss']:.5f} "
                      f"epochs {r['epochs']} ({time.perf_counter() - t0:.0f}s, {r['samples_per_second']:.0f}/s)",
                      file=sys.stderr, flush=True)
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
    ap.add_argument("--label", default="", help="name shown in the table header")
    args = ap.parse_args(argv)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_model: dict[str, list[str]] = {}
    for item in args.model_set:
        name, kv = item.split(":", 1)
        per_model.setdefault(name, []).append(kv)
    results = run_grid(args.data, models, seeds, args.set, per_model)

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
