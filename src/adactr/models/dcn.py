"""DCN (Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017): cross network (eq. 3) and
deep network (eq. 4) in parallel, joined by the combination layer (eq. 5) without its sigmoid.

    x_0 = flatten(FieldEmbedding(batch))                                      (B, d),  d = F D

    x_0 ──CrossNet──────────────> x_L1  (B, d)   x_{l+1} = x_0 x_l^T w_l + b_l + x_l
    x_0 ──MLP(layer, no output)─> h_L2  (B, h)   h_{l+1} = ReLU(W_l h_l + b_l)
          concat [x_L1; h_L2] ──Linear──> logit                                   (eq. 5: w_logits)

The paper stacks dense features raw beside the embeddings; here every field (numerical ones included) is
embedded by :class:`FieldEmbedding`, as in DCNv2 and the FuxiCTR/DeepCTR implementations.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import CrossNet
from adactr.nn.mlp import LayerFactory, Linear


class DCN(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        d = layout.n_fields * config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)

        def cross() -> CrossNet:
            return CrossNet(input_dim=d, num_layers=config.cross_layers,
                            **({"layer": layer} if config.adaptive_cross else {}))

        # With adaptive_cross the tower is built first (see DCNv2): per-layer APG lists run over the tower
        # from the input up, then over the cross layers.
        if not config.adaptive_cross:
            self.cross = cross()
        self.tower = tower(input_dim=d, config=config, layer=layer, output_dim=None)
        if config.adaptive_cross:
            self.cross = cross()
        self.fc = nn.Linear(d + self.tower.output_dim, 1)  # w_logits (and its bias)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, emb)
        x0 = emb.flatten(1)  # (B, d)
        x = self.cross(x0, cond)  # (B, d)
        h = self.tower(x0, cond)  # (B, h_L)
        return self.fc(torch.cat([x, h], dim=1)).squeeze(-1)  # (B, d + h_L) -> (B,)
