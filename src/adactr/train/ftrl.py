"""FTRL-Proximal and GroupLasso-FTRL: the optimisers of xDeepInt and DynInt.

DynInt (Yan & Li, DLP-KDD 2022) trains its embedding tables with GroupLasso-FTRL (G-FTRL) and every other
weight with FTRL-Proximal (McMahan et al., "Ad Click Prediction: a View from the Trenches", KDD 2013), as
the official xDeepInt code does (``yanyachen/xDeepInt``: scope ``Embedding`` -> ``GFTRL``, scope ``PIN`` ->
``tf.train.FtrlOptimizer``). Per coordinate, with g the gradient, ``z`` the "linear" state and ``n`` the sum
of squared gradients, both 0 at the start (McMahan's Algorithm 1)::

    sigma = (sqrt(n + g²) - sqrt(n)) / α                                   (1)
    z    += g - sigma · w                                                  (2)
    n    += g²                                                             (3)
    w     = 0                                             if |z| <= λ1     (4)
          = -(z - sgn(z) λ1) / ((β + sqrt(n)) / α + λ2)   otherwise

G-FTRL keeps (1)-(3) and replaces (4), for each row r of a (V, D) table, by a group-lasso step that sets
the whole row to exactly zero (xDeepInt ``src/optimizer.py``; Caffe2's ``GFtrl`` operator)::

    w_r = 0                                                 if ||z_r|| <= λ1 sqrt(D)     (5)
        = z_r (λ1 sqrt(D) / ||z_r|| - 1) / ((β + sqrt(n_r)) / α + λ2)   otherwise (n_r elementwise)

With D = 1, (5) is (4). (5) is the exact proximal step only when the row's coordinates share one n; with
per-coordinate n it is the official heuristic, but its zero / non-zero decision is exact.

Choices, each different from some other implementation:

- **McMahan's form, not TensorFlow's.** n starts at 0 and λ2 is not doubled; TF's ``FtrlOptimizer`` starts
  its accumulator at 0.1, has no β and uses 2·λ2 (a TF config ported here halves its l2).
- **The loss is the batch mean.** adactr minimises ``BCEWithLogits`` averaged over the batch; the official
  code sums it. Every term of (1)-(5) is homogeneous of degree 1 in (g, β, λ1, λ2) at fixed α: with g, β,
  λ1, λ2 all multiplied by c, n is c² n, sigma and z are c times theirs and w is unchanged. A loss summed over
  B rows is the mean loss times B, so **a summed-loss setting is this one with β, λ1, λ2 divided by B and
  the same α**: the official Criteo G-FTRL (β = 1, λ1 = λ2 = 10, batch 4096) is β = 2.4e-4,
  λ1 = λ2 = 2.4e-3 here. The defaults (:class:`adactr.train.config.FTRLConfig`) are mean-loss constants.
- **Lazy, sparse-aware.** Only the rows a step has a gradient for are read and written: a sparse COO
  gradient (``nn.Embedding(sparse=True)``) is coalesced first (duplicate ids summed: the update is not
  linear in g), the state rows are index-selected, updated and written back with ``index_copy_``. With a
  dense gradient, G-FTRL skips the rows whose gradient is all zero and FTRL the coordinates whose gradient
  is zero. For a row that has state this is exactly the dense update (g = 0 leaves z and n, hence w, as they
  are); a row never seen keeps its initial value until its first gradient, where the official dense code
  sets every unseen row to 0 at step 1 (its z = 0 is under any threshold).
- **The learning rate is α** (``lr`` in the parameter groups), so reduce-on-plateau works as for Adam. A
  change of α leaves the weights where they are: z is re-expressed for the new α once (one pass over the
  state, at each change only), so that with λ1 = λ2 = 0 FTRL stays Adagrad step for step across the change.
  (TF would rescale every weight by about the ratio of the rates instead.)
- λ1 = 0 or β = λ2 = 0 divide 0 by 0 in (5) or (4) for rows or coordinates whose z is 0; the denominators
  are clamped and ``torch.where`` picks 0 there, so no NaN appears.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

# the smallest positive float32: a clamp that turns 0 / 0 into 0 / tiny = 0 and changes no other value
_TINY = torch.finfo(torch.float32).tiny


def _accumulate(w: Tensor, z: Tensor, n: Tensor, g: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """Eqs. (1)-(3) on matching blocks of coordinates: the new (z, n)."""
    n_new = n + g * g  # (3)
    sigma = (n_new.sqrt() - n.sqrt()) / alpha  # (1): 1/η_t - 1/η_{t-1}
    return z + g - sigma * w, n_new  # (2)


def _denominator(n: Tensor, *, alpha: float, beta: float, l2: float) -> Tensor:
    """(β + sqrt(n)) / α + λ2 of eqs. (4) and (5), clamped so that 0 / 0 gives 0."""
    return ((beta + n.sqrt()) / alpha + l2).clamp_min(_TINY)


def ftrl_weights(z: Tensor, n: Tensor, *, alpha: float, beta: float, l1: float, l2: float) -> Tensor:
    """Eq. (4), elementwise: the FTRL-Proximal weights of state (z, n), any shape."""
    den = _denominator(n, alpha=alpha, beta=beta, l2=l2)
    return torch.where(z.abs() > l1, (torch.sign(z) * l1 - z) / den, 0.0)


def group_ftrl_weights(z: Tensor, n: Tensor, *, alpha: float, beta: float, l1: float, l2: float) -> Tensor:
    """Eq. (5): the G-FTRL weights of rows with state (z, n), each (R, D); a row is all zero or none is."""
    threshold = l1 * math.sqrt(z.shape[1])  # λ1·sqrt(D): the group lasso's weight for a group of D
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)  # (R, 1)
    den = _denominator(n, alpha=alpha, beta=beta, l2=l2)  # (R, D)
    w = z * (threshold / norm.clamp_min(_TINY) - 1) / den  # (R, D)
    return torch.where(norm > threshold, w, 0.0)


def _rows_of(grad: Tensor) -> tuple[Tensor, Tensor]:
    """The rows a sparse COO gradient touches and their gradients, duplicate ids summed: (R,), (R, D)."""
    g = grad.coalesce()  # duplicate ids summed first: the update is not linear in g (Adagrad does the same)
    return g.indices()[0], g.values()


class _FTRLBase(torch.optim.Optimizer):
    """The state (z, n) per parameter, the change-of-α rule, and the sparse / dense dispatch."""

    def __init__(self, params: Iterable[Any], *, lr: float, beta: float, l1: float, l2: float) -> None:
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr (α) must be positive, got {lr}")
        for name, v in (("beta", beta), ("l1", l1), ("l2", l2)):
            if not v >= 0:
                raise ValueError(f"{type(self).__name__}: {name} must be >= 0, got {v}")
        super().__init__(params, {"lr": lr, "beta": beta, "l1": l1, "l2": l2})

    def _update(self, p: Tensor, grad: Tensor, z: Tensor, n: Tensor, h: dict[str, float]) -> None:
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            h = {"alpha": group["lr"], "beta": group["beta"], "l1": group["l1"], "l2": group["l2"]}
            for p in group["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["z"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    st["n"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
                    st["alpha"] = h["alpha"]  # a Python float: state_dict round-trips it exactly
                elif st["alpha"] != h["alpha"]:
                    self._new_alpha(p, st, h)
                self._update(p, p.grad, st["z"], st["n"], h)
        return loss

    @staticmethod
    def _new_alpha(p: Tensor, st: dict[str, Any], h: dict[str, float]) -> None:
        """α changed (reduce-on-plateau): z such that (4) / (5) give the current w under the new α.

        z' - sgn(z')λ1 = -w((β + sqrt(n))/α' + λ2) and z - sgn(z)λ1 = -w((β + sqrt(n))/α + λ2) give
        z' = z - w (β + sqrt(n)) (1/α' - 1/α) (w = 0 keeps z). The next step's sigma then completes
        Σ sigma = sqrt(n)/α' as if α' had been used throughout. Coordinates never updated (n = 0) keep
        z = 0: their w is still the initial value, not a function of z.
        """
        z, n = st["z"], st["n"]
        k = 1.0 / h["alpha"] - 1.0 / st["alpha"]
        z.sub_(torch.where(n > 0, p * (h["beta"] + n.sqrt()) * k, 0.0))
        st["alpha"] = h["alpha"]


class FTRL(_FTRLBase):
    """FTRL-Proximal, per coordinate (McMahan et al. 2013, Algorithm 1; eqs. (1)-(4) of this module).

    ``lr`` is α, ``beta`` β, ``l1`` / ``l2`` λ1 / λ2. The defaults are adactr's mean-loss ones (see
    :class:`adactr.train.config.FTRLConfig` for why). Parameters of any shape, dense or sparse COO gradients
    (2-D tables); a coordinate whose gradient is zero is not updated (lazy; see the module docstring).
    With λ1 = λ2 = 0 and a zero initial weight it is Adagrad (``lr=α, eps=β``) step for step.

    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> opt = FTRL([w], lr=1.0, beta=0.0, l1=0.5, l2=0.0)
    >>> w.grad = torch.tensor([2.0, 0.25])   # z = g, n = g²: w = -(z - sgn(z)·λ1) / (sqrt(n) / α)
    >>> opt.step(); w.data                    # -(2 - 0.5) / 2, and |0.25| <= λ1 gives exactly 0
    tensor([-0.7500,  0.0000])
    """

    def __init__(self, params: Iterable[Any], *, lr: float = 0.02, beta: float = 1e-4, l1: float = 2.5e-5,
                 l2: float = 5e-5) -> None:
        super().__init__(params, lr=lr, beta=beta, l1=l1, l2=l2)

    def _update(self, p: Tensor, grad: Tensor, z: Tensor, n: Tensor, h: dict[str, float]) -> None:
        if grad.is_sparse:
            rows, g = _rows_of(grad)  # (R,), (R, *p.shape[1:])
            w, z_r, n_r = p.index_select(0, rows), z.index_select(0, rows), n.index_select(0, rows)
        else:
            rows, g, w, z_r, n_r = None, grad, p, z, n
        seen = g != 0  # lazy: a coordinate without a gradient keeps its state and weight
        z_new, n_new = _accumulate(w, z_r, n_r, g, h["alpha"])
        z_new, n_new = torch.where(seen, z_new, z_r), torch.where(seen, n_new, n_r)
        w_new = torch.where(seen, ftrl_weights(z_new, n_new, **h), w)
        if rows is None:
            z.copy_(z_new)
            n.copy_(n_new)
            p.copy_(w_new)
        else:
            z.index_copy_(0, rows, z_new)
            n.index_copy_(0, rows, n_new)
            p.index_copy_(0, rows, w_new)


class GroupFTRL(_FTRLBase):
    """GroupLasso-FTRL for embedding tables (V, D): eqs. (1)-(3) per coordinate, eq. (5) per row.

    A row whose accumulated ``z`` has norm at most ``l1``·sqrt(D) is set to exactly zero: a value the
    model does not need costs no memory once the zero rows are dropped. ``lr`` is α, ``beta`` β, ``l1`` /
    ``l2`` λ1 / λ2; defaults as :class:`adactr.train.config.FTRLConfig`'s ``group_l1`` / ``group_l2``.
    Only the rows of the batch are touched (sparse COO gradients coalesced; with a dense gradient, the
    rows whose gradient is not all zero). With D = 1 it is :class:`FTRL`.

    >>> E = torch.nn.Parameter(torch.zeros(2, 4))
    >>> opt = GroupFTRL([E], lr=1.0, beta=0.0, l1=0.5, l2=0.0)   # threshold 0.5·sqrt(4) = 1
    >>> E.grad = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.3, 0.3, 0.3, 0.3]])   # ||z_r|| = 2 and 0.6
    >>> opt.step(); E.data   # row 0: z (1/2 - 1) / sqrt(n) = -0.5; row 1 is under the threshold
    tensor([[-0.5000, -0.5000, -0.5000, -0.5000],
            [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """

    def __init__(self, params: Iterable[Any], *, lr: float = 0.02, beta: float = 1e-4, l1: float = 1e-3,
                 l2: float = 1e-3) -> None:
        super().__init__(params, lr=lr, beta=beta, l1=l1, l2=l2)
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"GroupFTRL groups the rows of 2-D tables (V, D); got a parameter of "
                                     f"shape {tuple(p.shape)}")

    def _update(self, p: Tensor, grad: Tensor, z: Tensor, n: Tensor, h: dict[str, float]) -> None:
        if grad.is_sparse:
            rows, g = _rows_of(grad)  # (R,), (R, D)
            keep = (g != 0).any(1)  # a row whose summed gradient is zero is not touched, as with a dense one
            rows, g = rows[keep], g[keep]
        else:
            rows = (grad != 0).any(1).nonzero().squeeze(1)  # (R,): lazy, rows with a gradient
            g = grad.index_select(0, rows)  # (R, D)
        w, z_r, n_r = p.index_select(0, rows), z.index_select(0, rows), n.index_select(0, rows)  # (R, D)
        z_new, n_new = _accumulate(w, z_r, n_r, g, h["alpha"])
        z.index_copy_(0, rows, z_new)
        n.index_copy_(0, rows, n_new)
        p.index_copy_(0, rows, group_ftrl_weights(z_new, n_new, **h))


def zero_rows(tables: Iterable[Tensor]) -> dict[str, float | int]:
    """How much of the embedding ``tables`` (each (V, D)) is exactly zero: ``rows``, ``zero_rows``, their
    ``fraction``, and ``parameter_fraction`` (rows weighted by their width). What G-FTRL buys; about 0
    with other optimisers.

    >>> zero_rows([torch.tensor([[0.0, 0.0], [1.0, 0.0]]), torch.zeros(2, 1)])
    {'rows': 4, 'zero_rows': 3, 'fraction': 0.75, 'parameter_fraction': 0.6667}
    """
    rows = zero = params = zero_params = 0
    for t in tables:
        t = t.detach()
        is_zero = (t == 0).flatten(1).all(1) if t.dim() > 1 else t == 0  # (V,)
        k, width = int(is_zero.sum()), (t[0].numel() if t.dim() > 1 and len(t) else 1)
        rows, zero, params, zero_params = rows + len(t), zero + k, params + t.numel(), zero_params + k * width
    return {"rows": rows, "zero_rows": zero, "fraction": round(zero / rows, 4) if rows else 0.0,
            "parameter_fraction": round(zero_params / params, 4) if params else 0.0}
