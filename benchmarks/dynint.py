"""DynInt's experiments (Yan & Li, DLP-KDD 2022, §4) on the data we have: tables printed as Markdown.

    # Table 1: every baseline and the four PIN models, embedding 16, batch 4096, 3 seeds
    python benchmarks/dynint.py table1 --data bench_out/prepared/frappe --jobs 2 --cache bench_out/dynint-cache \
        --deep-set model.dropout=0.2 --deep-set model.batch_norm=true --deep-set train.embedding_l2=0.1
    # Table 2: the interaction layers without their DNN
    python benchmarks/dynint.py table2 --data bench_out/prepared/frappe --cache bench_out/dynint-cache
    # Table 3 (depth) / Table 4 (sub-spaces) / Fig. 6 (DGP K, DWP K) / Fig. 7a (reduction ratio): one key swept,
    # averaged over the three DynInt variants as the paper does
    python benchmarks/dynint.py sweep --data bench_out/prepared/frappe --key model.pin.layers --values 0,1,2,3,4,5 \\
        --set model.pin.subspaces=1
    # Fig. 7b: validation log loss against steps for several orthogonal rates (PNG)
    python benchmarks/dynint.py orthogonal --data bench_out/prepared/frappe --rates 0,1e-3,1e-2,1e-1 \\
        --png docs/img/dynint-fig7b.png
    # Fig. 4: singular values of the trained PIN weights of a run (PNG)
    python benchmarks/dynint.py fig4 --run RUN_DIR --png docs/img/dynint-fig4.png
    # §3.5.3: peak memory of a training step, low-rank vs the direct per-instance form, side by side
    python benchmarks/dynint.py memory
    # training throughput of xDeepInt and the three variants beside DCNv2 at the same batch
    python benchmarks/dynint.py throughput

The paper's own numbers are on Criteo / Avazu / iPinYou, which we do not have; Table 1 prints its Criteo
column beside ours for the direction only. Every run goes through the CLI's training function (early
stopping on validation AUC, best weights, the models' default learning rates unless --set).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import mean_std, run_grid  # noqa: E402

# DynInt Table 1, Criteo column (AUC, LogLoss); "pnn" is the paper's PNN with inner and outer products
PAPER_CRITEO = {
    "lr": (0.7924, 0.4577), "fm": (0.8030, 0.4487), "dnn": (0.8051, 0.4461), "wdl": (0.8062, 0.4451),
    "deepfm": (0.8069, 0.4445), "deepcrossing": (0.8068, 0.4456), "dcn": (0.8056, 0.4457),
    "pnn": (0.8083, 0.4433), "xdeepfm": (0.8077, 0.4439), "autoint": (0.8053, 0.4462),
    "fibinet": (0.8082, 0.4439), "dcnv2": (0.8086, 0.4433), "xdeepint": (0.8111, 0.4408),
    "dynint_da": (0.8125, 0.4398), "dynint_dgp": (0.8127, 0.4397), "dynint_dwp": (0.8132, 0.4393),
}
# BARS Frappe_x1 test AUC / LogLoss (../shared/data/README.md, ../shared/research/dynint.md §3.3); our
# Frappe_x1 train split re-samples its negatives, so these are reference points
BARS_FRAPPE = {"lr": (0.9356, 0.3076), "fm": (0.9671, 0.2065), "dnn": (0.9833, 0.1622), "deepfm": (0.9842, 0.1482),
               "dcnv2": (0.9845, 0.1491), "xdeepfm": (0.9841, 0.1461), "autoint": (0.9831, 0.1637),
               "ipnn": (0.9841, 0.1540)}
TABLE1 = list(PAPER_CRITEO)
# models without a DNN tower: --deep-set does not apply to them
SHALLOW = {"lr", "fm", "xdeepint", "dynint_da", "dynint_dgp", "dynint_dwp"}
# the paper's AutoInt row: AutoInt+ (its DNN beside the attention), the form BARS tunes
PER_MODEL = {"autoint": ["model.autoint_plus=true"]}
DYNINT = ["dynint_da", "dynint_dgp", "dynint_dwp"]
PAPER_SETS = ["model.embedding_dim=16", "train.batch_size=4096"]  # §4.1.4


def _adaptivity(run: dict) -> float | None:
    """The mean adaptivity over a run's generated tensors (None for a static model)."""
    vals = [v["adaptivity"] for part in run.get("adaptivity", {}).values() for v in part.values()]
    return statistics.mean(vals) if vals else None


def _models(arg: str, default: list[str]) -> list[str]:
    return [m for m in arg.split(",") if m] if arg else default


