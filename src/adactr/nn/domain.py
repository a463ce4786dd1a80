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
*present* domain's ``out x in`` matrix and writing its dense gradient once per batch: with hundreds of
domains of a few rows each, that weight traffic, not the arithmetic, is what grows. Measured
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
        return cls(order, inverse, sorted_domain, tuple(host[0]), tuple(host[1]))

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
    domain at a time (an ``out x in`` temporary that stays in cache) and formed again in the backward, so
    no (U, out, in) tensor is ever made: at 300 domains of a 400 x 400 layer that is 190 MB per tensor.
    The weight gradient is dense, (R, out, in), as autograd's would be; rows of absent domains are zero.
    """

    @staticmethod
    def forward(ctx, xs: Tensor, W: Tensor, shared: Tensor | None, rows: tuple[int, ...],
                counts: tuple[int, ...]) -> Tensor:
        ctx.save_for_backward(xs, W, shared)
        ctx.rows, ctx.counts = rows, counts
        y = xs.new_empty(xs.shape[0], W.shape[1])  # (B, out)
        s = 0
        for r, n in zip(rows, counts, strict=True):
            torch.mm(xs[s:s + n], _matrix(W, shared, r).t(), out=y[s:s + n])  # (n, in) @ (in, out)
            s += n
        return y

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        xs, W, shared = ctx.saved_tensors
        g = g.contiguous()
        need_x, need_W, need_shared = ctx.needs_input_grad[:3]
        gx = torch.empty_like(xs) if need_x else None  # (B, in)
        gW = gS = None
        if need_W:
            gW = torch.empty_like(W)  # (R, out, in): written once, the absent domains' rows zeroed
            absent = sorted(set(range(W.shape[0])) - set(ctx.rows))
            if absent:
                gW.index_fill_(0, torch.tensor(absent, device=W.device), 0.0)
        if shared is not None and need_shared:
            gS = torch.zeros_like(shared)  # (out, in)
        s = 0
        for r, n in zip(ctx.rows, ctx.counts, strict=True):
            gs, xseg = g[s:s + n], xs[s:s + n]  # (n, out), (n, in): this domain's rows only
            if gx is not None:
                torch.mm(gs, _matrix(W, shared, r), out=gx[s:s + n])  # (n, out) @ (out, in)
            if shared is None:
                if gW is not None:
                    torch.mm(gs.t(), xseg, out=gW[r])  # (out, n) @ (n, in)
            elif r < 0:  # the centre alone
                if gS is not None:
                    gS += gs.t().mm(xseg)  # (out, n) @ (n, in)
            elif gW is not None or gS is not None:
                gM = gs.t().mm(xseg)  # (out, in) gradient of M_u = shared ⊙ W[r]
                if gW is not None:
                    torch.mul(gM, shared, out=gW[r])  # d/dW[r] of shared ⊙ W[r]
                if gS is not None:
                    gS.addcmul_(gM, W[r])  # d/dshared
            s += n
        return gx, gW, gS, None, None


def _matrix(W: Tensor, shared: Tensor | None, r: int) -> Tensor:
    """The matrix of one segment: ``W[r]``, ``shared ⊙ W[r]``, or ``shared`` alone (r < 0). (out, in)"""
    if shared is None:
        return W[r]
    return shared if r < 0 else shared * W[r]


def grouped_linear(x: Tensor, groups: DomainGroups, W: Tensor, b: Tensor, *, shared: Tensor | None = None,
                   rows: tuple[int, ...] | None = None) -> Tensor:
    """``y_i = M_{d_i} x_i + b_i``, the rows of each present domain through one product.

    x (B, in) in batch order; W (R, out, in) the per-domain matrices; ``rows`` the row of W of each present
    domain (default: the domain id itself; negative = ``shared`` alone); ``shared`` (out, in) makes
    ``M = shared ⊙ W[row]`` (STAR); b (B, out) the bias of each *sorted* row. Returns (B, out), batch order.
    """
    rows = groups.present if rows is None else rows
    xs = x.index_select(0, groups.order).to(W.dtype)  # (B, in) sorted by domain
    ys = _GroupedLinearFn.apply(xs, W, shared, rows, groups.counts) + b  # (B, out)
    return ys.index_select(0, groups.inverse)  # (B, out) batch order


def _uniform_(t: Tensor, fan_in: int) -> Tensor:
    """``nn.Linear``'s default init, U(-1/sqrt(in), 1/sqrt(in)), for each domain's matrix and bias."""
    bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
    return nn.init.uniform_(t, -bound, bound)


class DomainLinear(nn.Module):
    """``y_i = W_{d_i} x_i + b_{d_i}``: a separate linear layer per domain, each sample through its own.

    ``weight`` (n_domains, out, in) and ``bias`` (n_domains, out); every domain initialised like
    ``nn.Linear``. Rows 0 and 1 are ``<missing>`` and ``<unseen>`` (see the module docstring).
    """

    def __init__(self, in_features: int, out_features: int, *, n_domains: int) -> None:
        super().__init__()
        if n_domains < 1 or in_features < 1 or out_features < 1:
            raise ValueError(f"DomainLinear sizes must be positive, got in {in_features}, out {out_features}, "
                             f"n_domains {n_domains}")
        self.in_features, self.out_features, self.n_domains = in_features, out_features, n_domains
        self.weight = nn.Parameter(_uniform_(torch.empty(n_domains, out_features, in_features), in_features))
        self.bias = nn.Parameter(_uniform_(torch.empty(n_domains, out_features), in_features))

    def forward(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> Tensor:
        g = _groups(cond, self.n_domains, "DomainLinear")
        return grouped_linear(x, g, self.weight, self.bias.index_select(0, g.sorted_domain))  # (B, out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_domains={self.n_domains}"


class StarLinear(nn.Module):
    """STAR's star-topology layer: ``W_p^* = W ⊙ W_p``, ``b_p^* = b + b_p`` (Sheng et al., CIKM 2021, 4.2).

    ``W`` (out, in), ``b`` (out,) the shared centre, initialised like ``nn.Linear``; ``W_p``
    (n_domains - 2, out, in) and ``b_p`` (n_domains - 2, out) the train domains' own factors (row ``p`` is
    domain id ``p + 2``), initialised to ones and zeros so that every domain starts as the shared layer
    (two independent random factors would multiply into weights of variance ~1/in^2). The reserved ids
    ``<missing>`` and ``<unseen>`` use the centre alone: the shared fallback.
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

    def forward(self, x: Tensor, cond: Tensor | DomainGroups | None = None) -> Tensor:
        g = _groups(cond, self.n_domains, "StarLinear")
        rows = tuple(d - RESERVED if d >= RESERVED else -1 for d in g.present)  # -1: the centre alone
        b_p = F.pad(self.b_p, (0, 0, RESERVED, 0))  # (n_domains, out): zero for the reserved ids
        return grouped_linear(x, g, self.W_p, self.b + b_p.index_select(0, g.sorted_domain), shared=self.W,
                              rows=rows)  # (B, out)

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


__all__ = ["DomainGroups", "DomainLinear", "StarLinear", "domain_layer_factory", "grouped_linear"]
