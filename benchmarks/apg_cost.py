"""APG efficiency: the paper's Table 5 (time and memory of v1..v4 vs Base) and the serving cost of v5.

    python benchmarks/apg_cost.py table5 --device cpu            # Table 5 on this CPU
    python benchmarks/apg_cost.py table5 --device cuda           # ... on a GPU (the paper's setting)
    python benchmarks/apg_cost.py serving --device cpu           # Base vs v5 training form vs v5 collapsed
    python benchmarks/apg_cost.py generator --device cpu         # G's output layer: nn.Linear vs ours
    python benchmarks/apg_cost.py table5 --input 100 --rank 8 --cond-dim 10 --sizes 64,32,16 --batch 4096
                                                                 # the Table 4 tower, group-wise

table5: an MLP tower with input width 393 and hidden sizes [64,32,16] .. [1024,512,256], every hidden layer
static (Base) or APG v1..v5 with K = 4, self-wise condition (z = the layer's own input; the paper does
not say which condition its Table 5 used, and self-wise needs no extra input). Same random batches for
every variant, all in one run. Time = one training step (forward, backward, Adam), median of --reps.
Memory = the hidden layers' parameters + the activations autograd saves for backward (counted with
saved-tensor hooks, so it means the same on CPU and GPU); on CUDA also the step's peak allocation.
--input, --rank, --sizes and --cond-dim (a group-wise condition: one learned vector per row, standing in
for a field embedding) change the setting, e.g. to the tower APG Table 4 trains.

generator: one forward + backward of the generator's output layer (condition width -> the flattened
generated matrices, e.g. 10 -> 256 x 100 for v1), ``nn.Linear`` vs :class:`WideOutputLinear` (same
parameters, same gradients, the weight gradient formed as (x^T g)^T), side by side on the same inputs.

serving: DeepFM with the tower [400, 400, 400] on Frappe-sized fields (10 fields, 5,382 values),
no-grad forward latency per batch at batch sizes 1, 256, 4096: Base, APG v5 in its training form
(U = U^l U^r recomputed per call) and APG v5 collapsed by ``for_inference()`` (U, V stored once).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from adactr.data.schema import FieldLayout, Pooling
from adactr.data.tensors import Batch
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.registry import build_model
from adactr.nn.apg import APGConfig, APGVersion, ConditionMode, apg_layer_factory
from adactr.nn.mlp import MLP, Linear, WideOutputLinear
from adactr.train.cpu_memory import freed_memory_kept

SIZES = [(64, 32, 16), (128, 64, 32), (256, 128, 64), (512, 256, 128), (1024, 512, 256)]
VARIANTS = ["base", "v1", "v2", "v3", "v4", "v5"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


KEEP_FREED = False  # --keep-freed-memory: time each contender inside the trainer's allocator scope


def _median_seconds(fn: Callable[[], None], device: torch.device, reps: int, warmup: int) -> float:
    times = []
    with freed_memory_kept(KEEP_FREED and device.type == "cpu"):
        for _ in range(warmup):
            fn()
        for _ in range(reps):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


class _GroupConditioned(nn.Module):
    """A tower fed one learned condition vector per row, standing in for a group field's embedding."""

    def __init__(self, tower: MLP, z: torch.Tensor) -> None:
        super().__init__()
        self.tower = tower
        self.z = nn.Parameter(z)  # (B, Dz), trained like the embedding it stands for

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tower(x, self.z)


def _tower(variant: str, hidden: tuple[int, ...], width: int, *, rank: int = 4, cond_dim: int = 0,
           batch: int = 0) -> nn.Module:
    """Base or APG ``variant``; self-wise, or group-wise on a ``cond_dim``-wide condition when > 0."""
    if variant == "base":
        layer = Linear
    else:
        mode = ConditionMode.GROUP if cond_dim else ConditionMode.SELF
        # the paper's layer (no W_0 path): Table 5 measures what low-rank generation costs and saves
        cfg = APGConfig(version=APGVersion(variant), rank=rank, condition=mode, static_weight=False,
                        condition_fields=("group",) if cond_dim else ())
        layer = apg_layer_factory(cfg, cond_dim=cond_dim)
    tower = MLP(input_dim=width, hidden=hidden, output_dim=1, layer=layer)
    return _GroupConditioned(tower, torch.randn(batch, cond_dim)) if cond_dim else tower


