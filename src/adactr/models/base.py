"""The base class of every CTR model: a pure ``nn.Module`` mapping a :class:`Batch` to logits (B,).

No optimiser, device or training code lives here (STYLE 2). The base class only adds what every trainer
and every adaptive extension needs from any model:

- ``embedding_parameters()`` / ``dense_parameters()``: the split a trainer uses to give the embedding
  tables their own optimiser or L2 (FuxiCTR's ``embedding_regularizer``, DynInt's GroupLasso-FTRL).
- ``predict_proba(batch)``: the only place a sigmoid is applied (STYLE 3).
- the condition seam: ``model.condition`` is ``None`` or a module ``condition(batch, emb) -> cond``
  (group-wise fields, domain id, routing, ...). Models call ``self.make_condition(batch, emb)`` once per
  forward and hand ``cond`` to their towers, so a condition builder plugs in without touching a model.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from adactr.data.tensors import Batch
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import MLP, LayerFactory


@runtime_checkable
class Collapsible(Protocol):
    """A part whose served form differs from its training form (APG v5: ``U^l U^r`` -> ``U``).

    ``collapse()`` returns the served module (or the part itself when it has nothing to fold), computes
    what it folds once, gives the same outputs, and leaves the part it was called on unchanged.
    """

    def collapse(self) -> nn.Module:
        ...


class CTRModel(nn.Module, ABC):
    """Maps a :class:`Batch` to click logits of shape (B,)."""

    def __init__(self) -> None:
        super().__init__()
        # An instance attribute (not a class attribute): assigning a module later registers it as a
        # submodule, which a class-level ``None`` would shadow.
        self.condition: nn.Module | None = None

    @abstractmethod
    def forward(self, batch: Batch) -> Tensor:
        """Logits (B,)."""

    def make_condition(self, batch: Batch, emb: Tensor) -> Tensor | None:
        """The condition handed to adaptive parts, computed once per batch; ``None`` without a builder."""
        return None if self.condition is None else self.condition(batch, emb)

    def for_inference(self) -> CTRModel:
        """The model as served: a copy with every :class:`Collapsible` part replaced by its ``collapse()``.

        Deterministic in structure (a freshly built model gives the same state_dict keys and shapes as a
        trained one, so a run's saved weights load into ``build_model(...).for_inference()``). ``self``
        is never changed; a model with nothing to collapse is returned as it is.
        """
        if not any(isinstance(m, Collapsible) for m in self.modules()):
            return self
        served = copy.deepcopy(self)
        for parent in list(served.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, Collapsible):
                    setattr(parent, name, child.collapse())
        return served

    def predict_proba(self, batch: Batch) -> Tensor:
        """Click probabilities (B,)."""
        return torch.sigmoid(self(batch))

    def embedding_parameters(self) -> Iterator[Tensor]:
        """The lookup tables of every :class:`FieldEmbedding` (D-dim and first-order ones).

        Only tables: a batch touches few of their rows, so their gradient may be sparse and a sparse
        optimiser (``SparseAdam``) can own them. The per-field vectors of numerical fields are used by
        every row of every batch, have a dense gradient, and stay in :meth:`dense_parameters`.
        """
        seen: set[int] = set()
        for m in self.modules():
            if isinstance(m, FieldEmbedding):
                for table in m.modules():
                    if isinstance(table, nn.Embedding) and id(table.weight) not in seen:
                        seen.add(id(table.weight))
                        yield table.weight

    def dense_parameters(self) -> Iterator[Tensor]:
        """Every parameter that :meth:`embedding_parameters` does not yield."""
        emb = {id(p) for p in self.embedding_parameters()}
        return (p for p in self.parameters() if id(p) not in emb)


def tower(*, input_dim: int, config: ModelConfig, layer: LayerFactory, output_dim: int | None = 1) -> MLP:
    """The deep tower of ``config`` (hidden sizes, activation, dropout, batch norm) built with ``layer``."""
    return MLP(input_dim=input_dim, hidden=config.hidden, output_dim=output_dim, layer=layer,
               activation=config.activation, dropout=config.dropout, batch_norm=config.batch_norm)
