"""DIFM (Lu et al., "A Dual Input-aware Factorization Machine for CTR Prediction", IJCAI 2020).

A dual-factor estimating network learns one input-aware factor per field, ``m_x`` (B, F), that re-weights
both the FM's first-order weights and its embeddings; the prediction is that refined FM.

    V_x = FieldEmbedding(batch)                                                        (B, F, k)
    vector-wise:  O_vec = MHSA(V_x) (multi-head self-attention + W_Res residual + ReLU)  (B, F, H d')
                  m_vec = P_vec flatten(O_vec)                                          (B, F)
    bit-wise:     O_bit = MLP(flatten(V_x))   (the tower, built with ``layer``)         (B, h)
                  m_bit = P_bit O_bit                                                   (B, F)
    combination:  m_x = m_vec + m_bit                                                   (B, F)
    reweighting:  w_{x,i} = m_{x,i} w_i,   v_{x,i} = m_{x,i} v_i
    refined FM:   ŷ = w_0 + sum_i w_{x,i} x_i + sum_{i<j} <v_{x,i}, v_{x,j}> x_i x_j      (logit)

    Batch ──FirstOrder.embedding──> w_i x_i (B, F) ──────────────⊙ m_x──sum──┐
      └──FieldEmbedding──> V_x ──MHSA──flatten──P_vec──> m_vec ──┐           │
                            ├────flatten──MLP(layer)──P_bit──> m_bit ──+──> m_x
                            └───────────────────────────────────⊙ m_x──FM──────+── w_0 ──> logit (B,)

``P_vec`` and ``P_bit`` are bias-free projections onto the F fields. The vector-wise attention uses the
Transformer's scaled dot product (as DeepCTR's DIFM does); its heads and per-head size come from
``attention_heads`` / ``attention_dim``; DIFM has a single attention layer. ``m_x = m_vec + m_bit`` is
used as is, as in DeepCTR's DIFM (IFM's softmax rescaling of the factors, which PaddleRec's DIFM also
applies, is not used).
"""

from __future__ import annotations

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel, tower
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import FirstOrder, FMInteraction, MultiHeadSelfAttention
from adactr.nn.mlp import LayerFactory, Linear


class DIFM(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        F, k = layout.n_fields, config.embedding_dim
        self.embedding = FieldEmbedding(layout=layout, dim=k, init_std=config.embedding_init_std)
        self.first_order = FirstOrder(layout=layout)  # w_0 and the per-field w_i x_i
        self.vector_wise = MultiHeadSelfAttention(input_dim=k, head_dim=config.attention_dim,
                                                  heads=config.attention_heads, scaled=True)
        self.P_vec = nn.Linear(F * self.vector_wise.output_dim, F, bias=False)
        self.tower = tower(input_dim=F * k, config=config, layer=layer, output_dim=None)  # bit-wise part
        self.P_bit = nn.Linear(self.tower.output_dim, F, bias=False)
        self.fm = FMInteraction()

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, k): V_x
        cond = self.make_condition(batch, emb)
        m_vec = self.P_vec(self.vector_wise(emb).flatten(1))  # (B, F H d') -> (B, F)
        m_bit = self.P_bit(self.tower(emb.flatten(1), cond))  # (B, h) -> (B, F)
        m = m_vec + m_bit  # (B, F): m_x
        w = self.first_order.embedding(batch).squeeze(-1)  # (B, F): w_i x_i
        linear = self.first_order.bias + (m * w).sum(dim=1, keepdim=True)  # (B, 1)
        return (linear + self.fm(emb * m.unsqueeze(-1))).squeeze(-1)  # (B, 1) -> (B,)
