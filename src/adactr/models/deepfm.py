"""DeepFM (Guo et al., "DeepFM: A Factorization-Machine based Neural Network for CTR Prediction",
IJCAI 2017), eq. 1: ŷ = sigmoid(y_FM + y_DNN), with y_FM of eq. 2 and y_DNN of eqs. 3-5.

    Batch ──FirstOrder─────────────────────────────────────> <w, x> + w_0   (B, 1) ──┐
      └───FieldEmbedding──> (B, F, D) ──FMInteraction────> sum <V_i, V_j> (B, 1) ──+──> logit (B,)
                                 └──flatten──MLP(layer)──> y_DNN           (B, 1) ──┘

The FM and the deep component share the one embedding table (the paper's point against FNN/PNN).
"""

from __future__ import annotations

from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import FirstOrder, FMInteraction
from adactr.nn.mlp import LayerFactory, Linear


class DeepFM(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        self.first_order = FirstOrder(layout=layout)
        self.fm = FMInteraction()
        self.tower = tower(input_dim=layout.n_fields * config.embedding_dim, config=config, layer=layer)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, emb)
        y = self.first_order(batch) + self.fm(emb) + self.tower(emb.flatten(1), cond)  # (B, 1)
        return y.squeeze(-1)  # (B,)
