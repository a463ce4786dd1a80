"""FM: factorisation machine (Rendle, ICDM 2010), eq. 1.

    y = w_0 + sum_f w_f(x_f) + sum_{i<j} <v_i, v_j> x_i x_j
        └── FirstOrder ─────┘   └── FMInteraction over FieldEmbedding (B, F, D) ──┘

No tower, so a layer factory is an error (see :mod:`adactr.models.lr`).
"""

from __future__ import annotations

from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import FirstOrder, FMInteraction
from adactr.nn.mlp import LayerFactory, Linear


class FM(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        if layer is not Linear:
            raise ConfigError("model 'fm' has no MLP tower, so a layer factory cannot be applied to it")
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        self.first_order = FirstOrder(layout=layout)
        self.fm = FMInteraction()

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        return (self.first_order(batch) + self.fm(emb)).squeeze(-1)  # (B,)
