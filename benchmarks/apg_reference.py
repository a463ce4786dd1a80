"""A like-for-like reference for adactr's APG: the layer FuxiCTR/BARS run, written from its description,
trained inside adactr's own trainer beside adactr's APG with the same K, P and generator.

    python benchmarks/apg_reference.py --data bench_out/prepared/frappe --seeds 1,2,3 \\
        --set model.dropout=0.2 --set model.batch_norm=true --set train.embedding_l2=0.1 \\
        --cache bench_out/apg_ref

The reference layer ("fuxictr-style", benchmark-only, never registered) is self-wise APG v5 as FuxiCTR's
``APG_Linear`` computes it (reczoo/FuxiCTR model_zoo/APG, read for its description, not copied)::

    w_i = MLP(x_i)              hypernetwork: x (M) -> 512 -> 256 -> N + K K, ReLU, no normalisation
    b_i, S_i = w_i[:N], reshape(w_i[N:], K, K)
    y_i = ((x_i U^l U^r) S_i) V^l V^r + b_i           U^l (M, P), U^r (P, K), V^l (K, P), V^r (P, N)

with every weight xavier-normal and every bias zero (FuxiCTR's ``reset_parameters``), K = 8, P = 64.
adactr's row ("adactr, same settings") is ``model.apg`` with K = 8, P = 64, generator_hidden = [512, 256],
generate_bias = true, static_weight = false (the reference has no W_0), self-wise, its own initialisation,
condition normalisation and condition before dropout (``--apg-set`` adds
more keys, e.g. ``model.apg.condition_norm=none``). Both are built into DeepFM's tower by the layer factory
seam and trained by the same trainer on the same batches; only the layer differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from adactr.config import override, parse_sets, to_dict
from adactr.data.schema import Schema
from adactr.data.tensors import SplitArrays
from adactr.models.registry import build_model
from adactr.nn.adaptivity import measure_adaptivity
from adactr.train.config import RunConfig
from adactr.train.run import pick_device, seed_everything
from adactr.train.trainer import Trainer, evaluate_split

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import read_cached, write_cached  # noqa: E402


class ReferenceAPG(nn.Module):
    """FuxiCTR-style self-wise APG v5 with a generated bias (see the module docstring): x (B, M) -> (B, N)."""

    def __init__(self, in_features: int, out_features: int, *, rank: int = 8, overparam: int = 64,
                 hidden: tuple[int, ...] = (512, 256)) -> None:
        super().__init__()
        M, N, K, P = in_features, out_features, rank, overparam
        self.N, self.K = N, K
        dims = [M, *hidden, N + K * K]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU())
        self.hyper = nn.Sequential(*layers)
        self.U_l = nn.Parameter(torch.empty(M, P))
        self.U_r = nn.Parameter(torch.empty(P, K))
        self.V_l = nn.Parameter(torch.empty(K, P))
        self.V_r = nn.Parameter(torch.empty(P, N))
        for p in (self.U_l, self.U_r, self.V_l, self.V_r):
            nn.init.xavier_normal_(p)
        for m in self.hyper:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def generated(self, x: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        w = self.hyper(x)  # (B, N + K K)
        return {"b": w[:, :self.N], "S": w[:, self.N:].reshape(-1, self.K, self.K)}

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        g = self.generated(x)
        h = x @ (self.U_l @ self.U_r)  # (B, K)
        h = torch.bmm(h.unsqueeze(1), g["S"]).squeeze(1)  # (B, K)
        return h @ (self.V_l @ self.V_r) + g["b"]  # (B, N)


# adactr's APG with the reference's settings (the reference layer has no W_0)
ADACTR_SETS = ["model.tower_layer=apg", "model.apg.condition=self", "model.apg.rank=8", "model.apg.overparam_dim=64",
               "model.apg.generator_hidden=[512,256]", "model.apg.generate_bias=true", "model.apg.static_weight=false"]


def overrides_of(variant: str, sets: list[str], apg_sets: list[str]) -> list[str]:
    """Every override a run of ``variant`` gets but its seed (the cache key holds all of them)."""
    return [*sets, *(ADACTR_SETS + apg_sets if variant == "adactr" else [])]


def _config(overrides: list[str], seed: int) -> RunConfig:
    return override(RunConfig(), parse_sets([*overrides, f"train.seed={seed}", "train.progress=false"]))


def _one(data: Path, variant: str, cfg: RunConfig) -> dict:
    tc = cfg.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    schema = Schema.load(data / "schema.json")
    seed_everything(tc.seed)
    layer = {"reference": ReferenceAPG}.get(variant)
    model = build_model("deepfm", layout=schema.layout(), config=cfg.model,
                        **({"layer": layer} if layer is not None else {}))
    train = SplitArrays.load(data / "train")
    valid = SplitArrays.load(data / "valid").to_tensors(device)
    test = SplitArrays.load(data / "test").to_tensors(device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        fit = Trainer(config=tc, device=device, run_dir=Path(tmp), domain_names=schema.domain_names).fit(
            model, train, valid)
        wall = time.perf_counter() - t0
    eb = tc.eval_batch_size
    return {"variant": variant, "seed": tc.seed, "params": sum(p.numel() for p in model.parameters()),
            "test": evaluate_split(model, test, batch_size=eb, domain_names=schema.domain_names),
            "valid_auc": fit.best_auc, "epochs": fit.epochs, "seconds": round(wall, 1),
            "adaptivity": measure_adaptivity(model, valid.batches(eb))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--variants", default="reference,adactr,base")
    ap.add_argument("--set", action="append", default=[], help="override for every run")
    ap.add_argument("--apg-set", action="append", default=[], help="extra override for adactr's APG")
    ap.add_argument("--cache", type=Path, help="directory of finished runs (reused)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: dict[str, list[dict]] = {}
    for variant in args.variants.split(","):
        for seed in seeds:
            overrides = overrides_of(variant, args.set, args.apg_set)
            key = hashlib.sha1(json.dumps([str(args.data.resolve()), variant, overrides, seed])
                               .encode()).hexdigest()[:16]
            hit = args.cache / f"{variant}-{key}.json" if args.cache else None
            cfg = _config(overrides, seed)
            resolved = to_dict(cfg)
            r = read_cached(hit, resolved)
            if r is None:
                r = _one(args.data, variant, cfg)
                write_cached(hit, r, resolved)
            rows.setdefault(variant, []).append(r)
            ad = {p: {k: round(v["adaptivity"], 3) for k, v in t.items()} for p, t in r["adaptivity"].items()}
            print(f"{variant} seed {seed}: test AUC {r['test']['auc']:.5f} logloss {r['test']['logloss']:.5f} "
                  f"epochs {r['epochs']} {r['seconds']} s adaptivity {ad}", file=sys.stderr, flush=True)

    def ms(v: list[float]) -> str:
        return f"{statistics.mean(v):.4f} ± {statistics.stdev(v):.4f}" if len(v) > 1 else f"{v[0]:.4f}"

    print(f"\nDeepFM on {args.data.name}, {len(seeds)} seeds ({' '.join(args.set)}; adactr APG extra: "
          f"{' '.join(args.apg_set) or 'none'})")
    print("| layer | test AUC | test LogLoss | epochs | parameters | adaptivity of S, layers 1/2/3 |")
    print("|---|---|---|---|---|---|")
    names = {"reference": "FuxiCTR-style reference (K 8, P 64, [512,256], generated bias)",
             "adactr": "adactr APG, same settings", "base": "Base (static layers)"}
    for variant, rs in rows.items():
        ad = " / ".join(f"{statistics.mean(r['adaptivity'][p]['S']['adaptivity'] for r in rs):.3f}"
                        for p in rs[0]["adaptivity"]) or "-"
        print(f"| {names.get(variant, variant)} | {ms([r['test']['auc'] for r in rs])} | "
              f"{ms([r['test']['logloss'] for r in rs])} | {statistics.mean(r['epochs'] for r in rs):.1f} | "
              f"{rs[0]['params']:,} | {ad} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
