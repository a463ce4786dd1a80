"""Per-domain linear layers for the tower's layer factory: each sample uses its own domain's parameters.

``DomainLinear`` (a separate network per domain, the towers of Shared-Bottom / MMoE-style multi-domain
models)::

    y_i = W_{d_i} x_i + b_{d_i}

``StarLinear`` (STAR, Sheng et al., CIKM 2021, Section 4.2, the star topology fully-connected network: the
weights of domain ``p`` are the shared centre's times the domain's own, element by element)::

    W_p^* = W ⊙ W_p,   b_p^* = b + b_p,   y_i = W_{d_i}^* x_i + b_{d_i}^*

ADL's ``W_s ⊗ W_j`` (Li et al., SIGIR 2023) is the same algebra with a routed cluster ``j`` for ``d_i``.

**Cost.** Samples are *grouped* by domain: one stable sort of the batch, then one matrix product per
domain present in the batch over that domain's rows only, and the rows put back in their order. The
products add up to the same ``2 B in out`` multiply-adds as one ``nn.Linear``, whatever the number of
domains. The public multi-domain code (Scenario-Wise-Rec's STAR, SharedBottom, MMoE, PLE; CDC's ADL; see
``shared/research/multidomain.md``) instead runs every domain's network on the whole batch and keeps each
sample's own output with a mask: ``D`` times the work. Gathering each sample's matrix (``W[d]``, a
``(B, out, in)`` tensor, then a batched product) is the same arithmetic but reads ``in x out`` weights per
sample: at B = 4096, 400 -> 400 that is 2.6 GB per layer, and it ran 20-90x slower than grouping on one
CPU thread, so it is not offered. What grouping cannot avoid is reading (and, for STAR, multiplying) each
*present* domain's ``out x in`` matrix and writing its gradient once per batch: with hundreds of
domains of a few rows each, that weight traffic, not the arithmetic, is what grows. With ``sparse`` on
(the trainer's ``train.domain_optimizer=lazy_adam``) the gradient holds the present domains' rows only and
the optimiser steps those only, so an absent domain costs nothing; a present one still costs its matrices. Measured
(``python benchmarks/domain_cost.py --threads 1``, tower 400 -> [400, 400, 400], batch 4096, forward +
backward, per-sample cost against 3 domains): ``DomainLinear`` 1.46x at 30 domains and 3.0x at 300,
``StarLinear`` 1.6x and 5.4x, the public mask approach 8.9x at 30; docs/multidomain.md has the table.

**The domain id** comes as the condition, ``forward(x, cond)``: a ``(B,)`` integer tensor (``Batch.domain``)
or a :class:`DomainGroups` made once per batch with :meth:`DomainGroups.of` (then the sort is shared by
every layer of the tower). Ids follow the schema: ``0`` ``<missing>`` and ``1`` ``<unseen>`` (a domain not
in train, or rarer than ``--min-domain-count``), then the train domains; ``n_domains`` is
``FieldLayout.n_domains`` (the reserved slots included).

**Fallback for the reserved ids.** In ``StarLinear`` a sample of ``<missing>`` or ``<unseen>`` uses the
shared centre alone (``W``, ``b``): the part every sample trains, and the only one that can speak for a
domain the model never saw. There are no specific parameters for those ids, so nothing untrained (or
decayed by weight decay) is ever used. ``DomainLinear`` has no shared part: its ``<unseen>`` row is
trained by the rows that are ``<unseen>`` in train (the rare domains pooled by ``--min-domain-count``),
and is left at its initialisation otherwise; prefer ``StarLinear`` when test domains may be new.

**Gradients.** A domain's parameters get gradient from its own samples only (the grouped products never
touch another domain's rows), as STAR's specific weights and ADL's cluster weights must.

>>> import torch
>>> layer = StarLinear(2, 1, n_domains=4)  # ids 0, 1 reserved; domains 2 and 3
>>> with torch.no_grad():
...     _ = layer.W.fill_(1.0), layer.b.zero_(), layer.W_p[1].fill_(3.0), layer.b_p[1].fill_(0.5)
>>> layer(torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]]), torch.tensor([1, 2, 3])).squeeze(1).tolist()
[3.0, 3.0, 9.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adactr.data.schema import RESERVED


class DomainGroups(NamedTuple):
    """A batch's rows grouped by domain: computed once per batch, shared by every per-domain layer."""

    order: Tensor  # (B,) row indices sorted by domain (stable: rows of a domain keep their order)
    inverse: Tensor  # (B,) where each row went: sorted[inverse] is the batch again
    sorted_domain: Tensor  # (B,) the domain of each sorted row
    present: tuple[int, ...]  # (U,) the domains present, increasing, on the host
    counts: tuple[int, ...]  # (U,) rows of each present domain, on the host: the segment bounds
    present_index: Tensor  # (U,) int64 the present domains, on the device
    segment: Tensor  # (B,) int64 for each sorted row, its domain's position in ``present`` (0 .. U-1)

    @classmethod
    def of(cls, domain: Tensor) -> DomainGroups:
        """Group a ``(B,)`` integer tensor of domain ids (one host sync: the segment sizes)."""
        if domain.dim() != 1 or domain.dtype.is_floating_point or domain.dtype == torch.bool:
            raise ValueError(f"domain ids must be a 1-D integer tensor, got {tuple(domain.shape)} {domain.dtype}")
        sorted_domain, order = torch.sort(domain, stable=True)  # (B,), (B,)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)  # (B,)
        present, counts = torch.unique_consecutive(sorted_domain, return_counts=True)  # (U,), (U,)
        host = torch.stack([present.long(), counts.long()]).tolist() if present.numel() else [[], []]
        if host[0] and host[0][0] < 0:
            raise ValueError(f"domain ids must be >= 0, got {host[0][0]}")
        segment = torch.repeat_interleave(torch.arange(present.numel(), device=domain.device), counts,
                                          output_size=domain.numel())  # (B,)
        return cls(order, inverse, sorted_domain, tuple(host[0]), tuple(host[1]), present.long(), segment)

    def max_id(self) -> int:
        return self.present[-1] if self.present else -1


