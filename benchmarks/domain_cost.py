"""Per-domain layers: training cost per sample at 3, 30 and 300 domains (issue 15).

    python benchmarks/domain_cost.py --threads 1
    python benchmarks/domain_cost.py --threads 1 --domains 3,30,300 --rounds 5 --batch 4096 --mask-max 30

tower: forward + backward (no optimiser step) of a 3-layer tower, input 400 and hidden [400, 400, 400] with
ReLU, on one batch of 4096 rows, for

* ``linear``  -- plain :class:`adactr.nn.mlp.Linear` (no domains; the reference),
* ``domain``  -- :class:`adactr.nn.domain.DomainLinear` (grouped by domain),
* ``star``    -- :class:`adactr.nn.domain.StarLinear` (grouped by domain, ``W ⊙ W_p``),
* ``mask``    -- what the public multi-domain code does (Scenario-Wise-Rec's STAR, SharedBottom, MMoE;
  CDC's ADL): every domain's STAR layer on the whole batch, each row's own output kept by ``torch.where``.
  Its cost is linear in the number of domains, so it runs only up to ``--mask-max`` domains.

Domain sizes are long-tailed, p(d) ~ 1 / (d + 1) (the click world's ``domain_tail=1``), ids after the two
reserved slots; the same inputs at every domain count. The grouping (``DomainGroups.of``, one sort and one
host sync per batch) is inside the timed step, as a model would make it. Rounds are interleaved (every
contender once per round, in turn), so a slow moment of a shared machine hits all of them; the table gives
the median and the min-max of samples/s over rounds and the per-sample cost relative to 3 domains
(median samples/s at 3 over median at D).

layer: one 400 -> 400 layer, forward + backward, grouped (``DomainLinear``) against gathering each sample's
matrix (``W[d]`` as a (B, 400, 400) tensor, then a batched product: 2.6 GB at B = 4096) -- the two ways
to give each sample its own domain's weights; ``--gather-batch`` sets the batch of both.

models: training steps (forward, backward and an Adam step) of each multi-domain model (Shared-Bottom, MMoE,
HMoE, PLE, STAR, default settings) on the same rows of a prepared click world (``--data``), their domains
redrawn long-tailed among 3, 30 and 300 domains, and DNN (no domains) for scale::

    python benchmarks/domain_cost.py models --threads 1 --rounds 3
    python benchmarks/domain_cost.py models --threads 1 --rounds 3 --models hmoe,mmoe
    python benchmarks/domain_cost.py models --threads 1 --rounds 3 --domain-optimizer lazy_adam,dense

The models train with the trainer's optimisers (``build_optimizers``: fused Adam, and for the per-domain
parameters ``train.domain_optimizer``, lazy Adam by default).

HMoE is the one model whose definition runs every domain's gate and tower on every row (forward only, no
gradient: models/hmoe.py), so its cost per row grows with the number of domains.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adactr.data.schema import RESERVED
from adactr.nn.domain import DomainGroups, DomainLinear, StarLinear, domain_layer_factory
from adactr.nn.mlp import MLP, Linear
from adactr.train.cpu_memory import freed_memory_kept


class MaskStarLinear(StarLinear):
    """STAR as the public code runs it: all domains on all rows, then a mask (Scenario-Wise-Rec star.py)."""

    def forward(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> Tensor:
        d = cond.sorted_domain[cond.inverse] if isinstance(cond, DomainGroups) else cond  # (B,)
        out = F.linear(x, self.W, self.b)  # the reserved ids: the centre
        for p in range(self.n_domains - RESERVED):  # (B, out) per domain, whoever the rows belong to
            y = F.linear(x, self.W * self.W_p[p], self.b + self.b_p[p])
            out = torch.where((d == p + RESERVED).unsqueeze(1), y, out)
        return out


def domain_ids(batch: int, n_domains: int, seed: int = 0) -> Tensor:
    """(B,) ids in RESERVED .. RESERVED + n_domains - 1, p(d) ~ 1 / (d + 1)."""
    p = 1.0 / torch.arange(1, n_domains + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(p / p.sum(), batch, replacement=True, generator=g) + RESERVED


def tower(kind: str, dims: list[int], n_domains: int) -> nn.Module:
    layer: Callable[[int, int], nn.Module]
    if kind == "linear":
        layer = Linear
    else:
        cls = {"domain": DomainLinear, "star": StarLinear, "mask": MaskStarLinear}[kind]
        layer = domain_layer_factory(cls, n_domains + RESERVED)
    return MLP(input_dim=dims[0], hidden=tuple(dims[1:]), output_dim=None, layer=layer)


def step(model: nn.Module, x: Tensor, d: Tensor, kind: str) -> None:
    model.zero_grad(set_to_none=True)
    cond = None if kind == "linear" else DomainGroups.of(d)
    model(x, cond).square().mean().backward()


KEEP_FREED = True  # --fresh-memory: off


def timed(fn: Callable[[], None], steps: int) -> float:
    """Seconds per call of ``fn``, after one untimed call, inside the trainer's allocator scope (freed
    buffers reused step after step, as in training: without it every step of a 300-domain layer page-faults
    its 190 MB weight gradient in afresh)."""
    with freed_memory_kept(KEEP_FREED):
        fn()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) / steps


def run_tower(args: argparse.Namespace) -> None:
    dims = [int(v) for v in args.dims.split(",")]
    counts = [int(v) for v in args.domains.split(",")]
    torch.manual_seed(0)
    x = torch.randn(args.batch, dims[0])
    kinds = ["linear", "domain", "star", "mask"]
    cases = [(k, n) for n in counts for k in kinds if not (k == "mask" and n > args.mask_max)]
    models = {c: tower(c[0], dims, c[1]) for c in cases}
    ids = {n: domain_ids(args.batch, n) for n in counts}
    for (k, n), m in models.items():  # warm-up: allocator, oneDNN primitives
        step(m, x, ids[n], k)
    seconds: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for (k, n), m in models.items():
            seconds[(k, n)].append(timed(lambda m=m, k=k, n=n: step(m, x, ids[n], k), 1 if k == "mask" else args.steps))
    present = {n: int(torch.unique(ids[n]).numel()) for n in counts}
    print(f"tower {dims[0]} -> {dims[1:]}, batch {args.batch}, forward + backward, {torch.get_num_threads()} "
          f"thread(s), {args.rounds} interleaved rounds x {args.steps} steps (mask: 1 step)")
    print(f"domains present in the batch: {', '.join(f'{present[n]} of {n}' for n in counts)}")
    print("| layer | domains | samples/s median | min-max | cost per sample vs 3 domains |")
    print("|---|---:|---:|---:|---:|")
    for k in kinds:
        base = None
        for n in counts:
            if (k, n) not in seconds:
                print(f"| {k} | {n} | not run (> --mask-max {args.mask_max}) | | |")
                continue
            sps = [args.batch / s for s in seconds[(k, n)]]
            med = statistics.median(sps)
            base = base if base is not None else med
            print(f"| {k} | {n} | {med:,.0f} | {min(sps):,.0f}-{max(sps):,.0f} | {base / med:.2f}x |")


def run_layer(args: argparse.Namespace) -> None:
    """Grouped vs gathered per-sample matrices, one 400 -> 400 layer."""
    width = int(args.dims.split(",")[0])
    counts = [int(v) for v in args.domains.split(",")]
    B = args.gather_batch
    torch.manual_seed(0)
    x = torch.randn(B, width, requires_grad=True)

    def grouped(layer: DomainLinear, d: Tensor) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x, DomainGroups.of(d)).square().mean().backward()

    def gathered(layer: DomainLinear, d: Tensor) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        W = layer.weight.index_select(0, d)  # (B, out, in): each sample's own matrix
        y = torch.bmm(W, x.unsqueeze(2)).squeeze(2) + layer.bias.index_select(0, d)  # (B, out)
        y.square().mean().backward()

    layers = {n: DomainLinear(width, width, n_domains=n + RESERVED) for n in counts}
    ids = {n: domain_ids(B, n) for n in counts}
    fns = {"grouped": grouped, "gather": gathered}
    for n in counts:
        for f in fns.values():
            f(layers[n], ids[n])
    seconds: dict[tuple[str, int], list[float]] = {(name, n): [] for name in fns for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            for name, f in fns.items():
                seconds[(name, n)].append(timed(lambda f=f, n=n: f(layers[n], ids[n]), 1))
    print(f"one {width} -> {width} layer, batch {B}, forward + backward, {torch.get_num_threads()} thread(s), "
          f"{args.rounds} interleaved rounds")
    print("| way | domains | samples/s median | min-max |")
    print("|---|---:|---:|---:|")
    for name in fns:
        for n in counts:
            sps = [B / s for s in seconds[(name, n)]]
            print(f"| {name} | {n} | {statistics.median(sps):,.0f} | {min(sps):,.0f}-{max(sps):,.0f} |")


def run_models(args: argparse.Namespace) -> None:
    """Training steps (forward, backward, Adam step) of the multi-domain models on the same click-world rows,
    the rows' domains redrawn long-tailed among 3, 30, 300 domains; DNN beside them (no domains)."""
    from dataclasses import replace

    from adactr.data.schema import Schema
    from adactr.data.tensors import SplitArrays
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model, resolve_model_config

    schema = Schema.load(args.data / "schema.json")
    rows = SplitArrays.load(args.data / "train").to_tensors(torch.device("cpu"), slice(0, args.batch * args.batches))
    batches = list(rows.batches(args.batch))
    counts = [int(v) for v in args.domains.split(",")]
    names = args.models.split(",")
    from adactr.train.config import DomainOptimizer, TrainConfig
    from adactr.train.trainer import build_optimizers

    kinds = [DomainOptimizer(k) for k in args.domain_optimizer.split(",")]
    # the trainer's optimisers (fused Adam; with lazy_adam a third one for the per-domain parameters); one
    # model per domain optimiser, dnn (nothing per domain) once
    names = [f"{m} ({k.value})" if len(kinds) > 1 and m != "dnn" else m for m in names for k in kinds
             if m != "dnn" or k is kinds[0]]
    cases = [(m, n) for n in counts for m in names if not (m == "dnn" and n != counts[0])]
    ids = {n: [domain_ids(b.size, n, seed=i) for i, b in enumerate(batches)] for n in counts}
    built = {}
    for m, n in cases:
        torch.manual_seed(0)
        name, _, kind = m.partition(" (")
        layout = replace(schema.layout(), n_domains=n + RESERVED)
        model = build_model(name, layout=layout, config=resolve_model_config(name, ModelConfig())).train()
        cfg = TrainConfig(lr=1e-3, domain_optimizer=DomainOptimizer(kind.rstrip(")")) if kind else kinds[0])
        built[(m, n)] = (model, build_optimizers(model, cfg))

    def train_step(m: str, n: int) -> None:
        model, opts = built[(m, n)]
        for b, d in zip(batches, ids[n], strict=True):
            for o in opts:
                o.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(model(b._replace(domain=d)), b.label).backward()
            for o in opts:
                o.step()

    for c in cases:  # warm-up
        train_step(*c)
    seconds: dict[tuple[str, int], list[float]] = {c: [] for c in cases}
    for _ in range(args.rounds):
        for c in cases:
            seconds[c].append(timed(lambda c=c: train_step(*c), 1) / len(batches))
    print(f"training steps (forward, backward, Adam) on {args.data}, {len(batches)} batches of {args.batch}, "
          f"default model settings, {torch.get_num_threads()} thread(s), {args.rounds} interleaved rounds")
    print("| model | domains | samples/s median | min-max | cost per sample vs 3 domains |")
    print("|---|---:|---:|---:|---:|")
    for m in names:
        base = None
        for n in counts:
            if (m, n) not in seconds:
                continue
            sps = [args.batch / t for t in seconds[(m, n)]]
            med = statistics.median(sps)
            base = base if base is not None else med
            label = "(no domains)" if m == "dnn" else str(n)
            print(f"| {m} | {label} | {med:,.0f} | {min(sps):,.0f}-{max(sps):,.0f} | {base / med:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="tower", choices=["tower", "layer", "models"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the default)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--dims", default="400,400,400,400", help="input width, then the hidden widths")
    ap.add_argument("--domains", default="3,30,300", help="domain counts to compare (the first is the reference)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps timed together per round (mask: 1)")
    ap.add_argument("--mask-max", type=int, default=30, help="run the mask-every-domain tower up to this many domains")
    ap.add_argument("--gather-batch", type=int, default=4096, help="layer: the batch of both ways")
    ap.add_argument("--fresh-memory", action="store_true",
                    help="time outside the trainer's keep-freed-memory allocator scope")
    ap.add_argument("--data", type=Path, default=Path("bench_out/prepared/click-world-300"),
                    help="models: a prepared data set (its rows; the domains are redrawn)")
    ap.add_argument("--models", default="dnn,shared_bottom,mmoe,hmoe,ple,star", help="models: which")
    ap.add_argument("--batches", type=int, default=3, help="models: batches per timed pass")
    ap.add_argument("--domain-optimizer", default="lazy_adam",
                    help="models: train.domain_optimizer, or a comma list (lazy_adam,dense) to compare in one run")
    args = ap.parse_args()
    global KEEP_FREED
    KEEP_FREED = not args.fresh_memory
    if args.threads:
        torch.set_num_threads(args.threads)
    {"tower": run_tower, "layer": run_layer, "models": run_models}[args.what](args)


if __name__ == "__main__":
    main()
