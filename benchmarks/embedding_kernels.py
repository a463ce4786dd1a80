"""CPU kernels for the embedding gather and its backward, side by side on one Criteo-shaped batch.

    python benchmarks/embedding_kernels.py --threads 1

A (4096, 39) batch of indices (long-tailed, per-field offsets) into a 222k-row table (the 5M
Criteo-shaped rows of benchmarks/speed.py), dims 10 and 1 (DeepFM's embedding and first-order term).
Prints milliseconds per call and the largest difference from the reference sum; this is what chose
``_GatherRows`` in src/adactr/nn/embedding.py.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

# per-field vocabulary sizes of the 5M Criteo-shaped rows' 222k-row table (39 fields)
CRITEO_SIZES = (*[60] * 8, 222_000 - 60 * 12 - 20000 * 8 - 1500 * 18, *[60] * 4, *[20000] * 8, *[1500] * 18)


def criteo_indices(batch: int) -> torch.Tensor:
    """(batch, 39) long-tailed per-field indices into :data:`CRITEO_SIZES` (field-local, no offsets)."""
    return ((torch.rand(batch, len(CRITEO_SIZES)) ** 4) * torch.tensor(CRITEO_SIZES)).long()


def _ms(f: Callable[[], object], n: int) -> float:
    f()
    t0 = time.perf_counter()
    for _ in range(n):
        f()
    return (time.perf_counter() - t0) / n * 1e3


def _rows(D: int, idx: torch.Tensor, V: int, repeats: int) -> None:
    flat = idx.reshape(-1)
    w = torch.randn(V, D)
    g = torch.randn(flat.numel(), D)
    fwd = {"table[idx] (advanced indexing)": lambda: w[idx],
           "index_select": lambda: w.index_select(0, flat).view(*idx.shape, D),
           "F.embedding": lambda: torch.nn.functional.embedding(idx, w)}
    bwd = {"nn.Embedding dense backward": lambda: torch.ops.aten.embedding_dense_backward(g, flat, V, -1, False),
           "index_add_": lambda: torch.zeros(V, D).index_add_(0, flat, g),
           "scatter_add_": lambda: torch.zeros(V, D).scatter_add_(0, flat[:, None].expand(-1, D), g),
           "index_put_(accumulate=True)": lambda: torch.zeros(V, D).index_put_((flat,), g, accumulate=True)}
    for kind, table, ref in (("forward", fwd, w[idx]), ("backward", bwd, torch.zeros(V, D).index_add_(0, flat, g))):
        for name, f in table.items():
            diff = float((f() - ref).abs().max())
            print(f"| {D} | {kind}: {name} | {_ms(f, repeats):.2f} | {diff:.1e} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sizes = list(CRITEO_SIZES)
    offsets = torch.tensor([0, *sizes]).cumsum(0)[:39]
    idx = criteo_indices(4096) + offsets  # (B, F), long-tailed
    print(f"threads {args.threads}, indices {tuple(idx.shape)}, table rows {sum(sizes):,}")
    print("| D | kernel | ms per call | max abs diff vs reference |\n|---|---|---|---|")
    for D in (10, 1):
        _rows(D, idx, sum(sizes), args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