def _groups(cond: Tensor | DomainGroups | None, n_domains: int, who: str) -> DomainGroups:
    if cond is None:
        raise ValueError(f"{who} needs the domain ids as its condition: forward(x, cond) with cond = Batch.domain "
                         "(B,) or DomainGroups.of(Batch.domain); is the dataset prepared with --domain?")
    groups = cond if isinstance(cond, DomainGroups) else DomainGroups.of(cond)
    if groups.max_id() >= n_domains:
        raise ValueError(f"{who}: domain id {groups.max_id()} is outside n_domains = {n_domains}")
    return groups


class _GroupedLinearFn(torch.autograd.Function):
    """``y[rows of u] = xs[rows of u] @ M_u^T`` for consecutive row segments, one product per segment, where
    ``M_u = W[r_u]`` (``shared`` None), or ``shared ⊙ W[r_u]`` (STAR), or ``shared`` alone (``r_u < 0``).

    xs (B, in) rows sorted by domain; W (R, out, in) every domain's matrix (never copied: a segment reads
    its own row); shared (out, in) or None; rows (U,) and counts (U,) host ints. ``M_u`` is formed one
    domain at a time in one reused ``out x in`` buffer (it stays in cache) and formed again in the
    backward, so no (U, out, in) tensor is ever made: at 300 domains of a 400 x 400 layer that would be
    190 MB per tensor.

    The weight gradient: ``sparse`` False, dense (R, out, in) as autograd's would be, the absent domains'
    rows zero; ``sparse`` True, a sparse COO tensor of the present rows only (indices (1, U'), values
    (U', out, in), coalesced), so that nothing is allocated, zeroed or stepped for an absent domain (the
    lazy optimiser, :class:`adactr.train.lazy_adam.LazyAdam`). The values are the same numbers either way.
    """

    @staticmethod
    def forward(ctx, xs: Tensor, W: Tensor, shared: Tensor | None, rows: tuple[int, ...],
                counts: tuple[int, ...], sparse: bool) -> Tensor:
        ctx.save_for_backward(xs, W, shared)
        ctx.rows, ctx.counts, ctx.sparse = rows, counts, sparse
        y = xs.new_empty(xs.shape[0], W.shape[1])  # (B, out)
        buf = None if shared is None else W.new_empty(W.shape[1:])  # (out, in): M_u, reused
        for r, xi, yi in zip(rows, xs.split(counts), y.split(counts), strict=True):  # (n, in), (n, out)
            torch.mm(xi, _matrix(W, shared, r, buf).t(), out=yi)  # (n, in) @ (in, out)
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        xs, W, shared = ctx.saved_tensors
        g = g.contiguous()
        need_x, need_W, need_shared = ctx.needs_input_grad[:3]
        rows, counts = ctx.rows, ctx.counts
        gx = torch.empty_like(xs) if need_x else None  # (B, in)
        own = [r for r in rows if r >= 0]  # the rows of W that get gradient, increasing
        gW = gS = None
        if need_W and ctx.sparse:
            gW = W.new_empty(len(own), *W.shape[1:])  # (U', out, in): the present rows' values only
        elif need_W:
            gW = torch.empty_like(W)  # (R, out, in): written once, the absent domains' rows zeroed
            absent = sorted(set(range(W.shape[0])) - set(own))
            if absent:
                gW.index_fill_(0, torch.tensor(absent, device=W.device), 0.0)
        if shared is not None and need_shared:
            gS = torch.zeros_like(shared)  # (out, in)
        buf = None if shared is None else W.new_empty(W.shape[1:])  # (out, in): M_u, then its gradient
        gx_split = gx.split(counts) if gx is not None else (None,) * len(rows)
        j = 0  # the position of row r among ``own`` (the sparse values' row)
        for r, gs, xseg, gxs in zip(rows, g.split(counts), xs.split(counts), gx_split, strict=True):
            # gs (n, out), xseg (n, in): this domain's rows only
            if gxs is not None:
                torch.mm(gs, _matrix(W, shared, r, buf), out=gxs)  # (n, out) @ (out, in)
            if r < 0:  # STAR's reserved ids: the centre alone
                if gS is not None:
                    gS += gs.t().mm(xseg)  # (out, n) @ (n, in)
                continue
            target = None if gW is None else gW[j] if ctx.sparse else gW[r]  # (out, in)
            j += 1
            if shared is None:
                if target is not None:
                    torch.mm(gs.t(), xseg, out=target)  # (out, n) @ (n, in)
            elif target is not None or gS is not None:
                gM = torch.mm(gs.t(), xseg, out=buf)  # (out, in) gradient of M_u = shared ⊙ W[r]
                if target is not None:
                    torch.mul(gM, shared, out=target)  # d/dW[r] of shared ⊙ W[r]
                if gS is not None:
                    gS.addcmul_(gM, W[r])  # d/dshared
        if gW is not None and ctx.sparse:
            if not own:  # no row of W was used: no gradient at all (an optimiser skips the parameter)
                gW = None
            else:
                index = torch.tensor([own], dtype=torch.long, device=W.device)  # (1, U')
                gW = torch.sparse_coo_tensor(index, gW, W.shape, is_coalesced=True, check_invariants=False)
        return gx, gW, gS, None, None, None


