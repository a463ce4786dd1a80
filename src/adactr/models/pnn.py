"""PNN (Qu et al., "Product-based Neural Networks for User Response Prediction", ICDM 2016): IPNN and OPNN.

The product layer feeds the first hidden layer (eq. 3 and its unit-wise form)::

    l_1 = relu(l_z + l_p + b_1),   l_z^n = W_z^n ⊙ z,   l_p^n = W_p^n ⊙ p,   z = (f_1, ..., f_N)

Both ``l_z`` and ``l_p`` are linear in ``(z, p)``, so ``l_1`` is one dense layer over ``[vec(z); vec(p)]``:
the product block only produces the signals and the tower's first layer (built by ``layer``, where APG
drops in) holds ``W_z``, ``W_p`` and ``b_1``. This is how the authors' released code computes it.

    Batch ──FieldEmbedding──> f (B, N, M) ──flatten───────────────> z (B, N M) ──┐
                                   └──InnerProduct / OuterProduct──> p (B, P)   ──concat──MLP(layer)──> logit

    IPNN: p_{i,j} = <f_i, f_j>, i < j                   P = N(N-1)/2    (Sec. III-B)
    OPNN: p = f_Σ f_Σ^T, f_Σ = sum_i f_i (superposition)  P = M^2         (Sec. III-C)

:class:`PNN` takes the product block by composition (``product=``); :class:`IPNN`, :class:`OPNN` and
:class:`PNNStar` are the three registered choices. ``Product.BOTH`` concatenates the two signals: the
paper's PNN* (evaluated beside IPNN and OPNN in its experiments), ``p = [p_inner; p_outer]``.

Which outer product: the sum-pooled ``f_Σ f_Σ^T`` of this ICDM'16 paper (Sec. III-C), which defines PNN*,
and the one in the authors' code of that time (``Atomu2014/product-nets`` ``PNN2``, commit 015a27bb).
DynInt (Yan & Li, DLP-KDD 2022) cites this paper and the TOIS version (Qu et al., 2018) for its "PNN (with
both inner product layer and outer product layer)" row without saying which outer product it ran. The
TOIS kernel product ``f_i^T W f_j`` per pair (the authors' code after commit 1c689368) is not used here:
the DynInt authors' own LightCTR ``PNN`` freezes that kernel at the identity, where the "outer" signal
equals the inner one and PNN* adds nothing to IPNN.
"""

from __future__ import annotations

from enum import Enum

import torch
from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import InnerProduct, OuterProduct
from adactr.nn.mlp import LayerFactory, Linear


class Product(str, Enum):
    INNER = "inner"  # IPNN
    OUTER = "outer"  # OPNN
    BOTH = "both"  # PNN*: inner and outer signals concatenated


class PNN(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear,
                 product: Product = Product.INNER) -> None:
        super().__init__()
        N, M = layout.n_fields, config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=M, init_std=config.embedding_init_std)
        self.inner = InnerProduct(num_fields=N) if product is not Product.OUTER else None
        self.outer = OuterProduct(embedding_dim=M) if product is not Product.INNER else None
        p_dim = sum(b.output_dim for b in (self.inner, self.outer) if b is not None)
        self.tower = tower(input_dim=N * M + p_dim, config=config, layer=layer)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, N, M)
        cond = self.make_condition(batch, emb)
        signals = [emb.flatten(1)]  # z: (B, N M)
        if self.inner is not None:
            signals.append(self.inner(emb))  # (B, N(N-1)/2)
        if self.outer is not None:
            signals.append(self.outer(emb))  # (B, M^2)
        return self.tower(torch.cat(signals, dim=1), cond).squeeze(-1)  # (B, N M + P) -> (B, 1) -> (B,)


class IPNN(PNN):
    """PNN with the inner-product layer (Qu et al., ICDM 2016, Sec. III-B)."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer, product=Product.INNER)


class OPNN(PNN):
    """PNN with the sum-pooled outer-product layer (Qu et al., ICDM 2016, Sec. III-C)."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer, product=Product.OUTER)


class PNNStar(PNN):
    """PNN* (Qu et al., ICDM 2016, the PNN* of its experiments): the inner products and the sum-pooled outer product
    ``f_Σ f_Σ^T`` (not the TOIS kernel product; see the module docstring) both feed the first layer.
    Its input is ``[vec(z); p_inner (N(N-1)/2); vec(f_Σ f_Σ^T) (M^2)]``."""

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer, product=Product.BOTH)
