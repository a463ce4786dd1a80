"""LR: logistic regression on one-hot fields, the first baseline of DynInt Table 1.

    y = w_0 + sum_f w_f(x_f)        (Rendle 2010 eq. 1, first two terms; logit, no sigmoid)

There is no embedding of dimension D and no tower, so a layer factory has nothing to act on: passing one
is an error rather than a silent no-op (an "LR + APG" run would otherwise report plain LR).
"""

from __future__ import annotations

from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.interaction import FirstOrder
from adactr.nn.mlp import LayerFactory, Linear


class LR(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        if layer is not Linear:
            raise ConfigError("model 'lr' has no MLP tower, so a layer factory cannot be applied to it")
        self.first_order = FirstOrder(layout=layout)

    def forward(self, batch: Batch) -> Tensor:
        return self.first_order(batch).squeeze(-1)  # (B,)
