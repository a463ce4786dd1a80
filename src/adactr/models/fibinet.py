"""FiBiNET (Huang et al., "FiBiNET: Combining Feature Importance and Bilinear feature Interaction for
Click-Through Rate Prediction", RecSys 2019): the deep model of Fig. 1.

    Batch ──FirstOrder──────────────────────────────────> w_0 + sum_i w_i x_i (B, 1) ───────────┐
      └──FieldEmbedding──> E (B, F, D) ──Bilinear──> p (B, P, D) ──┐                            │
               └──SENet──> V (B, F, D) ──Bilinear──> q (B, P, D) ──concat──MLP(layer)──> y_d ──+──> logit

    c = concat(p, q) (combination layer), y_d = DNN(c), ŷ = σ(w_0 + sum_i w_i x_i + y_d) (the output layer;
    the sigmoid is left to ``BCEWithLogits``). P = F(F-1)/2 pairs.

The two bilinear layers have their own weights (as in the DeepCTR and current FuxiCTR implementations);
the bilinear type (Field-All / Field-Each / Field-Interaction) and the SENET reduction ratio come from the
config.
"""

from __future__ import annotations

import torch
from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import BilinearInteraction, FirstOrder, SENet
from adactr.nn.mlp import LayerFactory, Linear


class FiBiNET(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        F, D = layout.n_fields, config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=D, init_std=config.embedding_init_std)
        self.first_order = FirstOrder(layout=layout)
        self.senet = SENet(num_fields=F, reduction_ratio=config.senet_reduction)
        kind = config.bilinear_type
        self.bilinear_e = BilinearInteraction(num_fields=F, embedding_dim=D, bilinear_type=kind)  # E -> p
        self.bilinear_v = BilinearInteraction(num_fields=F, embedding_dim=D, bilinear_type=kind)  # V -> q
        self.tower = tower(input_dim=2 * self.bilinear_e.output_dim, config=config, layer=layer)

    def forward(self, batch: Batch) -> Tensor:
        E = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, E)
        V = self.senet(E)  # (B, F, D): SENET-like embeddings
        p = self.bilinear_e(E).flatten(1)  # (B, P D)
        q = self.bilinear_v(V).flatten(1)  # (B, P D)
        y_d = self.tower(torch.cat([p, q], dim=1), cond)  # (B, 2 P D) -> (B, 1)
        return (self.first_order(batch) + y_d).squeeze(-1)  # (B,)
