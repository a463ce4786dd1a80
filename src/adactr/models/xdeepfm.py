"""xDeepFM (Lian et al., "xDeepFM: Combining Explicit and Implicit Feature Interactions for Recommender
Systems", KDD 2018), eq. 9 without the sigmoid::

    ŷ = σ(w_linear^T a + w_dnn^T x_dnn^k + w_cin^T p^+ + b)

    Batch ──FirstOrder──────────────────────────────────────> w_linear^T a + b   (B, 1) ──┐
      └───FieldEmbedding──> X^0 (B, m, D) ──CIN──> p^+ ──Linear (no bias)──> w_cin^T p^+ (B, 1) ──+──> logit (B,)
                                  └──flatten──MLP(layer)──> w_dnn^T x_dnn^k       (B, 1) ──┘

The linear part is the LR term over the raw fields (a = the one-hot input), the CIN is
:class:`~adactr.nn.interaction.CIN` (eqs. 6-7; ``model.cin_layers`` its H_k, ``model.cin_split_half``
the authors' split-half connection instead of the paper's direct one) and the DNN is the shared tower
over the same embeddings, built by ``layer`` (where APG drops in; the CIN filters stay static). The bias
b of eq. 9 is the linear part's ``w_0`` plus the tower's output bias; the CIN's readout has none, since a
third constant would add nothing.
"""

from __future__ import annotations

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import CIN, FirstOrder
from adactr.nn.mlp import LayerFactory, Linear


class XDeepFM(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        sizes = config.cin_layers
        if not sizes or any(h <= 0 for h in sizes):
            raise ConfigError(f"model 'xdeepfm' needs model.cin_layers to be positive sizes, got {list(sizes)}")
        if config.cin_split_half and any(h % 2 for h in sizes[:-1]):
            raise ConfigError(f"model.cin_split_half needs an even model.cin_layers size for every layer but "
                              f"the last, got {list(sizes)}")
        m, D = layout.n_fields, config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=D, init_std=config.embedding_init_std)
        self.first_order = FirstOrder(layout=layout)  # the linear part
        self.cin = CIN(num_fields=m, layer_sizes=sizes, split_half=config.cin_split_half)
        self.cin_out = nn.Linear(self.cin.output_dim, 1, bias=False)  # w_cin
        self.tower = tower(input_dim=m * D, config=config, layer=layer)  # the DNN, ending in w_dnn

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # X^0: (B, m, D)
        cond = self.make_condition(batch, emb)
        y = self.first_order(batch) + self.cin_out(self.cin(emb)) + self.tower(emb.flatten(1), cond)  # (B, 1)
        return y.squeeze(-1)  # (B,)
