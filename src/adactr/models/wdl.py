"""Wide & Deep (Cheng et al., "Wide & Deep Learning for Recommender Systems", DLRS 2016), eq. 3.

    P(Y=1|x) = σ(w_wide^T [x, φ(x)] + w_deep^T a^(l_f) + b)

    Batch ──FirstOrder──────────────────────────────────> wide logit (B, 1) ──┐
      └───FieldEmbedding──> (B, F, D) ──flatten──MLP(layer)──> deep logit (B, 1) ──+──> (B,)

The wide part is the linear term over the same fields; the paper's hand-made cross-product
transformations φ(x) are dataset-specific feature engineering and are left to the data pipeline (as in
FuxiCTR and DeepCTR). Wide and deep logits are summed and trained jointly, as in the paper.
"""

from __future__ import annotations

from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import FirstOrder
from adactr.nn.mlp import LayerFactory, Linear


class WideDeep(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        self.wide = FirstOrder(layout=layout)
        self.tower = tower(input_dim=layout.n_fields * config.embedding_dim, config=config, layer=layer)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, emb)
        return (self.wide(batch) + self.tower(emb.flatten(1), cond)).squeeze(-1)  # (B, 1) -> (B,)
