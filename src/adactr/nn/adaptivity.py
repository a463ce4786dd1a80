"""The adaptivity diagnostic: how much what an adaptive part generates varies across instances.

An adaptive part (APG's layers now; DynInt's gates, AdaSparse's pruning factors and ADL's routing as they
land) implements :class:`Adaptive`: ``generated(x, cond) -> {name: (B, ...)}``, the per-instance tensors it
makes from the inputs its ``forward`` receives (a part may also have ``diagnosed(...)``, the same plus
tensors derived from them that the diagnostic should report: APG's effective weight ``W_i``, since with a
static ``W_0`` beside it what the generator makes varies far more than the weight the instance gets).
:func:`measure_adaptivity` runs a model over batches, sees
each adaptive part's inputs through a forward hook (nothing is written to the module), and reports for
every generated tensor ``g_i`` (flattened, instance ``i``)::

    adaptivity = rms_i ||g_i - mean(g)|| / ||mean(g)||     std over instances ÷ rms of the mean
    by_domain  = sqrt(sum_d n_d ||mean_d(g) - mean(g)||^2 / n) / ||mean(g)||     (when batches have domains)

For the pruning factors of a :class:`Pruning` part (AdaSparse), where zero means pruned, two more::

    sparsity       = the share of zero entries (pruned neurons), over all instances
    domain_overlap = mean over pairs of domains (weighted n_a n_b) of sum_j min(k_a, k_b) / sum_j max(k_a, k_b)

where ``k_d`` (E,) is the share of domain d's rows that keep each entry (its factor map): 1 when every
domain keeps the same neurons, lower as the domains' sparse structures differ (the paper's Fig. 3).

0 means the part is static (every instance gets the same parameters: a static module with extra cost);
0.1 means the instance-varying part is a tenth of the shared part. ``by_domain`` is the between-domain part
of the spread: how far the domains' mean parameters are from each other. Values above 1 mean the varying
part is larger than the shared one (a generated tensor whose mean is near zero).

Only the outermost adaptive parts are measured (APG's mix-wise output layer reports its branches' tensors
itself). Accumulation is in float64, streaming: sums per element and per domain, so the whole validation
split can be measured in batches. A part whose inputs are all tensors (or None) is asked for its tensors
``DIAGNOSTIC_ROWS`` rows at a time, so a part that reports a full per-instance matrix (APG v1-v3's ``W_i``,
``(B, N, M)``; v3 never builds it in its forward) holds at most that many at once; parts conditioned on
domain groups are asked a batch at a time (what they report is small).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from adactr.data.tensors import Batch


@runtime_checkable
class Adaptive(Protocol):
    """An adaptive part: ``generated(*forward_args) -> {name: (B, ...)}``, the tensors it makes per instance."""

    def generated(self, x: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        ...


@runtime_checkable
class Pruning(Protocol):
    """An adaptive part some of whose generated tensors are pruning factors (0 = pruned): ``pruning_factors()``
    names them, and they also get ``sparsity`` and ``domain_overlap``."""

    def generated(self, x: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        ...

    def pruning_factors(self) -> tuple[str, ...]:
        ...


DIAGNOSTIC_ROWS = 256  # rows per ``generated``/``diagnosed`` call: 256 × 400 × 400 float32 = 164 MB


class _Moments:
    """Streaming first and second moments of one generated tensor, overall and per domain (float64)."""

    def __init__(self, *, pruning: bool = False) -> None:
        self.pruning = pruning
        self.n = 0
        self.total: Tensor | None = None  # (E,) sum of g_i
        self.sq = 0.0  # sum of ||g_i||^2
        self.zeros = 0  # entries exactly zero
        self.by_domain: dict[int, tuple[int, Tensor, Tensor]] = {}  # d -> (n_d, sum of g_i, rows keeping each)

    def add(self, g: Tensor, domain: Tensor | None, *, chunk: int = 2048) -> None:
        g = g.detach().flatten(1)  # (B, E)
        for start in range(0, g.shape[0], chunk):  # float64 a chunk at a time: v1's E = N M is large
            gc = g[start:start + chunk].to(torch.float64)  # (c, E)
            s = gc.sum(0)  # (E,)
            self.total = s if self.total is None else self.total + s
            self.sq += float(gc.square().sum())
            self.zeros += int((gc == 0).sum())
            self.n += gc.shape[0]
            if domain is not None:
                dc = domain[start:start + chunk]  # (c,)
                for d in torch.unique(dc).tolist():
                    rows = gc[dc == d]  # (n_d, E)
                    n_d, s_d, k_d = self.by_domain.get(int(d), (0, torch.zeros_like(s), torch.zeros_like(s)))
                    self.by_domain[int(d)] = (n_d + rows.shape[0], s_d + rows.sum(0), k_d + (rows != 0).sum(0))

    def report(self) -> dict[str, float]:
        assert self.total is not None and self.n > 0
        mean = self.total / self.n  # (E,)
        mean_sq = float(mean.square().sum())  # ||mean(g)||^2
        var = max(self.sq / self.n - mean_sq, 0.0)  # mean_i ||g_i - mean(g)||^2
        out = {"adaptivity": _ratio(var, mean_sq)}
        if len(self.by_domain) > 1:
            between = sum(n_d * float((s_d / n_d - mean).square().sum()) for n_d, s_d, _ in self.by_domain.values())
            out["by_domain"] = _ratio(between / self.n, mean_sq)
        if self.pruning:
            out["sparsity"] = self.zeros / (self.n * mean.numel())
            if len(self.by_domain) > 1:
                out["domain_overlap"] = self._overlap()
        return out

    def _overlap(self) -> float:
        """The weighted mean soft Jaccard of the domains' factor maps (see the module docstring)."""
        n = torch.tensor([n_d for n_d, _, _ in self.by_domain.values()], dtype=torch.float64)  # (U,)
        k = torch.stack([k_d / n_d for n_d, _, k_d in self.by_domain.values()])  # (U, E) keep shares
        num = den = 0.0
        for a in range(len(n) - 1):  # one domain against the later ones: (U - a - 1, E) at a time
            lo = torch.minimum(k[a], k[a + 1:]).sum(1)  # (U - a - 1,)
            hi = torch.maximum(k[a], k[a + 1:]).sum(1)
            jac = torch.where(hi > 0, lo / hi.clamp_min(1e-300), torch.ones_like(hi))  # two empty maps: equal
            w = n[a] * n[a + 1:]
            num, den = num + float((w * jac).sum()), den + float(w.sum())
        return num / den