def _matrix(W: Tensor, shared: Tensor | None, r: int, buf: Tensor | None) -> Tensor:
    """The matrix of one segment: ``W[r]``, ``shared ⊙ W[r]`` (written into ``buf``), or ``shared`` alone
    (r < 0). (out, in)"""
    if shared is None:
        return W[r]
    return shared if r < 0 else torch.mul(shared, W[r], out=buf)


def grouped_linear(x: Tensor, groups: DomainGroups, W: Tensor, b: Tensor, *, shared: Tensor | None = None,
                   rows: tuple[int, ...] | None = None, sparse: bool = False) -> Tensor:
    """``y_i = M_{d_i} x_i + b_i``, the rows of each present domain through one product.

    x (B, in) in batch order; W (R, out, in) the per-domain matrices; ``rows`` the row of W of each present
    domain (default: the domain id itself; negative = ``shared`` alone); ``shared`` (out, in) makes
    ``M = shared ⊙ W[row]`` (STAR); b (B, out) the bias of each *sorted* row; ``sparse``: W's gradient
    holds the present rows only (see :class:`_GroupedLinearFn`). Returns (B, out), batch order.
    """
    rows = groups.present if rows is None else rows
    xs = x.index_select(0, groups.order).to(W.dtype)  # (B, in) sorted by domain
    ys = _GroupedLinearFn.apply(xs, W, shared, rows, groups.counts, sparse) + b  # (B, out)
    return ys.index_select(0, groups.inverse)  # (B, out) batch order


def _gather_rows(table: Tensor, index: Tensor, sparse: bool) -> Tensor:
    """``table[index]`` (N, *): with ``sparse``, a gather whose gradient is a sparse tensor of the indexed
    rows only (``F.embedding(..., sparse=True)``), else ``index_select`` (a dense gradient)."""
    if sparse:
        return F.embedding(index.long(), table, sparse=True)
    return table.index_select(0, index)


