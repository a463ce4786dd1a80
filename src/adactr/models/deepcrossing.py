"""Deep Crossing (Shan et al., "Deep Crossing: Web-Scale Modeling without Manually Crafted Combinatorial
Features", KDD 2016): embedding and stacking layers, a cascade of residual units, a scoring layer.

    X^O = ReLU(X^I + F(X^I)),    F(X^I) = W_1 ReLU(W_0 X^I + b_0) + b_1      (the Residual Unit)

    Batch ──FieldEmbedding──> (B, F, D) ──flatten (stacking)──> x (B, d) ──[ResidualUnit(layer)] x L──> (B, d)
                                                                                ──Linear──> logit (scoring)

Each unit maps d -> h_l -> d (``model.residual_units`` lists the h_l), so the input size d = F D is kept
through the stack, as the element-wise shortcut needs. ``W_0`` and ``W_1`` are made by the layer factory
(``layer``) and called as ``layer(x, cond)``: the unit's two layers are this model's deep part, where APG
drops in. The scoring layer is static (the output layer of every other tower is too) and gives a logit;
the paper's sigmoid is ``BCEWithLogits``'.

Stacking: the paper embeds each sparse feature by ``ReLU(W_j x_j + b_j)`` and passes features under 256
dimensions through unembedded. Here every field goes through the shared :class:`FieldEmbedding` (a
lookup, the same as the paper's embedding of a one-hot input without its ReLU), as in FuxiCTR and BARS.
``model.batch_norm``, ``model.dropout`` and ``model.activation`` apply to the units as in FuxiCTR's
``ResidualBlock`` (batch norm on the sum, then the activation, then dropout); the defaults (none, none,
ReLU) give the paper's unit.
"""

from __future__ import annotations

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import Activation, LayerFactory, Linear


class ResidualUnit(nn.Module):
    """One Deep Crossing residual unit, (B, d) -> (B, d): ``act(x + W_1 act(W_0 x + b_0) + b_1)``.

    ``W_0`` (d -> h) and ``W_1`` (h -> d) come from ``layer`` and take the condition (``forward(x, cond)``).

    >>> import torch
    >>> unit = ResidualUnit(dim=2, hidden=3)
    >>> with torch.no_grad():
    ...     for W in (unit.W0, unit.W1):
    ...         _ = W.weight.zero_(), W.bias.zero_()
    >>> unit(torch.tensor([[1.5, -2.0]])).tolist()  # F(x) = 0: the unit is ReLU(x)
    [[1.5, 0.0]]
    """

    def __init__(self, *, dim: int, hidden: int, layer: LayerFactory = Linear,
                 activation: Activation = Activation.RELU, batch_norm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"ResidualUnit sizes must be positive, got dim {dim} and hidden {hidden}")
        self.W0 = layer(dim, hidden)  # W_0 x + b_0, adaptive interface forward(x, cond)
        self.act = activation.make()
        self.W1 = layer(hidden, dim)  # W_1 h + b_1
        self.post = nn.Sequential(*([nn.BatchNorm1d(dim)] if batch_norm else []), activation.make(),
                                  *([nn.Dropout(dropout)] if dropout > 0 else []))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        h = self.act(self.W0(x, cond))  # (B, h)
        return self.post(x + self.W1(h, cond))  # X^I + F(X^I), then the unit's activation: (B, d)


class DeepCrossing(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        if not config.residual_units:
            raise ConfigError("model 'deepcrossing' needs at least one residual unit (model.residual_units)")
        d = layout.n_fields * config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        self.units = nn.ModuleList(
            ResidualUnit(dim=d, hidden=h, layer=layer, activation=config.activation,
                         batch_norm=config.batch_norm, dropout=config.dropout)
            for h in config.residual_units)
        self.score = Linear(d, 1)  # the scoring layer, without its sigmoid

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        cond = self.make_condition(batch, emb)
        x = emb.flatten(1)  # stacking: (B, d)
        for unit in self.units:
            x = unit(x, cond)  # (B, d)
        return self.score(x).squeeze(-1)  # (B, 1) -> (B,)
