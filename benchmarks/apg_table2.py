"""APG Table 2: each backbone with static deep layers (Base) and with APG in them (+APG), several seeds.

    python benchmarks/apg_table2.py --data data/frappe --seeds 1,2,3 --jobs 2 \\
        --set model.dropout=0.2 --set model.batch_norm=true --set train.embedding_l2=0.1 \\
        --apg-set model.apg.rank=16 --apg-set model.apg.overparam_dim=128 \\
        --variant "self=model.apg.condition=self" \\
        --variant "group(user)=model.apg.condition=group model.apg.condition_fields=user"

Base and +APG differ only by ``model.tower_layer=apg`` plus the --apg-set overrides and the variant's
own overrides (space-separated); the backbone, its hyper-parameters, data and seeds are the same. Δ is
the mean of the per-seed differences (+APG - Base, same seed) ± their standard deviation, and (k/n) the
seeds where +APG is at or above Base; elsewhere "±" is the standard deviation over seeds. AutoInt's deep layers
are its AutoInt+ tower (plain AutoInt has none). --cache keeps finished runs, so a stopped table resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import mean_std, paired_delta, run_grid  # noqa: E402


def layer_adaptivity(runs: list[dict]) -> str:
    """Each adaptive part's adaptivity, mean over the runs, "a / b / c" in model order: the ``weight`` entry
    (what the instance gets) where the runs have it, else ``S:`` and the generator's ``S``."""
    parts = list(runs[0].get("adaptivity", {}))
    if not parts:
        return "-"
    key = "weight" if all("weight" in r["adaptivity"][p] for r in runs for p in parts) else "S"
    vals = [statistics.mean(r["adaptivity"][p][key]["adaptivity"] for r in runs) for p in parts]
    return ("" if key == "weight" else "S: ") + " / ".join(f"{v:.2f}" for v in vals)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--models", default="wdl,ipnn,fibinet,difm,deepfm,dcn,autoint")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--apg-set", action="append", default=[], help="override for every +APG run")
    ap.add_argument("--variant", action="append", default=[],
                    help='an APG variant: "NAME=key=value key=value ..." (default: one, "+APG", no extra keys)')
    ap.add_argument("--label", default="")
    ap.add_argument("--title", default="APG Table 2", help="the table's name in the printed heading")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (1 thread each)")
    ap.add_argument("--cache", type=Path, help="directory of finished runs (reused)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_model = {"autoint": ["model.autoint_plus=true"]}
    variants: dict[str, list[str]] = {"Base": []}
    for v in args.variant or ["+APG="]:
        name, _, sets = v.partition("=")
        variants[name] = ["model.tower_layer=apg", *args.apg_set, *sets.split()]
    res = run_grid(args.data, models, seeds, args.set, per_model, jobs=args.jobs, cache=args.cache,
                   variants=variants)
    names = [n for n in variants if n != "Base"]

    def auc(runs: list[dict]) -> list[float]:
        return [r["test"]["auc"] for r in runs]

    print(f"\n{args.label} {args.title} ({len(seeds)} seeds; test AUC mean ± std; "
          f"{' '.join(args.apg_set) or 'APG defaults'})")
    print("| backbone | Base | " + " | ".join(f"+APG {n} | Δ" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for m in models:
        b = auc(res["Base"][m])
        cells = [mean_std(b)]
        for n in names:
            a = auc(res[n][m])
            cells += [mean_std(a), paired_delta(a, b)]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print("\nTest LogLoss")
    print("| backbone | Base | " + " | ".join(f"+APG {n}" for n in names) + " |")
    print("|---|---|" + "---|" * len(names))
    for m in models:
        print(f"| {m} | " + " | ".join(mean_std([r["test"]["logloss"] for r in res[n][m]])
                                       for n in ["Base", *names]) + " |")
    print("\nParameters, and the adaptivity of each APG layer at the end of training (mean over seeds; the "
          "weight each instance gets, or S for runs measured before the weight was)")
    print("| backbone | Base params | " + " | ".join(f"+APG {n} params | {n} adaptivity" for n in names) + " |")
    print("|---|---|" + "---|---|" * len(names))
    for m in models:
        cells = [f"{res['Base'][m][0]['params']:,}"]
        for n in names:
            cells += [f"{res[n][m][0]['params']:,}", layer_adaptivity(res[n][m])]
        print(f"| {m} | " + " | ".join(cells) + " |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"results": res, "args": vars(args)}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
