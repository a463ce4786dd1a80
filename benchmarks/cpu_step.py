"""One DeepFM training step on a Criteo-shaped batch: milliseconds per step, optionally profiled.

    python benchmarks/cpu_step.py --threads 2 [--linear onednn,aten] [--keep-freed-memory] [--compile] [--profile]
    python benchmarks/cpu_step.py --threads 2 --gemm
    python benchmarks/cpu_step.py --threads 2 --keep-freed-memory --data prepared/criteo5m [--mapped]

The model and optimiser of ``benchmarks/speed.py``'s 5M-row Criteo-shaped run (39 categorical fields,
a 222k-row table, embedding 10, tower [400, 400, 400], Adam, batch 4096) on random long-tailed indices:
isolates the step from data preparation, so a kernel change can be compared in seconds. ``--linear``
names the CPU linear-layer backends to compare (adactr.nn.mlp: oneDNN, or PyTorch's own ``F.linear``):
one model each, the same initial weights, their steps interleaved in rounds so that this shared CPU's
noisy neighbours slow both alike. ``--profile`` prints the operators by self time (how much of the step
is matrix multiplication). ``--keep-freed-memory`` runs everything inside the trainer's glibc allocator
scope (adactr/train/cpu_memory.py). Each step is timed on its own and the median is printed beside the
mean. ``--gemm`` instead times the tower's matrix products alone, MKL (``torch.mm``/``addmm``) against
oneDNN, at each shape a step uses. ``--data`` takes real shuffled batches of a prepared directory's train
split instead, drawn inside the timed step as the trainer draws them (read into memory first, as the
trainer does, or with ``--mapped`` from the memory map, as it did before).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
import torch.nn.functional as F

import adactr.nn.mlp as mlp
from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.config import ModelConfig
from adactr.models.registry import build_model
from adactr.train.config import TrainConfig
from adactr.train.cpu_memory import freed_memory_kept
from adactr.train.trainer import build_optimizers

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parent / "peers")]
from _common import dnn_flops_per_sample  # noqa: E402
from embedding_kernels import CRITEO_SIZES, criteo_indices  # noqa: E402

B = 4096


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24, help="timed steps per backend")
    ap.add_argument("--linear", default="onednn", help="comma-separated: onednn, aten")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compile time not timed)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep-freed-memory", action="store_true", help="the trainer's glibc setting (CPU default)")
    ap.add_argument("--gemm", action="store_true", help="time the tower's matrix products, MKL vs oneDNN")
    ap.add_argument("--data", type=Path, help="a prepared directory: real shuffled batches of its train split "
                    "(the trainer's own step) instead of random Criteo-shaped ones")
    ap.add_argument("--mapped", action="store_true",
                    help="with --data: draw batches from the memory-mapped arrays instead of reading them in first")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.gemm:
        return _gemm()
    backends = [b for b in args.linear.split(",") if b]
    bad = [b for b in backends if b not in ("onednn", "aten")]
    if bad or not backends:
        ap.error(f"--linear: unknown backend(s) {bad}; choose from onednn, aten")
    if "onednn" in backends and not mlp.CPU_ONEDNN:
        ap.error("--linear onednn: oneDNN linear is unavailable in this torch build (or ADACTR_CPU_LINEAR=aten)")
    with freed_memory_kept(args.keep_freed_memory) as kept:
        if args.keep_freed_memory and not kept:
            print("note: glibc mallopt unavailable, --keep-freed-memory has no effect", file=sys.stderr)
        return _run(args, backends)


def _median_ms(f: Callable[[], object], n: int = 30) -> float:
    for _ in range(3):
        f()
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e3


def _products(k: int, n: int) -> tuple:
    """(name, (m, k, n), MKL call, oneDNN call) for a layer in -> out = k -> n at batch B."""
    lp = torch.ops.mkldnn._linear_pointwise
    x, w, b, g = torch.randn(B, k), torch.randn(n, k), torch.randn(n), torch.randn(B, n)
    wt = w.t().contiguous()
    return (("forward x W^T + b", (B, k, n), lambda: torch.addmm(b, x, w.t()), lambda: lp(x, w, b, "none", [], "")),
            ("input grad g W", (B, n, k), lambda: g @ w, lambda: lp(g, wt, None, "none", [], "")),
            ("weight grad g^T x", (n, B, k), lambda: g.t() @ x,
             lambda: lp(g.t().contiguous(), x.t().contiguous(), None, "none", [], "")))


def _gemm() -> int:
    print("| product | (m x k) @ (k x n) | MKL ms | MKL GFLOP/s | oneDNN ms | oneDNN GFLOP/s |")
    print("|---|---|---|---|---|---|")
    for k, n in ((390, 400), (400, 400)):
        for name, (m, kk, nn_), f_mkl, f_dnn in _products(k, n):
            flop = 2 * m * kk * nn_
            a, d = _median_ms(f_mkl), _median_ms(f_dnn)
            print(f"| {name} | ({m} x {kk}) @ ({kk} x {nn_}) | {a:.2f} | {flop / a / 1e6:.0f} | {d:.2f} | "
                  f"{flop / d / 1e6:.0f} |")
    print("(oneDNN's weight gradient includes copying both operands transposed, as it would have to)")
    return 0


def _real_batches(args: argparse.Namespace) -> tuple[FieldLayout, Iterator[Batch], float]:
    """(layout, endless shuffled batches of the train split, seconds to load it) of a prepared directory."""
    from adactr.data.schema import Schema
    from adactr.data.tensors import SplitArrays

    layout = Schema.load(args.data / "schema.json").layout()
    t0 = time.perf_counter()
    split = SplitArrays.load(args.data / "train").to_tensors(torch.device("cpu"), load=not args.mapped)
    seconds = time.perf_counter() - t0

    def forever() -> Iterator[Batch]:
        epoch = 0
        while True:
            yield from split.batches(B, shuffle=True, generator=torch.Generator().manual_seed(epoch))
            epoch += 1

    return layout, forever(), seconds


def _run(args: argparse.Namespace, backends: list[str]) -> int:
    torch.set_flush_denormal(True)  # as the trainer does
    torch.manual_seed(0)
    if args.data is not None:
        layout, stream, load_s = _real_batches(args)
        print(f"{args.data}: train split {'mapped' if args.mapped else f'read into memory in {load_s:.2f} s'}")

        def get(i: int) -> Batch:  # drawn inside the timed step, as the trainer draws it
            return next(stream)
    else:
        layout = FieldLayout(names=tuple(f"f{i}" for i in range(39)), cat_sizes=CRITEO_SIZES, n_num=0,
                             seq_sizes=(), seq_pooling=())
        batches = [Batch(cat=criteo_indices(B), num=torch.zeros(B, 0), seq=(),
                         label=(torch.rand(B) < 0.25).float()) for _ in range(8)]

        def get(i: int) -> Batch:
            return batches[i % len(batches)]
    runs = {}
    for name in backends:
        torch.manual_seed(0)
        model = build_model("deepfm", layout=layout, config=ModelConfig())
        fwd = torch.compile(model) if args.compile else model
        runs[name] = (fwd, build_optimizers(model, TrainConfig()))

    def step(name: str, i: int) -> None:
        mlp.CPU_ONEDNN = name == "onednn"
        fwd, opts = runs[name]
        b = get(i)
        loss = F.binary_cross_entropy_with_logits(fwd(b), b.label)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    for name in backends:
        for i in range(8):  # warm-up (and compilation)
            step(name, i)
    times: dict[str, list[float]] = {name: [] for name in backends}
    for i in range(args.steps):
        for name in backends:
            t0 = time.perf_counter()
            step(name, i)
            times[name].append((time.perf_counter() - t0) * 1e3)
    flops = B * dnn_flops_per_sample(layout.n_fields * 10, [400, 400, 400])  # tower forward + backward
    for name in backends:
        ts = times[name]
        ms, mean = sorted(ts)[len(ts) // 2], sum(ts) / len(ts)
        print(f"linear {name}, threads {args.threads}{' compiled' if args.compile else ''}"
              f"{' keep-freed-memory' if args.keep_freed_memory else ''}: median {ms:.1f} ms/step (mean {mean:.1f}),"
              f" {B / ms * 1e3:,.0f} samples/s, tower {flops / ms / 1e6:.1f} GFLOP/s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        for name in backends:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for i in range(8):
                    step(name, i)
            print(f"linear {name}:")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
