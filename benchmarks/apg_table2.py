"""APG Table 2: each backbone with static deep layers (Base) and with APG in them (+APG), several seeds.

    python benchmarks/apg_table2.py --data prepared/frappe --models wdl,ipnn,fibinet,difm,deepfm,dcn,autoint \\
        --seeds 1,2,3 --set model.dropout=0.2 --set model.batch_norm=true --set train.embedding_l2=0.1 \\
        --apg-set model.apg.condition=self

Base and +APG differ only by ``model.tower_layer=apg`` (plus the --apg-set overrides); the backbone, its
hyper-parameters, data and seeds are the same. Δ is the difference of the mean test AUCs; "±" is the
standard deviation over seeds. AutoInt's deep layers are its AutoInt+ tower (plain AutoInt has none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import mean_std, run_grid  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--models", default="wdl,ipnn,fibinet,difm,deepfm,dcn,autoint")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--apg-set", action="append", default=[], help="override for the +APG runs only")
    ap.add_argument("--label", default="")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_model = {"autoint": ["model.autoint_plus=true"]}
    base = run_grid(args.data, models, seeds, args.set, per_model)
    apg = run_grid(args.data, models, seeds, [*args.set, "model.tower_layer=apg", *args.apg_set], per_model)
    print(f"\n{args.label} APG Table 2 ({len(seeds)} seeds; {' '.join(args.apg_set) or 'APG defaults'})")
    print("| backbone | Base AUC | +APG AUC | Δ AUC | Base LogLoss | +APG LogLoss |")
    print("|---|---|---|---|---|---|")
    for m in models:
        b = [r["test"]["auc"] for r in base[m]]
        a = [r["test"]["auc"] for r in apg[m]]
        print(f"| {m} | {mean_std(b)} | {mean_std(a)} | {statistics.mean(a) - statistics.mean(b):+.4f} | "
              f"{mean_std([r['test']['logloss'] for r in base[m]])} | "
              f"{mean_std([r['test']['logloss'] for r in apg[m]])} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"base": base, "apg": apg, "args": vars(args)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