def table1(args: argparse.Namespace) -> None:
    models = _models(args.models, TABLE1)
    seeds = [int(s) for s in args.seeds.split(",")]
    per_model = {m: [*PER_MODEL.get(m, []), *([] if m in SHALLOW else args.deep_set)] for m in models}
    res = run_grid(args.data, models, seeds, [*PAPER_SETS, *args.set], per_model, jobs=args.jobs,
                   cache=args.cache)[""]
    bars = "frappe" in str(args.data).lower()
    print(f"\nDynInt Table 1 on {args.data.name} ({len(seeds)} seeds, test split, mean ± std; embedding 16, "
          f"batch 4096{'; ' + ' '.join(args.set) if args.set else ''}; models with a DNN: "
          f"{' '.join(args.deep_set) or 'defaults'}; autoint = AutoInt+)")
    head = ["model", "AUC", "LogLoss", "params", "adaptivity", "paper Criteo AUC", "paper Criteo LogLoss"]
    if bars:
        head += ["BARS Frappe AUC"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for m in models:
        runs = res[m]
        ad = [a for a in map(_adaptivity, runs) if a is not None]
        paper = PAPER_CRITEO.get(m)
        row = [m, mean_std([r["test"]["auc"] for r in runs]), mean_std([r["test"]["logloss"] for r in runs]),
               f"{runs[0]['params']:,}", f"{statistics.mean(ad):.3f}" if ad else "-",
               f"{paper[0]:.4f}" if paper else "-", f"{paper[1]:.4f}" if paper else "-"]
        if bars:
            row.append(f"{BARS_FRAPPE[m][0]:.4f}" if m in BARS_FRAPPE else "-")
        print("| " + " | ".join(row) + " |")
    _dump(args, res)


# DynInt Table 2: each model's interaction layer without its DNN (Criteo AUC, LogLoss), and how adactr
# builds it: DeepFM's FM part is the FM model; DCN, DCN V2, PNN and xDeepFM with no hidden layers (the
# cross / product / CIN signal, plus a linear readout of the embeddings for DCN, DCN V2 and xDeepFM, which
# adds first-order terms only); AutoInt without AutoInt+'s MLP
TABLE2 = {
    "fm": ("DeepFM: FM part", [], (0.8030, 0.4487)),
    "dcn": ("DCN: cross network", ["model.hidden=[]"], (0.7941, 0.4566)),
    "pnn": ("PNN: products", ["model.hidden=[]"], (0.8066, 0.4451)),
    "xdeepfm": ("xDeepFM: CIN + linear", ["model.hidden=[]"], (0.8065, 0.4454)),
    "autoint": ("AutoInt: attention", [], (0.8056, 0.4458)),
    "dcnv2": ("DCN V2: cross network", ["model.hidden=[]"], (0.8082, 0.4436)),
    "xdeepint": ("xDeepInt", [], PAPER_CRITEO["xdeepint"]),
    **{m: (m, [], PAPER_CRITEO[m]) for m in DYNINT},
}


def table2(args: argparse.Namespace) -> None:
    models = _models(args.models, list(TABLE2))
    seeds = [int(s) for s in args.seeds.split(",")]
    per_model = {m: [*TABLE2[m][1], *([] if m in SHALLOW else args.deep_set)] for m in models}
    res = run_grid(args.data, models, seeds, [*PAPER_SETS, *args.set], per_model, jobs=args.jobs,
                   cache=args.cache)[""]
    print(f"\nDynInt Table 2 on {args.data.name}: interaction layers without their DNN ({len(seeds)} seeds, test "
          f"split, mean ± std; embedding 16, batch 4096{'; ' + ' '.join(args.set) if args.set else ''})")
    print("| model | adactr settings | AUC | LogLoss | paper Criteo AUC | paper Criteo LogLoss |")
    print("|---|---|---|---|---|---|")
    for m in models:
        label, sets, paper = TABLE2[m]
        runs = res[m]
        print(f"| {label} | `{m}` {' '.join(sets)} | {mean_std([r['test']['auc'] for r in runs])} | "
              f"{mean_std([r['test']['logloss'] for r in runs])} | {paper[0]:.4f} | {paper[1]:.4f} |")
    _dump(args, res)


def sweep(args: argparse.Namespace) -> None:
    models = _models(args.models, DYNINT)
    seeds = [int(s) for s in args.seeds.split(",")]
    values = args.values.split(",")
    variants = {f"{args.key}={v}": [f"{args.key}={v}"] for v in values}
    res = run_grid(args.data, models, seeds, [*PAPER_SETS, *args.set], jobs=args.jobs, cache=args.cache,
                   variants=variants)
    print(f"\n{args.key} on {args.data.name} ({', '.join(models)}; {len(seeds)} seeds each; test AUC / LogLoss "
          f"mean ± std over all their runs{'; ' + ' '.join(args.set) if args.set else ''})")
    print(f"| {args.key} | AUC | LogLoss | " + " | ".join(f"{m} AUC" for m in models) + " | adaptivity |")
    print("|---|---|---|" + "---|" * len(models) + "---|")
    for v, name in zip(values, variants, strict=True):
        runs = [r for m in models for r in res[name][m]]
        ad = [a for a in map(_adaptivity, runs) if a is not None]
        cells = [v, mean_std([r["test"]["auc"] for r in runs]), mean_std([r["test"]["logloss"] for r in runs])]
        cells += [mean_std([r["test"]["auc"] for r in res[name][m]]) for m in models]
        cells.append(f"{statistics.mean(ad):.3f}" if ad else "-")
        print("| " + " | ".join(cells) + " |")
    _dump(args, res)


def orthogonal(args: argparse.Namespace) -> None:
    """Fig. 7b: validation log loss against optimisation steps, DGP and DWP, one curve per rate."""
    import tempfile

    from adactr.config import override, parse_sets
    from adactr.train.config import RunConfig
    from adactr.train.run import train_run

    rates = args.rates.split(",")
    curves: dict[str, list[tuple[int, float]]] = {}
    print(f"\nFig. 7b on {args.data.name}: best validation LogLoss / test AUC by orthogonal rate (seed {args.seed})")
    print("| model | λ | best valid LogLoss | at step | test AUC | test LogLoss |\n|---|---|---|---|---|---|")
    for model in ("dynint_dgp", "dynint_dwp"):
        for rate in rates:
            sets = [*PAPER_SETS, *args.set, f"model.pin.orthogonal={rate}", f"train.seed={args.seed}",
                    "train.progress=false", "train.eval_every_steps=25",
                    "train.patience=4"]  # evaluations twice an epoch: patience of the usual 2 epochs
            with tempfile.TemporaryDirectory() as tmp:
                r = train_run(data=args.data, model_name=model, out=Path(tmp) / "run",
                              config=override(RunConfig(), parse_sets(sets)))
            hist = [(h["step"], h["valid_logloss"]) for h in r["history"]]
            curves[f"{model} λ={rate}"] = hist
            best = min(hist, key=lambda t: t[1])
            print(f"| {model} | {rate} | {best[1]:.5f} | {best[0]} | {r['test']['auc']:.5f} | "
                  f"{r['test']['logloss']:.5f} |", flush=True)
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, model in zip(axes, ("dynint_dgp", "dynint_dwp"), strict=True):
            for name, hist in curves.items():
                if name.startswith(model):
                    ax.plot(*zip(*hist, strict=True), label=name.split(" ", 1)[1])
            ax.set_title(f"{model} on {args.data.name}")
            ax.set_xlabel("optimisation steps")
            ax.legend()
        axes[0].set_ylabel("validation LogLoss")
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


def fig4(args: argparse.Namespace) -> None:
    """Fig. 4: the singular values of each trained PIN layer's W, scaled by the largest."""
    from safetensors.torch import load_file

    state = load_file(str(args.run / "model.safetensors"))
    mats = {k: v for k, v in state.items() if k.startswith("pin.layers.") and k.endswith(".W")}
    if not mats:
        raise SystemExit(f"{args.run}: no PIN weights (pin.layers.*.W) in model.safetensors")
    print(f"\nFig. 4: scaled singular values of the PIN weights of {args.run}")
    print("| layer | F' | top 5 (÷ largest) | rank for 90 % of the squared sum |\n|---|---|---|---|")
    svals = {}
    for k, W in sorted(mats.items()):
        s = torch.linalg.svdvals(W.double())
        svals[k] = (s / s[0]).tolist()
        energy = (s.square().cumsum(0) / s.square().sum()).tolist()
        r90 = next(i + 1 for i, e in enumerate(energy) if e >= 0.9)
        print(f"| {k} | {W.shape[0]} | {', '.join(f'{v:.3f}' for v in svals[k][:5])} | {r90} |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, s in svals.items():
            ax.plot(range(1, len(s) + 1), s, marker="o", ms=3, label=k.removesuffix(".W"))
        ax.set_xlabel("index")
        ax.set_ylabel("singular value ÷ largest")
        ax.set_title(f"PIN weights, {args.run.name}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=110)
        print(f"wrote {args.png}")


# ---- §3.5.3 memory: the low-rank paradigms against the direct per-instance matrices ------------------------

class DirectDGP(nn.Module):
    """DGP computed the direct way: W^(i) = U diag(σ^(i)) V^T materialised, (B, F', F'), then W^(i) X_0."""

    def __init__(self, low_rank: nn.Module) -> None:
        super().__init__()
        self.inner = low_rank

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        sigma = self.inner.generated(x, x0)["sigma"]  # (B, K)
        W = (self.inner.U * sigma.unsqueeze(1)) @ self.inner.V.T  # (B, F', F')
        return x * torch.bmm(W, x0) + x


class DirectDWP(nn.Module):
    """DWP computed the direct way: G^(i) = Σ_p u_p v_p^T materialised, (B, F', F'), then (G ∘ W) X_0."""

    def __init__(self, weighted: nn.Module) -> None:
        super().__init__()
        self.inner = weighted

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        g = self.inner.generated(x, x0)
        G = g["u"].transpose(1, 2) @ g["v"]  # (B, F', F')
        return x * torch.bmm(G * self.inner.W, x0) + x


def _memory_child(kind: str, form: str, B: int, F: int, D: int, h: int, K: int, device: str) -> None:
    """One training step of a 3-layer PIN block in a fresh process; prints its peak memory above the
    baseline (CPU: maximum resident set; CUDA: max_memory_allocated)."""
    from adactr.nn.penalty import collect_penalties
    from adactr.nn.pin import PIN, PINConfig, PINDynamic

    torch.manual_seed(0)
    dyn = {"dgp": PINDynamic.DGP, "dwp": PINDynamic.DWP}[kind]
    cfg = PINConfig(layers=3, subspaces=h, dynamic=dyn, dgp_rank=K, dwp_rank=K, orthogonal=0.0)
    pin = PIN(num_fields=F, embedding_dim=D, config=cfg).to(device)
    if form == "direct":
        wrap = DirectDGP if kind == "dgp" else DirectDWP
        pin.layers = nn.ModuleList(wrap(layer) for layer in pin.layers)
    x0 = torch.randn(B, F, D, device=device, requires_grad=True)
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with collect_penalties():
        y = pin(x0).sum()
    y.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    print(json.dumps({"peak_bytes": peak}))


def memory(args: argparse.Namespace) -> None:
    F, D, h = args.fields, args.dim, args.subspaces
    rows = F * h
    K = max(1, rows // 10) if args.rank == 0 else args.rank
    print(f"\n§3.5.3 memory: peak memory of one training step (forward + backward) of a 3-layer PIN block, "
          f"batch {args.batch}, F = {F}, D = {D}, h = {h} (F' = {rows}), K = {K} for DGP (F'/10) and "
          f"{args.dwp_rank} for DWP, on {args.device}; each form in its own process")
    print("| variant | low-rank (ours) MiB | direct B×F'×F' MiB | saved | paper |\n|---|---|---|---|---|")
    for kind, k, claim in (("dgp", K, "-99 %"), ("dwp", args.dwp_rank, "-80 %")):
        peaks = {}
        for form in ("lowrank", "direct"):
            out = subprocess.run([sys.executable, __file__, "_memory_child", kind, form, str(args.batch), str(F),
                                  str(D), str(h), str(k), args.device], capture_output=True, text=True,
                                 env=dict(os.environ, OMP_NUM_THREADS="1"))
            if out.returncode:
                raise SystemExit(out.stderr.strip().splitlines()[-1])
            peaks[form] = json.loads(out.stdout.strip().splitlines()[-1])["peak_bytes"] / 2**20
        # (a step too small to grow the resident set measures 0: no ratio)
        saved = f"{peaks['lowrank'] / peaks['direct'] - 1:+.0%}" if peaks["direct"] > 0 else "-"
        print(f"| {kind.upper()} (K={k}) | {peaks['lowrank']:.1f} | {peaks['direct']:.1f} | {saved} | {claim} |")


def throughput(args: argparse.Namespace) -> None:
    """Training steps per second on Criteo-shaped batches (39 fields), every model in each round."""
    from adactr.data.schema import FieldLayout
    from adactr.data.tensors import Batch
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model
    from adactr.nn.pin import PINConfig
    from adactr.train.trainer import training_loss

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    # 26 hashed categoricals, 13 bucketed numbers; tables kept small (130k rows) so that the dense Adam step over
    # the embeddings does not hide the interaction parts being compared
    cards = [5_000] * 26 + [64] * 13
    layout = FieldLayout(names=tuple(f"f{i}" for i in range(39)), cat_sizes=tuple(cards), n_num=0, seq_sizes=(),
                         seq_pooling=())
    cfg = ModelConfig(embedding_dim=16, pin=PINConfig(layers=3, subspaces=args.subspaces))
    models = _models(args.models, ["dcnv2", "xdeepint", *DYNINT])
    g = torch.Generator().manual_seed(0)
    batches = [Batch(cat=torch.stack([torch.randint(0, c, (args.batch,), generator=g) for c in cards], 1).to(device),
                     num=torch.zeros(args.batch, 0, device=device), seq=(),
                     label=torch.randint(0, 2, (args.batch,), generator=g).float().to(device)) for _ in range(4)]
    built = {}
    for m in models:
        model = build_model(m, layout=layout, config=cfg).to(device).train()
        built[m] = (model, torch.optim.Adam(model.parameters(), lr=1e-3))
    rates: dict[str, list[float]] = {m: [] for m in models}

    def step(m: str, batch: Batch) -> None:
        model, opt = built[m]
        opt.zero_grad(set_to_none=True)
        training_loss(model, batch).backward()
        opt.step()

    for m in models:  # warm-up
        for b in batches:
            step(m, b)
    for _ in range(args.rounds):
        for m in models:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for i in range(args.steps):
                step(m, batches[i % len(batches)])
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[m].append(args.steps * args.batch / (time.perf_counter() - t0))
    ref = statistics.median(rates[models[0]])
    print(f"\nTraining throughput, Criteo-shaped batches (39 fields, D 16, PIN 3 layers, h {args.subspaces}), batch "
          f"{args.batch}, {args.device}, {torch.get_num_threads()} threads; median of {args.rounds} interleaved rounds "
          f"of {args.steps} steps (min-max)")
    print(f"| model | samples/s | ÷ {models[0]} | params |\n|---|---|---|---|")
    for m in models:
        r = rates[m]
        n = sum(p.numel() for p in built[m][0].parameters())
        print(f"| {m} | {statistics.median(r):,.0f} ({min(r):,.0f}-{max(r):,.0f}) | {statistics.median(r) / ref:.2f} | "
              f"{n:,} |")


def _dump(args: argparse.Namespace, res: dict) -> None:
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k != "fn"},
                                        "results": res}, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_memory_child"]:
        kind, form, B, F, D, h, K, device = argv[1:]
        _memory_child(kind, form, int(B), int(F), int(D), int(h), int(K), device)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def grid(p: argparse.ArgumentParser) -> None:
        p.add_argument("--data", type=Path, required=True)
        p.add_argument("--models", default="")
        p.add_argument("--seeds", default="1,2,3")
        p.add_argument("--set", action="append", default=[], help="override for every run")
        p.add_argument("--deep-set", action="append", default=[],
                       help="override for the models with a DNN tower (their tuned dropout, batch norm, L2)")
        p.add_argument("--jobs", type=int, default=1)
        p.add_argument("--cache", type=Path, help="directory of finished runs (reused; empty it after code changes)")
        p.add_argument("--out", type=Path, help="all results as JSON")

    p = sub.add_parser("table1", help="Table 1: every model, test AUC / LogLoss")
    grid(p)
    p.set_defaults(fn=table1)
    p = sub.add_parser("table2", help="Table 2: interaction layers without their DNN")
    grid(p)
    p.set_defaults(fn=table2)
    p = sub.add_parser("sweep", help="one key swept over values (Tables 3, 4; Figs. 6, 7a)")
    grid(p)
    p.add_argument("--key", required=True)
    p.add_argument("--values", required=True)
    p.set_defaults(fn=sweep)
    p = sub.add_parser("orthogonal", help="Fig. 7b: validation LogLoss against steps by orthogonal rate")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--rates", default="0,1e-3,1e-2,1e-1")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--png", type=Path)
    p.set_defaults(fn=orthogonal)
    p = sub.add_parser("fig4", help="Fig. 4: singular values of a run's trained PIN weights")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--png", type=Path)
    p.set_defaults(fn=fig4)
    p = sub.add_parser("memory", help="§3.5.3: peak training-step memory, low-rank vs direct")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--fields", type=int, default=39)  # Criteo
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--subspaces", type=int, default=4)
    p.add_argument("--rank", type=int, default=0, help="DGP K; 0 = F'/10 (the paper's setting)")
    p.add_argument("--dwp-rank", type=int, default=0, help="DWP K; 0 = F'/10 (the paper's setting)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=memory)
    p = sub.add_parser("throughput", help="training samples/s beside DCNv2")
    p.add_argument("--models", default="")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--subspaces", type=int, default=1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.set_defaults(fn=throughput)
    args = ap.parse_args(argv)
    if getattr(args, "dwp_rank", None) == 0:
        args.dwp_rank = max(1, args.fields * args.subspaces // 10)
    args.fn(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
