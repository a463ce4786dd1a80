"""What GroupLasso-FTRL buys: one model trained with Adam and with DynInt's optimisers (FTRL + G-FTRL).

    python benchmarks/ftrl.py --data bench_out/prepared/frappe --model deepfm --seeds 1 --set train.threads=1
    # more G-FTRL λ1 values beside the default (train.ftrl.group_l1), one row each
    python benchmarks/ftrl.py --data bench_out/prepared/frappe --group-l1 1e-4,1e-2 --set train.threads=1
    # where the time goes: forward + backward and the optimiser step timed apart, Adam beside the preset
    python benchmarks/ftrl.py --data bench_out/prepared/frappe --model xdeepint --set model.embedding_dim=16 \
        --step-timing --rounds 3

Rows: ``adam`` (the model's default optimiser and settings), ``dynint`` (``train.optimizer_preset=dynint``:
G-FTRL for the embedding tables, FTRL for every other weight, the defaults of ``train.ftrl``), and one
``dynint λ1=...`` per ``--group-l1`` value. Columns: test AUC and LogLoss, the fraction of embedding rows
(first-order tables included) and of embedding parameters at exactly zero, optimisation steps, and training
seconds; mean ± std over the seeds. Every run goes through the CLI's training function (early stopping on
validation AUC, best weights).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import mean_std, run_grid  # noqa: E402

PRESET = ["train.optimizer_preset=dynint"]


def variants(group_l1: list[str]) -> dict[str, list[str]]:
    """Row name -> overrides: Adam, the DynInt preset, and the preset at each extra G-FTRL λ1."""
    out = {"adam": [], "dynint": PRESET}
    for v in group_l1:
        out[f"dynint λ1={v}"] = [*PRESET, f"train.ftrl.group_l1={v}"]
    return out


def step_timing(data: Path, model_name: str, sets: list[str], rounds: int, steps: int = 20,
                warmup: int = 5) -> list[dict[str, float]]:
    """Per round, per optimiser setting: the median ms of forward + backward and of the optimiser step over
    ``steps`` steps on one batch (one thread; rounds alternate the settings)."""
    import torch

    from adactr.config import override, parse_sets
    from adactr.data.schema import Schema
    from adactr.data.tensors import SplitArrays
    from adactr.models.registry import build_model
    from adactr.train.config import RunConfig
    from adactr.train.trainer import build_optimizers, training_loss

    torch.set_num_threads(1)
    schema = Schema.load(data / "schema.json")
    out = []
    for _ in range(rounds):
        for name, extra in (("adam", []), ("dynint", PRESET)):
            cfg = override(RunConfig(), parse_sets([*sets, *extra]))
            batch = next(iter(SplitArrays.load(data / "train").to_tensors(torch.device("cpu"))
                              .batches(cfg.train.batch_size)))
            torch.manual_seed(0)
            model = build_model(model_name, layout=schema.layout(), config=cfg.model)
            opts = build_optimizers(model, cfg.train)
            fb, st = [], []
            for i in range(warmup + steps):
                t0 = time.perf_counter()
                loss = training_loss(model, batch)
                for o in opts:
                    o.zero_grad(set_to_none=True)
                loss.backward()
                t1 = time.perf_counter()
                for o in opts:
                    o.step()
                t2 = time.perf_counter()
                if i >= warmup:
                    fb.append(t1 - t0)
                    st.append(t2 - t1)
            out.append({"optimisers": name, "forward_backward_ms": statistics.median(fb) * 1e3,
                        "step_ms": statistics.median(st) * 1e3})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--seeds", default="1")
    ap.add_argument("--set", action="append", default=[], help="config override for every run")
    ap.add_argument("--group-l1", default="", help="comma-separated extra values of train.ftrl.group_l1")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (1 thread each)")
    ap.add_argument("--cache", type=Path, help="directory of finished runs (reused)")
    ap.add_argument("--out", type=Path, help="write all results as JSON here")
    ap.add_argument("--step-timing", action="store_true", help="time forward+backward and the optimiser step "
                    "apart (no training run)")
    ap.add_argument("--rounds", type=int, default=3, help="--step-timing: rounds alternating the optimisers")
    args = ap.parse_args(argv)

    if args.step_timing:
        print(f"\n{args.model} on {args.data}: one step of one batch, one thread, median ms")
        print("| round | optimisers | forward + backward | optimiser step |")
        print("|---|---|---|---|")
        for i, r in enumerate(step_timing(args.data, args.model, args.set, args.rounds)):
            print(f"| {i // 2 + 1} | {r['optimisers']} | {r['forward_backward_ms']:.1f} | {r['step_ms']:.1f} |")
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = variants([v.strip() for v in args.group_l1.split(",") if v.strip()])
    results = run_grid(args.data, [args.model], seeds, args.set, jobs=args.jobs, cache=args.cache, variants=rows)

    def col(runs: list[dict], get) -> str:
        return mean_std([float(get(r)) for r in runs])

    print(f"\n{args.model} on {args.data} ({len(seeds)} seed{'s' * (len(seeds) > 1)}: {args.seeds}; "
          f"overrides: {' '.join(args.set) or 'none'})")
    print("| optimisers | test AUC | test LogLoss | zero embedding rows | zero embedding parameters | steps | "
          "seconds |")
    print("|---|---|---|---|---|---|---|")
    for name, by_model in results.items():
        runs = by_model[args.model]
        print(f"| {name} | {col(runs, lambda r: r['test']['auc'])} | {col(runs, lambda r: r['test']['logloss'])} | "
              f"{col(runs, lambda r: r['embedding_zero_rows']['fraction'])} | "
              f"{col(runs, lambda r: r['embedding_zero_rows']['parameter_fraction'])} | "
              f"{statistics.mean(r['steps'] for r in runs):.0f} | "
              f"{statistics.mean(r['train_seconds'] for r in runs):.0f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": vars(args) | {"data": str(args.data), "out": str(args.out),
                                                               "cache": str(args.cache)},
                                        "results": results}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
