"""DNN: the plain deep baseline (the "DNN" of DynInt Table 1 and AdaSparse Table 1).

    Batch ──FieldEmbedding──> (B, F, D) ──flatten──> (B, F D) ──MLP(layer)──> logit (B,)

The MLP is y = W_L σ(... σ(W_1 e + b_1) ...) + b_L with every hidden layer made by ``layer``.
"""

from __future__ import annotations

from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear


class DNN(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        self.tower = tower(input_dim=layout.n_fields * config.embedding_dim, config=config, layer=layer)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, emb)
        return self.tower(emb.flatten(1), cond).squeeze(-1)  # (B, F D) -> (B, 1) -> (B,)
