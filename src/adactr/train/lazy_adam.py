"""Lazy Adam for per-domain parameters: Adam on the rows a batch used, nothing for the others.

A per-domain parameter (``DomainLinear.weight``, ``StarLinear.W_p``, ...; :func:`adactr.nn.domain.
per_domain_parameters`) has one row per domain, and a batch uses only its domains' rows. With sparse
gradients (:func:`adactr.nn.domain.set_sparse_domain_gradients`) the gradient holds those rows only, and
:class:`LazyAdam` updates those rows only, with Adam's own kernel (``torch._fused_adam_``, the one
``torch.optim.Adam(fused=True)`` runs) on views of the used rows: the semantics of
``torch.optim.SparseAdam`` and TensorFlow Addons' ``LazyAdam``, without their gathers and scatters.

What laziness changes against dense Adam, for a row (a domain) that a batch does not use:

* dense Adam still moves it: its gradient is zero, but its first moment ``m`` is not, so it takes a step
  ``lr m_hat / (sqrt(v_hat) + eps)`` and its moments decay (``m *= beta1``, ``v *= beta2``). A domain's
  weights keep changing for steps after its rows have left the batches. Lazy Adam leaves the row and its
  moments as they are until the domain is in a batch again: a domain's parameters change only with its
  own rows, as the per-domain layers' gradients already promise.
* the bias correction uses the parameter's step count (every step with a gradient), not a per-row count
  (as ``SparseAdam`` and ``LazyAdam``): a row used again after a pause gets the correction of the
  parameter's age, and its moments, which did not decay, weigh more than dense Adam's would.
* ``weight_decay`` (Adam's L2, added to the gradient) applies to the used rows only: an absent domain's
  weights are not shrunk.

When every row is used in every batch the two are the same, step for step
(``tests/test_domain.py::test_lazy_adam_is_adam_when_every_domain_is_present``).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _runs(index: list[int]) -> list[tuple[int, int, int]]:
    """Consecutive runs of sorted unique row ids: (first row, position in ``index``, length).

    >>> _runs([0, 1, 2, 5, 7, 8])
    [(0, 0, 3), (5, 3, 1), (7, 4, 2)]
    """
    runs: list[tuple[int, int, int]] = []
    for pos, r in enumerate(index):
        if runs and runs[-1][0] + runs[-1][2] == r:
            first, at, n = runs[-1]
            runs[-1] = (first, at, n + 1)
        else:
            runs.append((r, pos, 1))
    return runs


class LazyAdam(torch.optim.Optimizer):
    """Adam whose step touches only the rows (first dimension) that have a gradient.

    A sparse gradient (COO, sparse along the first dimension, as ``nn.Embedding(sparse=True)`` and the
    per-domain layers make) names its rows; a dense gradient means every row. ``lr``, ``betas``, ``eps``,
    ``weight_decay`` as ``torch.optim.Adam`` (L2 added to the gradient, not AdamW's decoupled decay).
    """

    def __init__(self, params: Iterable[nn.Parameter], *, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        if not lr > 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps >= 0 or not weight_decay >= 0:
            raise ValueError(f"LazyAdam: invalid lr {lr}, betas {betas}, eps {eps} or weight_decay {weight_decay}")
        # fused: the step counts live on the parameters' device (load_state_dict keeps them there)
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                                  "fused": True})

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("LazyAdam.step takes no closure")
        for group in self.param_groups:
            params: list[Tensor] = []
            grads: list[Tensor] = []
            m: list[Tensor] = []
            v: list[Tensor] = []
            steps: list[Tensor] = []
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                g = p.grad
                if not g.is_sparse:  # every row
                    params.append(p)
                    grads.append(g)
                    m.append(state["exp_avg"])
                    v.append(state["exp_avg_sq"])
                    steps.append(state["step"])
                    continue
                g = g.coalesce()  # sorted unique rows, duplicates summed (an embedding gather repeats rows)
                if g.sparse_dim() != 1:
                    raise ValueError(f"LazyAdam needs gradients sparse along the first dimension only, got "
                                     f"sparse_dim {g.sparse_dim()}")
                values = g._values()  # (U, *p.shape[1:])
                for first, at, n in _runs(g._indices()[0].tolist()):  # views: the rows are updated in place
                    params.append(p[first:first + n])
                    grads.append(values[at:at + n])
                    m.append(state["exp_avg"][first:first + n])
                    v.append(state["exp_avg_sq"][first:first + n])
                    steps.append(state["step"])
            if params:
                beta1, beta2 = group["betas"]
                torch._fused_adam_(params, grads, m, v, [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                                   beta2=beta2, weight_decay=group["weight_decay"], eps=group["eps"],
                                   maximize=False)


__all__ = ["LazyAdam"]
