"""DCN-V2 (Wang et al., "DCN V2: Improved Deep & Cross Network and Practical Lessons for Web-scale
Learning to Rank Systems", WWW 2021): cross layers of eq. (1) (``cross_rank=0``) or the low-rank mixture
of experts of eq. (3) (``cross_rank=r``, ``cross_experts=K``), combined with a deep tower per Fig. 1.

    x_0 = flatten(FieldEmbedding(batch))                                   (B, d),  d = F D

    stacked  (Fig. 1b):  x_0 ──CrossNetV2──> x_L ──MLP(layer)──> logit
    parallel (Fig. 1a):  x_0 ──CrossNetV2──> x_L ────────┐
                         x_0 ──MLP(layer, no output)──> h_L ──concat──> Linear ──> logit

The logit layer is eq. (5) without the sigmoid (``BCEWithLogits`` applies it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import CrossStructure, ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import CrossNetV2
from adactr.nn.mlp import LayerFactory, Linear


class DCNv2(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        d = layout.n_fields * config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        self.stacked = config.cross_structure is CrossStructure.STACKED

        def cross() -> CrossNetV2:
            return CrossNetV2(input_dim=d, num_layers=config.cross_layers, rank=config.cross_rank,
                              experts=config.cross_experts, **({"layer": layer} if config.adaptive_cross else {}))

        # With adaptive_cross the tower is built before the cross layers, so a factory that numbers the
        # layers it makes (per-layer APG K / P lists) sees the tower from the input up, then the cross layers,
        # as in every other backbone. The static cross network takes nothing from the factory.
        if not config.adaptive_cross:
            self.cross = cross()
        self.tower = tower(input_dim=d, config=config, layer=layer,
                           output_dim=1 if self.stacked else None)
        if config.adaptive_cross:
            self.cross = cross()
        # parallel only: the logit layer over [x_L; h_L]
        self.fc = None if self.stacked else nn.Linear(d + self.tower.output_dim, 1)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, emb)
        x0 = emb.flatten(1)  # (B, d)
        x = self.cross(x0, cond)  # (B, d)
        if self.fc is None:
            return self.tower(x, cond).squeeze(-1)  # (B, 1) -> (B,)
        h = self.tower(x0, cond)  # (B, h_L)
        return self.fc(torch.cat([x, h], dim=1)).squeeze(-1)  # (B, d + h_L) -> (B,)
