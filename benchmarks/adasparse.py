"""AdaSparse's experiments (Yang et al., CIKM 2022, §4) and APG's Table 6 (Yan et al., NeurIPS 2022, §4.5)
on the multi-domain data we have: tables printed as Markdown, figures as PNG.

    # Table 1: DNN and DCNv2, each alone and +MAML, +STAR, +APG, +AdaSparse, and ADL's multi-domain
    # baselines (Shared-Bottom, MMoE, PLE, HMoE, STAR), 3 seeds; Fig. 3b (gain by bins of domain size) after it
    python benchmarks/adasparse.py table1 --data bench_out/prepared/ml1m-fine --jobs 2 --cache bench_out/adasparse-cache
    # Table 2: the three weighting-factor forms on DNN
    python benchmarks/adasparse.py table2 --data bench_out/prepared/ml1m-fine --cache bench_out/adasparse-cache
    # Fig. 3c: AUC against the number of domains as domain fields are added (one prepared dataset each)
    python benchmarks/adasparse.py partitions --data bench_out/prepared/ml1m-g,bench_out/prepared/ml1m-ga,\\
        bench_out/prepared/ml1m-fine --png docs/img/adasparse-fig3c.png
    # Fig. 3d: AUC against the sparsity band
    python benchmarks/adasparse.py band --data bench_out/prepared/ml1m-fine --png docs/img/adasparse-fig3d.png
    # Fig. 3a: the binary factors of one layer for two similar domains and one different one (a trained run)
    python benchmarks/adasparse.py factors --run RUN --data bench_out/prepared/ml1m-fine \\
        --png docs/img/adasparse-fig3a.png
    # APG Table 6: MMoE and STAR with coarse and fine domains against APG conditioned on the same columns
    python benchmarks/adasparse.py table6 --coarse bench_out/prepared/ml1m --fine bench_out/prepared/ml1m-fine

Settings (one list for every run, so that runs shared by two tables come from one cache entry): the paper's
"Public" main network, hidden layers [128, 64, 32], Adam at 1e-3; batch 4096 instead of the paper's 256 (a
CPU budget: 16x fewer steps an epoch), with the dropout, batch norm and embedding L2 tuned for MovieLens-1M
(docs/models.md). The multi-domain models keep their own expert and tower sizes (``model.multidomain.*``).
"+APG" is group-wise APG conditioned on the domain columns (the schema's ``domain_columns``); "+STAR" the
star-topology layers in the backbone's tower (``model.tower_layer=star``); the full STAR model (with
partitioned normalisation and its auxiliary network) is the ``star`` row among the multi-domain models.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import mean_std, one_thread_each, paired_delta, run_tasks  # noqa: E402

COMMON = ["model.hidden=[128,64,32]", "model.dropout=0.2", "model.batch_norm=true", "train.embedding_l2=0.01"]
BACKBONES = ["dnn", "dcnv2"]
VARIANTS = ["base", "maml", "star", "apg", "adasparse"]
MULTIDOMAIN = ["shared_bottom", "mmoe", "ple", "hmoe", "star"]
# AdaSparse Table 1, Public dataset (IAAC, 300+ domains): LogLoss, AUC, GAUC, for the direction only
PAPER_PUBLIC = {
    ("dnn", "base"): (0.094886, 0.6506, 0.6442), ("dnn", "maml"): (0.093912, 0.6531, 0.6463),
    ("dnn", "star"): (0.093598, 0.6541, 0.6505), ("dnn", "apg"): (0.093264, 0.6585, 0.6553),
    ("dnn", "adasparse"): (0.093139, 0.6607, 0.6572),
    ("dcnv2", "base"): (0.095097, 0.6497, 0.6443), ("dcnv2", "maml"): (0.094024, 0.6536, 0.6474),
    ("dcnv2", "star"): (0.093754, 0.6538, 0.6501), ("dcnv2", "apg"): (0.093375, 0.6572, 0.6536),
    ("dcnv2", "adasparse"): (0.093292, 0.6594, 0.6565),
}
# AdaSparse Table 2 (Production dataset, DNN): AUC, GAUC
PAPER_FORMS = {"base": (0.7266, 0.6669), "binarization": (0.7355, 0.6843), "scaling": (0.7334, 0.6817),
               "fusion": (0.7359, 0.6848)}


def domain_fields(data: Path) -> list[str]:
    """The columns whose combination is the domain (the feature fields APG is conditioned on)."""
    schema = json.loads((data / "schema.json").read_text())
    cols = schema.get("domain_columns") or ([schema["domain"]] if schema.get("domain") else [])
    if not cols:
        raise SystemExit(f"{data}: no domain column; prepare it with --domain")
    return list(cols)


def variant_sets(variant: str, data: Path) -> list[str]:
    """The overrides that make ``variant`` of a backbone."""
    if variant == "base":
        return []
    if variant == "maml":
        # at most 32 domains (tasks) a step: with every domain of a batch a task, MAML costs 8.5x a plain
        # step on ml1m-fine (181 tasks a batch), 1.41x with 32 (benchmarks/maml_cost.py); the 3-domain data
        # never has more than 3, so there it is every domain. Tasks weighted by their query rows and drawn
        # in proportion to them, and up to 100 epochs: 32 tasks of ~153 cover ~36 % of a batch's rows (20 %
        # drawn uniformly), so an epoch is a third of the data, and on ml1m-fine each setting was still
        # improving at the 30-epoch cap. Batch norm on each task's own rows (the default): on ml1m-fine the
        # running statistics were level with it (0.7911 vs 0.7893, one seed), and on the 3-domain data
        # they made training collapse after 2 epochs (seeds 2, 3; docs/multidomain.md)
        return ["train.meta=maml", "train.maml.tasks_per_step=32", "train.maml.task_weight=rows",
                "train.epochs=100"]
    if variant == "star":
        return ["model.tower_layer=star"]
    if variant == "apg":
        return ["model.tower_layer=apg", "model.apg.condition=group",
                f"model.apg.condition_fields=[{','.join(domain_fields(data))}]"]
    if variant == "adasparse":
        return ["model.tower_layer=adasparse"]
    if variant in ("binarization", "scaling", "fusion"):
        return ["model.tower_layer=adasparse", f"model.adasparse.form={variant}"]
    raise SystemExit(f"unknown variant {variant!r}")


def _all_rows(data: Path, seeds: list[int], args: argparse.Namespace, rows: list[tuple[str, str, list[str]]]
              ) -> dict[str, list[dict]]:
    """Train every row (label, model, overrides) for every seed, all (row, seed) pairs in one pool of
    ``--jobs`` workers; results by label. The overrides are laid out as ``run_grid`` lays them out (the
    cache key), so a row shared by two tables, or with another script, is one cache entry."""
    tasks, labels = [], []
    for label, model, sets in rows:
        for seed in seeds:
            labels.append(label)
            tasks.append((f"{label} seed {seed}", model,
                          one_thread_each([*COMMON, *args.set, *sets, f"train.seed={seed}"], args.jobs)))
    runs = run_tasks(data, tasks, jobs=args.jobs, cache=args.cache,
                     describe=lambda r: f"test AUC {r['test']['auc']:.5f} GAUC {_gauc(r):.5f} epochs {r['epochs']} "
                                        f"({r['samples_per_second']:.0f}/s)")
    out: dict[str, list[dict]] = {label: [] for label, _, _ in rows}
    for label, r in zip(labels, runs, strict=True):  # by row, seeds in order
        out[label].append(r)
    return out


def _gauc(run: dict) -> float:
    return run["test"].get("domain_auc_mean", float("nan"))


def _adaptivity(runs: list[dict]) -> str:
    """Mean adaptivity over a variant's generated tensors; AdaSparse: mean sparsity and domain overlap."""
    vals, sparsity, overlap = [], [], []
    for r in runs:
        for part in r.get("adaptivity", {}).values():
            # an APG layer: what the instance gets (weight), not also what its generator makes
            for v in ([part["weight"]] if "weight" in part else part.values()):
                if "adaptivity" in v:
                    vals.append(v["adaptivity"])
                if "sparsity" in v:
                    sparsity.append(v["sparsity"])
                if "domain_overlap" in v:
                    overlap.append(v["domain_overlap"])
    bits = []
    if vals:
        bits.append(f"{statistics.mean(vals):.3f}")
    if sparsity:
        bits.append(f"sparsity {statistics.mean(sparsity):.2f}")
    if overlap:
        bits.append(f"overlap {statistics.mean(overlap):.2f}")
    return ", ".join(bits) or "-"


