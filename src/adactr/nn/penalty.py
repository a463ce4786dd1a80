"""The loss-term seam: regularisers a model adds to the training loss (DynInt's orthogonal penalty, eqs. 11-12;
AdaSparse's sparsity regulariser, eqs. 9-10), declared by the part that computes them.

A part calls :func:`add_penalty` inside its ``forward`` with a scalar tensor (already multiplied by its own
rate). Nothing is stored on the module (STYLE 4): the value goes to the collector of the training step that
is running, if any. The trainer wraps each step's forward in :func:`collect_penalties` and minimises::

    loss = BCE(logits, y) + sum of the collected terms

Outside a collector (evaluation, prediction, serving, a forward in a test) :func:`add_penalty` does nothing,
and :func:`penalties_active` lets a part skip the work of computing a term nobody collects.

>>> import torch
>>> with collect_penalties() as terms:
...     add_penalty("orthogonal", torch.tensor(0.5))
...     add_penalty("orthogonal", torch.tensor(0.25))
>>> float(terms["orthogonal"])
0.75
>>> add_penalty("orthogonal", torch.tensor(1.0))  # no collector: ignored
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import Tensor

_ACTIVE: ContextVar[dict[str, Tensor] | None] = ContextVar("adactr_penalties", default=None)


@contextmanager
def collect_penalties() -> Iterator[dict[str, Tensor]]:
    """The terms added inside the block, by name (terms added under one name are summed)."""
    terms: dict[str, Tensor] = {}
    token = _ACTIVE.set(terms)
    try:
        yield terms
    finally:
        _ACTIVE.reset(token)


def penalties_active() -> bool:
    """Whether a training step collects penalties now (a part may skip computing its term otherwise)."""
    return _ACTIVE.get() is not None


def add_penalty(name: str, value: Tensor) -> None:
    """Add the scalar ``value`` to the training loss under ``name`` (ignored outside a collector)."""
    terms = _ACTIVE.get()
    if terms is None:
        return
    if value.dim() != 0:
        raise ValueError(f"penalty {name!r} must be a scalar, got shape {tuple(value.shape)}")
    terms[name] = terms[name] + value if name in terms else value