def _ratio(var: float, mean_sq: float) -> float:
    if mean_sq == 0.0:
        return math.inf if var > 0 else 0.0
    return math.sqrt(var / mean_sq)


def adaptive_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The outermost :class:`Adaptive` submodules of ``model``, by qualified name."""
    found: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        if isinstance(m, Adaptive) and not any(name.startswith(p + ".") for p in found):
            found[name] = m
    return found


def _row_chunks(args: tuple, domain: Tensor | None) -> Iterable[tuple[tuple, Tensor | None]]:
    """``(args, domain)`` cut into ``DIAGNOSTIC_ROWS``-row pieces when every argument is a tensor (or None);
    whole otherwise (a :class:`DomainGroups` condition is not cut)."""
    if not all(a is None or isinstance(a, Tensor) for a in args):
        yield args, domain
        return
    rows = next(a.shape[0] for a in args if a is not None)
    for s in range(0, rows, DIAGNOSTIC_ROWS):
        yield (tuple(None if a is None else a[s:s + DIAGNOSTIC_ROWS] for a in args),
               None if domain is None else domain[s:s + DIAGNOSTIC_ROWS])


@torch.no_grad()
def measure_adaptivity(model: nn.Module, batches: Iterable[Batch], *, max_rows: int | None = None
                       ) -> dict[str, dict[str, dict[str, float]]]:
    """``{part: {tensor: {"adaptivity": ..., "by_domain": ...}}}`` over ``batches`` (model in eval mode),
    stopping after the batch that reaches ``max_rows`` rows.

    Empty when the model has no adaptive part. The model's mode is restored afterwards.
    """
    parts = adaptive_parts(model)
    if not parts:
        return {}
    moments: dict[str, dict[str, _Moments]] = {name: {} for name in parts}
    domain: list[Tensor | None] = [None]

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, _out: Tensor) -> None:
            pruning = module.pruning_factors() if isinstance(module, Pruning) else ()
            # ``diagnosed``, where a part has it, adds what the instance gets to what it generates (APG: W_i)
            report = getattr(module, "diagnosed", module.generated)
            for part_args, d in _row_chunks(args, domain[0]):
                for key, g in report(*part_args).items():  # type: ignore[operator]
                    moments[name].setdefault(key, _Moments(pruning=key in pruning)).add(g, d)
        return hook

    was_training = model.training
    model.eval()
    handles = [m.register_forward_hook(hook_for(name)) for name, m in parts.items()]
    try:
        rows = 0
        for batch in batches:
            domain[0] = batch.domain
            model(batch)
            rows += batch.size
            if max_rows is not None and rows >= max_rows:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: {key: mom.report() for key, mom in per.items()} for name, per in moments.items() if per}