def _row(label: str, runs: list[dict], extra: list[str] = ()) -> str:
    return (f"| {label} | {mean_std([r['test']['logloss'] for r in runs])} | "
            f"{mean_std([r['test']['auc'] for r in runs])} | {mean_std([_gauc(r) for r in runs])} | "
            f"{runs[0]['params']:,} | {_adaptivity(runs)} |" + "".join(f" {e} |" for e in extra))


def table1(args: argparse.Namespace) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    backbones = args.backbones.split(",")
    variants = args.variants.split(",")
    others = [m for m in args.others.split(",") if m]
    rows = [(f"{b}+{v}", b, variant_sets(v, args.data)) for b in backbones for v in variants]
    rows += [(m, m, []) for m in others]
    res = _all_rows(args.data, seeds, args, rows)
    n_dom = len(json.loads((args.data / "schema.json").read_text()).get("domain_names", []))
    print(f"\nAdaSparse Table 1 on {args.data.name} ({n_dom} domain ids with the reserved two; {len(seeds)} "
          f"seeds, test split, mean ± std; GAUC = count-weighted mean of per-domain AUC)")
    print("| model | LogLoss | AUC | GAUC | params | adaptivity | paper Public AUC | paper Public GAUC |")
    print("|---|---|---|---|---|---|---|---|")
    for label, _model, _ in rows:
        b, _, v = label.partition("+")
        paper = PAPER_PUBLIC.get((b, v))
        extra = [f"{paper[1]:.4f}", f"{paper[2]:.4f}"] if paper else ["-", "-"]
        print(_row(label.replace("+base", ""), res[label], extra))
    base_of = lambda lab: lab.split("+")[0] + "+base" if "+" in lab else f"{backbones[0]}+base"  # noqa: E731
    paired(res, [label for label, _, _ in rows], base_of)
    bins(args.data, res, [label for label, _, _ in rows], base_of=base_of)
    _dump(args, res)


