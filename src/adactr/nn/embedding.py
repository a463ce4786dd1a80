"""One embedding table for all fields, with per-field offsets.

    cat (B, Fc) + offsets ──> table ──> (B, Fc, D)
    num (B, Fn) ──> value x per-field vector ──> (B, Fn, D)        (FuxiCTR / DeepCTR convention)
    seq_j (B, L) + offset_j ──> table ──> masked mean/sum over L ──> (B, 1, D)
    concatenated in that order ──> (B, F, D)

A single table (instead of one ``nn.Embedding`` per field) makes the lookup one gather and the optimiser
step one tensor. Index 0 of every field is "missing" and 1 is "OOV": both are ordinary learned rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adactr.data.schema import FieldLayout, Pooling
from adactr.data.tensors import Batch


class _GatherRows(torch.autograd.Function):
    """``table[idx]`` by ``F.embedding``, with a backward of one ``index_add_`` (CPU only).

    The fastest reproducible CPU kernels we measured for a (4096, 39) batch of a 222k x 10 table, two
    threads (``python benchmarks/embedding_kernels.py --threads 2``): forward ``table[idx]`` 3.1 ms,
    ``F.embedding`` 0.8 ms; backward ``nn.Embedding``'s dense backward (sorts the indices) 9.9 ms,
    ``index_add_`` 4.9 ms, bit-identical sums. (``index_put_(accumulate=True)`` is no faster and its
    sums differ between runs with two threads.) On CUDA ``index_add_`` uses atomics (not reproducible),
    so CUDA keeps ``nn.Embedding``'s backward.
    """

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor) -> Tensor:
        ctx.save_for_backward(idx)
        ctx.rows = table.shape[0]
        return F.embedding(idx, table)  # (*idx.shape, D)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (idx,) = ctx.saved_tensors
        d = grad.shape[-1]
        out = grad.new_zeros(ctx.rows, d).index_add_(0, idx.reshape(-1), grad.reshape(-1, d))
        return out, None


class FieldEmbedding(nn.Module):
    """Maps a :class:`Batch` to field embeddings of shape (B, F, D)."""

    def __init__(self, *, layout: FieldLayout, dim: int, init_std: float | None = 1e-4) -> None:
        super().__init__()
        init_std = 1e-4 if init_std is None else init_std  # a model built without the registry's default
        self.layout, self.dim = layout, dim
        sizes = list(layout.cat_sizes) + list(layout.seq_sizes)
        offsets = torch.tensor([0] + sizes, dtype=torch.long).cumsum(0)
        self.table = nn.Embedding(int(offsets[-1]) if sizes else 1, dim)
        nn.init.normal_(self.table.weight, std=init_std)
        n_cat = len(layout.cat_sizes)
        self.cat_offsets: Tensor
        self.register_buffer("cat_offsets", offsets[:n_cat].clone(), persistent=False)  # (Fc,)
        self.seq_offsets = [int(o) for o in offsets[n_cat:-1]]
        self.num_weight = nn.Parameter(torch.randn(layout.n_num, dim) * init_std)  # (Fn, D)
        self.seq_sum = [p is Pooling.SUM for p in layout.seq_pooling]

    @property
    def n_fields(self) -> int:
        return self.layout.n_fields

    def lookup(self, idx: Tensor) -> Tensor:
        """Rows of the table for global indices ``idx`` (any shape) -> (*idx.shape, D)."""
        w = self.table.weight
        if w.device.type == "cpu" and not self.table.sparse and torch.is_grad_enabled() and w.requires_grad:
            return _GatherRows.apply(w, idx)
        return self.table(idx)

    def _global_index(self, cat: Tensor) -> Tensor:
        """Field-local indices (B, Fc) -> rows of the table, int64 (B, Fc)."""
        off = self.cat_offsets
        if cat.dtype == torch.int32 and self.table.num_embeddings < 2**31:
            # int32 + int64 takes PyTorch's slow casting path: 0.94 ms for a (4096, 39) batch on two CPU
            # threads, against 0.02 ms for int32 + int32 (prepared data is int32)
            off = off.to(torch.int32)
        return (cat + off).long()  # int64: the CPU index_add_ of the backward is ~3x slower with int32

    def forward(self, batch: Batch) -> Tensor:
        parts = []
        if batch.cat.shape[1]:
            parts.append(self.lookup(self._global_index(batch.cat)))  # (B, Fc, D)
        if self.layout.n_num:
            parts.append(batch.num.unsqueeze(-1) * self.num_weight)  # (B, Fn, D)
        for seq, off, use_sum in zip(batch.seq, self.seq_offsets, self.seq_sum, strict=True):
            mask = (seq > 0).unsqueeze(-1)  # (B, L, 1): 0 = padding / missing
            e = (self.lookup(seq + off) * mask).sum(1, keepdim=True)  # (B, 1, D)
            if not use_sum:
                e = e / mask.sum(1, keepdim=True).clamp(min=1)
            parts.append(e)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