def _uniform_(t: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default init, U(-1/sqrt(in), 1/sqrt(in)), for each domain's matrix and bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.init.uniform_(t, -bound, bound)


def _per_row(per_present: Tensor, g: DomainGroups) -> Tensor:
    """(U, k) values of the present domains -> (B, k) each row's own domain's, in batch order."""
    return per_present.index_select(0, g.segment).index_select(0, g.inverse)


class DomainLinear(nn.Module):
    """``y_i = W_{d_i} x_i + b_{d_i}``: a separate linear layer per domain, each sample through its own.

    ``weight`` (n_domains, out, in) and ``bias`` (n_domains, out); every domain initialised like
    ``nn.Linear``. Rows 0 and 1 are ``<missing>`` and ``<unseen>`` (see the module docstring).
    ``sparse`` (like ``nn.Embedding``'s): their gradients hold the batch's domains' rows only (see
    :func:`per_domain_parameters`).
    """

    def __init__(self, in_features: int, out_features: int, *, n_domains: int) -> None:
        super().__init__()
        if n_domains < 1 or in_features < 1 or out_features < 1:
            raise ValueError(f"DomainLinear sizes must be positive, got in {in_features}, out {out_features}, "
                             f"n_domains {n_domains}")
        self.in_features, self.out_features, self.n_domains = in_features, out_features, n_domains
        self.weight = nn.Parameter(_uniform_(torch.empty(n_domains, out_features, in_features), in_features))
        self.bias = nn.Parameter(_uniform_(torch.empty(n_domains, out_features), in_features))
        self.sparse = False

    def per_domain_parameters(self) -> list[nn.Parameter]:
        return [self.weight, self.bias]

    def forward(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> Tensor:
        g = _groups(cond, self.n_domains, "DomainLinear")
        b = _gather_rows(self.bias, g.present_index, self.sparse)  # (U, out) the present domains' biases
        return grouped_linear(x, g, self.weight, b.index_select(0, g.segment), sparse=self.sparse)  # (B, out)

    @torch.no_grad()
    def generated(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> dict[str, Tensor]:
        """For the adaptivity diagnostic: each row's domain's layer, summarised as the norm of each output
        unit's weights, ``||W_d[k, :]||`` (B, out), and the bias ``b_d`` (B, out). A per-domain layer is
        fixed within a domain, so its spread across rows is the spread between domains (``by_domain``)."""
        g = _groups(cond, self.n_domains, "DomainLinear")
        W = self.weight.index_select(0, g.present_index)  # (U, out, in)
        return {"weight_norm": _per_row(torch.linalg.vector_norm(W, dim=2), g),
                "bias": _per_row(self.bias.index_select(0, g.present_index), g)}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_domains={self.n_domains}"


class StarLinear(nn.Module):
    """STAR's star-topology layer: ``W_p^* = W ⊙ W_p``, ``b_p^* = b + b_p`` (Sheng et al., CIKM 2021, 4.2).

    ``W`` (out, in), ``b`` (out,) the shared centre, initialised like ``nn.Linear``; ``W_p``
    (n_domains - 2, out, in) and ``b_p`` (n_domains - 2, out) the train domains' own factors (row ``p`` is
    domain id ``p + 2``), initialised to ones and zeros so that every domain starts as the shared layer
    (two independent random factors would multiply into weights of variance ~1/in^2). The reserved ids
    ``<missing>`` and ``<unseen>`` use the centre alone: the shared fallback. ``sparse``: ``W_p``'s and
    ``b_p``'s gradients hold the batch's domains' rows only (see :func:`per_domain_parameters`).
    """

    def __init__(self, in_features: int, out_features: int, *, n_domains: int) -> None:
        super().__init__()
        if n_domains < RESERVED or in_features < 1 or out_features < 1:
            raise ValueError(f"StarLinear sizes must be positive and n_domains >= {RESERVED} (the reserved ids), "
                             f"got in {in_features}, out {out_features}, n_domains {n_domains}")
        self.in_features, self.out_features, self.n_domains = in_features, out_features, n_domains
        self.W = nn.Parameter(_uniform_(torch.empty(out_features, in_features), in_features))
        self.b = nn.Parameter(_uniform_(torch.empty(out_features), in_features))
        self.W_p = nn.Parameter(torch.ones(n_domains - RESERVED, out_features, in_features))
        self.b_p = nn.Parameter(torch.zeros(n_domains - RESERVED, out_features))
        self.sparse = False

    def per_domain_parameters(self) -> list[nn.Parameter]:
        return [self.W_p, self.b_p]

    def forward(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> Tensor:
        g = _groups(cond, self.n_domains, "StarLinear")
        rows = tuple(d - RESERVED if d >= RESERVED else -1 for d in g.present)  # -1: the centre alone
        # the reserved ids come first among the present; they have no b_p (zero), the others their row
        k = sum(d < RESERVED for d in g.present)
        b_p = _gather_rows(self.b_p, g.present_index[k:] - RESERVED, self.sparse)  # (U - k, out)
        if k:
            b_p = torch.cat([b_p.new_zeros(k, self.out_features), b_p])  # (U, out)
        return grouped_linear(x, g, self.W_p, self.b + b_p.index_select(0, g.segment), shared=self.W, rows=rows,
                              sparse=self.sparse)  # (B, out)

    @torch.no_grad()
    def generated(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> dict[str, Tensor]:
        """For the adaptivity diagnostic: each row's star-topology layer ``W ⊙ W_p``, ``b + b_p``, summarised as
        the norm of each output unit's weights (B, out) and the bias (B, out); the reserved ids get the centre.
        Fixed within a domain: the spread across rows is the spread between domains (``by_domain``)."""
        g = _groups(cond, self.n_domains, "StarLinear")
        own = (g.present_index - RESERVED).clamp(min=0)  # (U,) the row of W_p / b_p (reserved ids: any)
        star = g.present_index >= RESERVED  # (U,)
        W_p = torch.where(star[:, None, None], self.W_p.index_select(0, own), 1.0)  # (U, out, in)
        b_p = torch.where(star[:, None], self.b_p.index_select(0, own), 0.0)  # (U, out)
        return {"weight_norm": _per_row(torch.linalg.vector_norm(self.W * W_p, dim=2), g),
                "bias": _per_row(self.b + b_p, g)}

    @torch.no_grad()
    def collapse(self) -> DomainLinear:
        """The served form: ``W ⊙ W_p`` and ``b + b_p`` folded once into a :class:`DomainLinear` (the reserved
        ids get the centre ``W``, ``b``), so serving reads one matrix per domain and multiplies nothing
        elementwise. Same outputs; ``self`` is unchanged."""
        served = DomainLinear(self.in_features, self.out_features, n_domains=self.n_domains)
        served.weight.copy_(torch.cat([self.W.expand(RESERVED, -1, -1), self.W * self.W_p]))
        served.bias.copy_(torch.cat([self.b.expand(RESERVED, -1), self.b + self.b_p]))
        return served

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_domains={self.n_domains}"


def domain_layer_factory(layer: type[DomainLinear] | type[StarLinear], n_domains: int
                         ) -> Callable[[int, int], nn.Module]:
    """A layer factory for ``MLP(..., layer=...)``: every hidden layer per-domain, with ``n_domains`` ids.

    >>> from adactr.nn.mlp import MLP
    >>> import torch
    >>> tower = MLP(input_dim=4, hidden=(3,), layer=domain_layer_factory(StarLinear, 5))
    >>> ids = torch.tensor([2, 4, 1])
    >>> tower(torch.ones(3, 4), DomainGroups.of(ids)).shape
    torch.Size([3, 1])
    """
    def make(in_features: int, out_features: int) -> nn.Module:
        return layer(in_features, out_features, n_domains=n_domains)

    return make


def per_domain_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Every per-domain parameter of ``module``'s per-domain layers (:class:`DomainLinear`, :class:`StarLinear`:
    ``weight``/``bias``, ``W_p``/``b_p``), in module order, each once. A batch uses only its domains' rows of
    them, so a trainer may give them a lazy optimiser (:class:`adactr.train.lazy_adam.LazyAdam`) after
    :func:`set_sparse_domain_gradients`. Smaller per-domain tables gathered elsewhere (STAR's PN ``γ_p``,
    ``β_p`` and domain embedding: ``n_domains x`` tens of values) are not listed: they stay dense."""
    seen: set[int] = set()
    out = []
    for m in module.modules():
        if isinstance(m, (DomainLinear, StarLinear)):
            for p in m.per_domain_parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    out.append(p)
    return out


def set_sparse_domain_gradients(module: nn.Module, sparse: bool) -> None:
    """Make the gradients of :func:`per_domain_parameters` sparse (the present domains' rows only) or dense."""
    for m in module.modules():
        if isinstance(m, (DomainLinear, StarLinear)):
            m.sparse = sparse


__all__ = ["DomainGroups", "DomainLinear", "StarLinear", "domain_layer_factory", "grouped_linear",
           "per_domain_parameters", "set_sparse_domain_gradients"]
