"""xDeepInt (Yan & Li, arXiv 2301.01089, official code yanyachen/xDeepInt) and DynInt (Yan & Li, "DynInt:
Dynamic Interaction Modeling for Large-scale Click-Through Rate Prediction", DLP-KDD 2022): embeddings, the
PIN block (:mod:`adactr.nn.pin`) and the output layer of eq. (2); no DNN, no activation::

    Batch ──FieldEmbedding──> X_0 (B, F, D) ──PIN (L layers, h sub-spaces)──> X_L (B, F, D)
          ──sum over D──> (B, F) ──w_out^T . + b──> logit                                   eq. (2)

Eq. (2), ``σ((W_out X_L + b 1^T) 1)``, adds the bias once per embedding column (D b); one scalar ``b``
is the same function. With ``model.pin.layers=0`` the model is logistic regression on the fields'
embedding sums (the paper's Table 3, "0 layers").

The four registered models differ only in the PIN layer (``model.pin.dynamic``):
``xdeepint`` (static W, eq. 3), ``dynint_da`` (eq. 4), ``dynint_dgp`` (eqs. 5, 7, 8), ``dynint_dwp``
(eqs. 6, 9, 10).
"""

from __future__ import annotations

from dataclasses import replace

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear
from adactr.nn.pin import PIN, PINDynamic


class XDeepInt(CTRModel):
    """The PIN model; ``dynamic`` fixes the PIN layer kind (None: ``config.pin.dynamic``)."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear,
                 dynamic: PINDynamic | None = None) -> None:
        super().__init__()
        pin = config.pin
        if dynamic is not None:
            if pin.dynamic not in (PINDynamic.NONE, dynamic):
                raise ConfigError(f"model.pin.dynamic={pin.dynamic.value} contradicts the model, which is "
                                  f"DynInt-{dynamic.value.upper()}; leave model.pin.dynamic unset")
            pin = replace(pin, dynamic=dynamic)
        F, D = layout.n_fields, config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=D, init_std=config.embedding_init_std)
        self.pin = PIN(num_fields=F, embedding_dim=D, config=pin)
        self.out = nn.Linear(F, 1)  # eq. (2): W_out (1, F) and b
        nn.init.xavier_uniform_(self.out.weight)  # the official VectorDense output layer: Glorot, zero bias
        nn.init.zeros_(self.out.bias)

    def forward(self, batch: Batch) -> Tensor:
        x0 = self.embedding(batch)  # (B, F, D)
        xL = self.pin(x0)  # (B, F, D)
        return self.out(xL.sum(-1)).squeeze(-1)  # Σ_f w_f Σ_d X_L[f, d] + b: (B, F) -> (B,)


class DynIntDA(XDeepInt):
    """DynInt-DA: instance gates on each PIN layer's interaction term (eq. 4)."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer, dynamic=PINDynamic.DA)


class DynIntDGP(XDeepInt):
    """DynInt-DGP: generated singular values of a low-rank PIN weight (eqs. 5, 7, 8)."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer, dynamic=PINDynamic.DGP)


class DynIntDWP(XDeepInt):
    """DynInt-DWP: a generated low-rank weighting of the static PIN weight (eqs. 6, 9, 10)."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer, dynamic=PINDynamic.DWP)