def _saved_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (activations)."""
    total, seen = 0, set()

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen and not isinstance(t, nn.Parameter):
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return total


def _train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.binary_cross_entropy_with_logits(model(x).squeeze(-1), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def table5(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    torch.manual_seed(0)
    width, B, K = args.input, args.batch, args.rank
    x = torch.randn(B, width, device=device)
    y = (torch.rand(B, device=device) < 0.3).float()
    cond = f"group-wise condition of width {args.cond_dim}" if args.cond_dim else "self-wise condition"
    print(f"Table 5 (input {width}, K = {K}, batch {B}, {cond}, {device}, median of {args.reps} steps)")
    print("| hidden | " + " | ".join(f"{v} time ms (Δ%)" for v in VARIANTS) + " | "
          + " | ".join(f"{v} memory MB (Δ%)" for v in VARIANTS) + " |")
    print("|---" * (1 + 2 * len(VARIANTS)) + "|")
    sizes = [tuple(int(h) for h in t.split(",")) for t in args.sizes.split(";")] if args.sizes else SIZES
    for hidden in sizes:
        times, mems = {}, {}
        for v in VARIANTS:
            if v in args.skip.split(","):
                continue
            torch.manual_seed(0)
            model = _tower(v, hidden, width, rank=K, cond_dim=args.cond_dim, batch=B).to(device)
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)

            step = partial(_train_step, model, opt, x, y)
            times[v] = _median_seconds(step, device, args.reps, args.warmup) * 1e3
            param_bytes = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "z")
            mem = param_bytes + _saved_bytes(model, x, y)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
                step()
                _sync(device)
                mem_peak = torch.cuda.max_memory_allocated(device) - base
                mems[v] = (mem / 2**20, mem_peak / 2**20)
            else:
                mems[v] = (mem / 2**20, None)
            del model, opt, step
        bt, bm = times["base"], mems["base"][0]
        cells_t = [f"{times[v]:.2f}" + ("" if v == "base" else f" ({100 * (times[v] / bt - 1):+.1f}%)")
                   if v in times else "-" for v in VARIANTS]
        cells_m = []
        for v in VARIANTS:
            if v not in mems:
                cells_m.append("-")
                continue
            m, peak = mems[v]
            cell = f"{m:.2f}" + ("" if v == "base" else f" ({100 * (m / bm - 1):+.1f}%)")
            if peak is not None:
                cell += f" [peak {peak:.1f}]"
            cells_m.append(cell)
        print(f"| {list(hidden)} | " + " | ".join(cells_t) + " | " + " | ".join(cells_m) + " |", flush=True)
    if device.type == "cpu":
        import resource  # POSIX; this benchmark runs on Linux

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KB -> GB
        print(f"peak resident memory of this process: {peak:.1f} GB")


def _frappe_like_batch(B: int, device: torch.device) -> tuple[FieldLayout, Batch]:
    sizes = (959, 4084, 9, 9, 4, 5, 4, 11, 82, 215)  # Frappe_x1's vocabularies (+ the 2 reserved slots)
    layout = FieldLayout(names=tuple(f"f{i}" for i in range(len(sizes))), cat_sizes=sizes, n_num=0,
                         seq_sizes=(), seq_pooling=tuple[Pooling, ...]())
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, s, (B,), generator=g) for s in sizes], dim=1).to(device)
    batch = Batch(cat=cat, num=torch.zeros(B, 0, device=device), seq=(), label=torch.zeros(B, device=device))
    return layout, batch


def serving(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    print(f"Serving latency, DeepFM [400,400,400] on Frappe-sized fields, {device}, no-grad forward, "
          f"median of {args.reps} calls (ms per batch)")
    print("| batch | Base | APG v5 training form | APG v5 collapsed | collapsed vs training form | "
          "collapsed vs Base |")
    print("|---|---|---|---|---|---|")
    for B in (1, 256, 4096):
        layout, batch = _frappe_like_batch(B, device)
        res = {}
        for name in ("base", "v5", "v5-collapsed"):
            torch.manual_seed(0)
            cfg = ModelConfig() if name == "base" else ModelConfig(tower_layer=TowerLayer.APG,
                                                                   apg=APGConfig(version=APGVersion.V5,
                                                                                 static_weight=False))
            model = build_model("deepfm", layout=layout, config=cfg).to(device).eval()
            if name == "v5-collapsed":
                model = model.for_inference().eval()
            with torch.no_grad():
                res[name] = _median_seconds(partial(model, batch), device, args.reps, args.warmup) * 1e3
        vs_train = 100 * (res["v5-collapsed"] / res["v5"] - 1)
        vs_base = 100 * (res["v5-collapsed"] / res["base"] - 1)
        print(f"| {B} | {res['base']:.3f} | {res['v5']:.3f} | {res['v5-collapsed']:.3f} | {vs_train:+.1f}% | "
              f"{vs_base:+.1f}% |", flush=True)


GENERATOR_SHAPES = [(10, 16 * 16), (10, 100 * 256), (10, 400 * 400), (64, 100 * 256), (393, 64 * 393)]


def generator(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    B = args.batch
    print(f"APG generator output layer, forward + backward, batch {B}, {device}, median of {args.reps} "
          f"(ms)")
    print("| in -> out | nn.Linear | WideOutputLinear | speed-up | max relative grad difference |")
    print("|---|---|---|---|---|")
    for d_in, d_out in GENERATOR_SHAPES:
        torch.manual_seed(0)
        ref = nn.Linear(d_in, d_out).to(device)
        ours = WideOutputLinear(d_in, d_out).to(device)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(B, d_in, device=device, requires_grad=True)
        g = torch.randn(B, d_out, device=device)
        grads = {}
        times = {}
        for name, layer in (("ref", ref), ("ours", ours)):
            def fwd_bwd(layer: nn.Module = layer, x: torch.Tensor = x, g: torch.Tensor = g) -> None:
                x.grad = None
                layer.zero_grad(set_to_none=True)
                layer(x).backward(g)
            times[name] = _median_seconds(fwd_bwd, device, args.reps, args.warmup) * 1e3
            grads[name] = [t.grad.clone() for t in (x, layer.weight, layer.bias)]  # type: ignore[union-attr]
        diff = max(((a - b).abs().max() / a.abs().max()).item()
                   for a, b in zip(grads["ref"], grads["ours"], strict=True))
        print(f"| {d_in} -> {d_out} | {times['ref']:.1f} | {times['ours']:.1f} | "
              f"{times['ref'] / times['ours']:.2f}x | {diff:.1e} |", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["table5", "serving", "generator"])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1024, help="table5 and generator: batch size")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--skip", default="", help="table5: variants to leave out, e.g. v1")
    ap.add_argument("--input", type=int, default=393, help="table5: input width (the paper: 393)")
    ap.add_argument("--rank", type=int, default=4, help="table5: K (the paper: 4)")
    ap.add_argument("--sizes", default="", help='table5: hidden sizes, e.g. "64,32,16;256,128,64" (default: the '
                    "paper's five)")
    ap.add_argument("--cond-dim", type=int, default=0,
                    help="table5: group-wise condition of this width instead of self-wise (0)")
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="time each contender inside the trainer's CPU allocator scope "
                         "(adactr/train/cpu_memory.py; the trainer's default)")
    args = ap.parse_args(argv)
    global KEEP_FREED
    KEEP_FREED = args.keep_freed_memory
    if KEEP_FREED:
        with freed_memory_kept() as kept:
            if not kept:
                print("note: glibc mallopt unavailable, --keep-freed-memory has no effect", file=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    {"table5": table5, "serving": serving, "generator": generator}[args.what](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
