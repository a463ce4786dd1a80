"""One DeepFM training step on a Criteo-shaped batch: milliseconds per step, optionally profiled.

    python benchmarks/cpu_step.py --threads 2 [--keep-freed-memory] [--compile] [--profile]

The model and optimiser of ``benchmarks/speed.py``'s 5M-row Criteo-shaped run (39 categorical fields,
a 222k-row table, embedding 10, tower [400, 400, 400], Adam, batch 4096) on random long-tailed indices:
isolates the step from data preparation, so a kernel change can be compared in seconds. ``--profile``
prints the operators by self time (how much of the step is matrix multiplication).
``--keep-freed-memory`` runs everything inside the trainer's glibc allocator scope
(adactr/train/cpu_memory.py); compare it across two runs. Each step is timed
on its own and the median is printed beside the mean (this shared CPU has noisy neighbours).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (compile time not timed)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--keep-freed-memory", action="store_true", help="the trainer's glibc setting (CPU default)")
    args = ap.parse_args(argv)
    with freed_memory_kept(args.keep_freed_memory) as kept:
        if args.keep_freed_memory and not kept:
            print("note: glibc mallopt unavailable, --keep-freed-memory has no effect", file=sys.stderr)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)  # as the trainer does
    torch.manual_seed(0)
    layout = FieldLayout(names=tuple(f"f{i}" for i in range(39)), cat_sizes=CRITEO_SIZES, n_num=0,
                         seq_sizes=(), seq_pooling=())
    model = build_model("deepfm", layout=layout, config=ModelConfig())
    opts = build_optimizers(model, TrainConfig())
    fwd = torch.compile(model) if args.compile else model
    B = 4096
    batches = [Batch(cat=criteo_indices(B), num=torch.zeros(B, 0), seq=(), label=(torch.rand(B) < 0.25).float())
               for _ in range(8)]

    def step(b: Batch) -> None:
        loss = F.binary_cross_entropy_with_logits(fwd(b), b.label)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    for b in batches:  # warm-up (and compilation)
        step(b)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        times.append((time.perf_counter() - t0) * 1e3)
    ms, mean = sorted(times)[len(times) // 2], sum(times) / len(times)
    flops = B * dnn_flops_per_sample(39 * 10, [400, 400, 400])  # tower forward + backward
    print(f"threads {args.threads}{' compiled' if args.compile else ''}"
          f"{' keep-freed-memory' if args.keep_freed_memory else ''}: median {ms:.1f} ms/step (mean {mean:.1f}), "
          f"{B / ms * 1e3:,.0f} samples/s, tower {flops / ms / 1e6:.1f} GFLOP/s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for b in batches:
                step(b)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