def paired(res: dict[str, list[dict]], labels: list[str], base_of) -> None:
    """Each row against its base seed by seed: mean ± std of the per-seed differences, (k/n) seeds at or
    above the base (a run shares its data order with the base's run of the same seed)."""
    if len(next(iter(res.values()))) < 2:
        return
    print("\nAgainst the base, seed by seed (mean ± std of the per-seed differences; seeds at or above it)")
    print("| model | Δ AUC | Δ GAUC |")
    print("|---|---|---|")
    for label in labels:
        base = base_of(label)
        if label == base or base not in res:
            continue
        a, b = res[label], res[base]
        print(f"| {label} (vs {base.replace('+base', '')}) | "
              f"{paired_delta([r['test']['auc'] for r in a], [r['test']['auc'] for r in b])} | "
              f"{paired_delta([_gauc(r) for r in a], [_gauc(r) for r in b])} |")


def domain_bins(data: Path, n_bins: int = 5) -> dict[str, int]:
    """Each train domain's bin (0 = the largest domains), equal-frequency over train rows as in §4.3.1:
    domains ranked by train rows and cut where the cumulative share of rows passes k / n_bins."""
    schema = json.loads((data / "schema.json").read_text())
    names = schema["domain_names"]
    counts = np.bincount(np.load(data / "train" / "domain.npy").astype(np.int64), minlength=len(names))
    order = np.argsort(-counts[2:], kind="stable") + 2  # train domains, largest first (ids 0, 1 reserved)
    cum = np.cumsum(counts[order]) - counts[order]  # rows before each domain
    total = counts[2:].sum()
    return {names[d]: min(int(c * n_bins // total), n_bins - 1) for d, c in zip(order, cum, strict=True)}


def bins(data: Path, res: dict[str, list[dict]], labels: list[str], base_of, n_bins: int = 5) -> None:
    """Fig. 3b: each model's GAUC gain over its base in bins of domain size (largest domains first)."""
    which = domain_bins(data, n_bins)
    if len(set(which.values())) < n_bins:
        return  # too few domains to bin
    sizes = [sum(1 for b in which.values() if b == k) for k in range(n_bins)]

    def per_bin(run: dict) -> list[float]:
        acc = [[0.0, 0] for _ in range(n_bins)]
        for name, m in run["test"]["per_domain"].items():
            if name in which and m.get("auc") is not None and m["auc"] == m["auc"]:
                acc[which[name]][0] += m["auc"] * m["count"]
                acc[which[name]][1] += m["count"]
        return [s / n if n else float("nan") for s, n in acc]

    print(f"\nFig. 3b on {data.name}: GAUC gain over the base by bins of domain size (equal shares of train "
          f"rows; domains per bin {sizes}), mean over seeds")
    print("| model | " + " | ".join(f"BIN{k + 1}" for k in range(n_bins)) + " |")
    print("|---|" + "---|" * n_bins)
    for label in labels:
        base = base_of(label)
        if label == base or base not in res:
            continue
        mine = np.mean([per_bin(r) for r in res[label]], axis=0)
        ref = np.mean([per_bin(r) for r in res[base]], axis=0)
        print(f"| {label} (vs {base.replace('+base', '')}) | " + " | ".join(f"{g:+.4f}" for g in mine - ref) + " |")


def table2(args: argparse.Namespace) -> None:
    seeds = [int(s) for s in args.seeds.split(",")]
    forms = ["base", "binarization", "scaling", "fusion"]
    rows = [(f"dnn+{f}", "dnn", variant_sets(f, args.data)) for f in forms]
    res = _all_rows(args.data, seeds, args, rows)
    print(f"\nAdaSparse Table 2 on {args.data.name}: the weighting-factor forms on DNN ({len(seeds)} seeds)")
    print("| model | LogLoss | AUC | GAUC | params | adaptivity | paper AUC | paper GAUC |")
    print("|---|---|---|---|---|---|---|---|")
    for (label, _, _), f in zip(rows, forms, strict=True):
        p = PAPER_FORMS[f]
        print(_row(label, res[label], [f"{p[0]:.4f}", f"{p[1]:.4f}"]))
    _dump(args, res)


def partitions(args: argparse.Namespace) -> None:
    """Fig. 3c: one prepared dataset per domain partition, coarse to fine."""
    seeds = [int(s) for s in args.seeds.split(",")]
    datasets = [Path(d) for d in args.data.split(",")]
    rows = [("dnn", "dnn", []), ("dnn+star", "dnn", variant_sets("star", Path())),
            ("dnn+adasparse", "dnn", variant_sets("adasparse", Path()))]
    table: dict[str, list[tuple[int, list[dict]]]] = {label: [] for label, _, _ in rows}
    for data in datasets:
        res = _all_rows(data, seeds, args, rows)
        n = len(json.loads((data / "schema.json").read_text())["domain_names"]) - 2
        for label, _, _ in rows:
            table[label].append((n, res[label]))
    print(f"\nFig. 3c: AUC against the number of train domains ({len(seeds)} seeds; domain fields added one by one)")
    print("| model | " + " | ".join(f"{n} domains ({d.name})" for (n, _), d in
                                    zip(table["dnn"], datasets, strict=True)) + " |")
    print("|---|" + "---|" * len(datasets))
    for label, pts in table.items():
        print(f"| {label} | " + " | ".join(mean_std([r["test"]["auc"] for r in runs]) for _, runs in pts) + " |")
    if args.png:
        _plot(args.png, "train domains", {lab: [(n, statistics.mean(r["test"]["auc"] for r in runs))
                                               for n, runs in pts] for lab, pts in table.items()}, logx=True)


def band(args: argparse.Namespace) -> None:
    """Fig. 3d: DNN + AdaSparse (the default form) for several sparsity bands [r_min, r_max]."""
    seeds = [int(s) for s in args.seeds.split(",")]
    bands = [tuple(float(x) for x in b.split("-")) for b in args.bands.split(",")]
    rows = [("dnn", "dnn", [])]
    for lo, hi in bands:
        sets = variant_sets("adasparse", args.data)
        if (lo, hi) != (0.15, 0.25):  # the default band: the same cache entry as Table 1's row
            sets = [*sets, f"model.adasparse.r_min={lo}", f"model.adasparse.r_max={hi}"]
        rows.append((f"[{lo:.2f}, {hi:.2f}]", "dnn", sets))
    res = _all_rows(args.data, seeds, args, rows)
    print(f"\nFig. 3d on {args.data.name}: DNN + AdaSparse by sparsity band ({len(seeds)} seeds)")
    print("| band | LogLoss | AUC | GAUC | params | adaptivity |")
    print("|---|---|---|---|---|---|")
    for label, _, _ in rows:
        print(_row(label, res[label]))
    if args.png:
        base = statistics.mean(r["test"]["auc"] for r in res["dnn"])
        _plot(args.png, "sparsity band (middle r)",
              {"dnn + adasparse": [((lo + hi) / 2, statistics.mean(r["test"]["auc"] for r in res[label]))
                                   for (lo, hi), (label, _, _) in zip(bands, rows[1:], strict=True)]},
              hline=("dnn", base))


def table6(args: argparse.Namespace) -> None:
    """APG Table 6: per-domain parameters (MMoE, STAR) against generated ones (APG) on the same columns,
    with coarse and fine domains: AUC and the memory of everything but the embedding tables."""
    seeds = [int(s) for s in args.seeds.split(",")]
    print_rows = []
    for grain, data in (("cg", args.coarse), ("fg", args.fine)):
        rows = [(f"mmoe_{grain}", "mmoe", []), (f"star_{grain}", "star", []),
                (f"dnn+apg_{grain}", "dnn", variant_sets("apg", data))]
        res = _all_rows(data, seeds, args, rows)
        for label, model, sets in rows:
            print_rows.append((label, data, ",".join(domain_fields(data)), res[label], model, sets))
    print(f"\nAPG Table 6 on MovieLens-1M ({len(seeds)} seeds): cg = the coarse domains, fg = the fine ones; "
          f"Mem = the parameters outside the embedding tables (MB, float32)")
    print("| model | domain columns | AUC | GAUC | Mem (MB) |")
    print("|---|---|---|---|---|")
    for label, data, cols, runs, model, sets in print_rows:
        print(f"| {label} | {cols} | {mean_std([r['test']['auc'] for r in runs])} | "
              f"{mean_std([_gauc(r) for r in runs])} | {_hidden_mb(data, model, [*COMMON, *args.set, *sets]):.2f} |")


def _hidden_mb(data: Path, model: str, sets: list[str]) -> float:
    from adactr.config import override, parse_sets
    from adactr.data.schema import Schema
    from adactr.models.registry import build_model
    from adactr.train.config import RunConfig

    cfg = override(RunConfig(), parse_sets(sets))
    m = build_model(model, layout=Schema.load(data / "schema.json").layout(), config=cfg.model)
    emb = {id(p) for p in m.embedding_parameters()}
    return sum(p.numel() for p in m.parameters() if id(p) not in emb) * 4 / 2**20


@torch.no_grad()
def factors(args: argparse.Namespace) -> None:
    """Fig. 3a: per domain, the share of its test rows that keep each input of one pruned layer; a neuron is
    drawn kept when most rows keep it. Da = the largest domain, Da^ = the domain whose map overlaps Da's
    most, Db the one that overlaps it least (Jaccard over the kept neurons)."""
    from adactr.data.tensors import SplitArrays
    from adactr.nn.adasparse import AdaSparseLinear
    from adactr.train.run import load_run

    model, schema, _, _ = load_run(args.run)
    layers = [m for m in model.modules() if isinstance(m, AdaSparseLinear)]
    layer = layers[args.layer]
    test = SplitArrays.load(args.data / "test").to_tensors(torch.device("cpu"))
    kept: dict[int, list[torch.Tensor]] = {}

    def hook(module, inputs, _out):
        pi = module.factors(*inputs)  # (B, N_l)
        kept.setdefault(0, []).append((pi != 0).float())

    h = layer.register_forward_hook(hook)
    domains = []
    for batch in test.batches(65536):
        model(batch)
        domains.append(batch.domain.long())
    h.remove()
    pi = torch.cat(kept[0])  # (N, N_l)
    dom = torch.cat(domains)
    n_d = len(schema.domain_names)
    counts = torch.bincount(dom, minlength=n_d)
    share = torch.zeros(n_d, pi.shape[1]).index_add_(0, dom, pi) / counts.clamp(min=1)[:, None]
    maps = share > 0.5  # (n_d, N_l)
    eligible = [d for d in range(2, n_d) if counts[d] >= args.min_rows]
    a = max(eligible, key=lambda d: int(counts[d]))

    def jaccard(x: int, y: int) -> float:
        inter = (maps[x] & maps[y]).sum().item()
        union = (maps[x] | maps[y]).sum().item()
        return inter / union if union else 1.0

    others = [d for d in eligible if d != a]
    a_hat = max(others, key=lambda d: jaccard(a, d))
    b = min(others, key=lambda d: jaccard(a, d))
    names = schema.domain_names
    print(f"layer {args.layer} ({pi.shape[1]} inputs), domains with >= {args.min_rows} test rows: {len(eligible)}")
    for tag, d in (("Da", a), ("Da^", a_hat), ("Db", b)):
        print(f"{tag}: {names[d]} ({int(counts[d])} test rows), kept {int(maps[d].sum())}/{pi.shape[1]}, "
              f"Jaccard with Da {jaccard(a, d):.2f}")
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(10, 2.2))
        ax.imshow(maps[[a, a_hat, b]].float().numpy(), cmap="Greys_r", aspect="auto", vmin=-0.3, vmax=1)
        ax.set_yticks([0, 1, 2], [f"Da {names[a]}", f"Da^ {names[a_hat]}", f"Db {names[b]}"], fontsize=7)
        ax.set_xlabel(f"input neuron of pruned layer {args.layer} (grey: pruned for most rows)")
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
        print(f"wrote {args.png}")



def _plot(png: str, xlabel: str, series: dict[str, list[tuple[float, float]]], *, logx: bool = False,
          hline: tuple[str, float] | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for label, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    if hline:
        ax.axhline(hline[1], color="grey", linestyle="--", label=hline[0])
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    print(f"wrote {png}")


def _dump(args: argparse.Namespace, res: dict) -> None:
    if getattr(args, "out", None):
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)

    def common(p: argparse.ArgumentParser, data: bool = True) -> None:
        if data:
            p.add_argument("--data", required=True)
        p.add_argument("--seeds", default="1,2,3")
        p.add_argument("--set", action="append", default=[], help="override for every run")
        p.add_argument("--jobs", type=int, default=1)
        p.add_argument("--cache", type=Path, help="directory of finished runs (empty it after code changes)")
        p.add_argument("--out", help="all results as JSON")

    p = sub.add_parser("table1")
    common(p)
    p.add_argument("--backbones", default=",".join(BACKBONES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--others", default=",".join(MULTIDOMAIN), help="multi-domain models ('' for none)")
    p = sub.add_parser("table2")
    common(p)
    p = sub.add_parser("partitions")
    common(p)
    p.add_argument("--png")
    p = sub.add_parser("band")
    common(p)
    p.add_argument("--bands", default="0.05-0.10,0.15-0.25,0.25-0.35,0.35-0.40")
    p.add_argument("--png")
    p = sub.add_parser("table6")
    common(p, data=False)
    p.add_argument("--coarse", type=Path, required=True)
    p.add_argument("--fine", type=Path, required=True)
    p = sub.add_parser("factors")
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--layer", type=int, default=2, help="which pruned layer (0 = the embeddings' pruner)")
    p.add_argument("--min-rows", type=int, default=200)
    p.add_argument("--png")
    args = ap.parse_args(argv)
    if args.cmd in ("table1", "table2", "band"):
        args.data = Path(args.data)
    torch.set_num_threads(1)
    {"table1": table1, "table2": table2, "partitions": partitions, "band": band, "table6": table6,
     "factors": factors}[args.cmd](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
