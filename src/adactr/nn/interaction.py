"""Feature-interaction blocks shared by the baselines.

- :class:`FirstOrder`: the linear ("wide", LR) term ``w_0 + sum_f w_f(x_f)`` (Rendle 2010 eq. 1, first
  two terms; the wide part of Cheng et al. 2016 without cross-product transforms; DeepFM eq. 2 first term).
- :class:`FMInteraction`: the factorisation-machine pairwise term ``sum_{i<j} <e_i, e_j>`` computed in
  O(F D) (Rendle 2010 eq. 1 and Lemma 3.1; DeepFM eq. 2 second term).
- :class:`CrossLayerV2` / :class:`CrossNetV2`: DCN-V2 (Wang et al., WWW 2021) cross layers, full-rank
  (eq. 1) and the low-rank mixture of experts "DCN-Mix" (eq. 3)::

      x_0 ──┬──────────────┬──────────── ... ──> x_L
            │  x_1 = x_0 ⊙ (W_0 x_0 + b_0) + x_0
            │              │  x_2 = x_0 ⊙ (W_1 x_1 + b_1) + x_1
            └──────────────┴─── x_0 feeds every layer
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear


class FMInteraction(nn.Module):
    """Second-order FM term, Rendle 2010 eq. 1 via Lemma 3.1 (DeepFM eq. 2, the ``<V_i, V_j>`` sum).

    ``sum_{i<j} <e_i, e_j> = 0.5 * sum_d ((sum_f e_fd)^2 - sum_f e_fd^2)``: (B, F, D) -> (B, 1).

    >>> e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # (1, 3, 2)
    >>> FMInteraction()(e)  # <e1,e2> + <e1,e3> + <e2,e3> = 11 + 17 + 39
    tensor([[67.]])
    """

    def forward(self, emb: Tensor) -> Tensor:
        s = emb.sum(dim=1)  # (B, D): sum_f e_f
        sq = emb.square().sum(dim=1)  # (B, D): sum_f e_f^2
        return 0.5 * (s.square() - sq).sum(dim=1, keepdim=True)  # (B, 1)


class FirstOrder(nn.Module):
    """The linear term ``w_0 + sum_f w_f(x_f)`` (Rendle 2010 eq. 1; LR; the wide part of Wide&Deep).

    Built as a :class:`FieldEmbedding` of dimension 1, so a categorical value looks up its weight
    ``w_f[x_f]``, a numerical value contributes ``w_f * x_f`` and a sequence contributes the pooled
    weights of its items, exactly like the D-dimensional embeddings. ``init_std=0`` (the default) starts
    the term at the bias only: the model is linear in these weights, so zero is not a saddle (the
    gradient ``dy/dw_f[v] = [x_f = v]`` does not depend on ``w``), and it adds no random noise to the
    logit of the deep models it is summed with.
    """

    def __init__(self, *, layout: FieldLayout, init_std: float = 0.0) -> None:
        super().__init__()
        self.embedding = FieldEmbedding(layout=layout, dim=1, init_std=init_std)
        self.bias = nn.Parameter(torch.zeros(1))  # w_0

    def forward(self, batch: Batch) -> Tensor:
        return self.embedding(batch).sum(dim=1) + self.bias  # (B, F, 1) -> (B, 1)


class CrossLayerV2(nn.Module):
    """One DCN-V2 cross layer (Wang et al., WWW 2021): ``forward(x0, x, cond) -> x_{l+1}``, (B, d).

    Full rank (``rank=0``), eq. (1)::

        x_{l+1} = x_0 ⊙ (W_l x_l + b_l) + x_l,     W_l: d x d

    ``W_l x_l + b_l`` is one layer made by the ``layer`` factory and called as ``layer(x_l, cond)``; this
    is the seam where an instance-adaptive generator (APG, DynInt's DGP/DWP) replaces the static ``W_l``
    without touching this class.

    Low-rank mixture of experts (``rank=r > 0``, ``experts=K``), eq. (3) ("DCN-Mix")::

        x_{l+1} = sum_i G_i(x_l) E_i(x_l) + x_l
        E_i(x_l) = x_0 ⊙ (U_i g(C_i g(V_i^T x_l)) + b_l),   U_i, V_i: d x r,  C_i: r x r
        G = softmax_i(w_i^T x_l),                          g = tanh (the paper's choice)

    Because the gates sum to 1 and ``x_0 ⊙`` is linear, ``sum_i G_i E_i = x_0 ⊙ (sum_i G_i U_i h_i + b_l)``:
    the mixture is one (B, K r) x (K r, d) product instead of K products of size d. ``U`` and ``V`` are
    stored as (d, K, r), so ``U[:, i]`` is the paper's ``U_i`` and the flattening to (d, K r) is a view.
    ``g`` is the submodule ``self.g``; replacing it with ``nn.Identity()`` gives the linear form
    ``W = U C V^T`` (used to test the low-rank form against eq. (1)).
    """

    def __init__(self, *, input_dim: int, rank: int = 0, experts: int = 4,
                 layer: LayerFactory = Linear) -> None:
        super().__init__()
        if input_dim <= 0 or rank < 0 or experts <= 0:
            raise ValueError(f"CrossLayerV2 needs input_dim > 0, rank >= 0, experts > 0; "
                             f"got {input_dim}, {rank}, {experts}")
        if rank > 0 and layer is not Linear:
            raise ValueError("a layer factory replaces the full-rank W only; use rank=0 with it")
        self.input_dim, self.rank, self.experts = input_dim, rank, experts
        if rank == 0:
            self.W = layer(input_dim, input_dim)  # W_l x + b_l, adaptive interface forward(x, cond)
            return
        d, K, r = input_dim, experts, rank
        # Xavier-normal for U, V, C and zero b, as in the authors' DCN-Mix code (DeepCTR CrossNetMix).
        self.U = nn.Parameter(torch.randn(d, K, r) * math.sqrt(2.0 / (d + r)))  # U_i = U[:, i]
        self.V = nn.Parameter(torch.randn(d, K, r) * math.sqrt(2.0 / (d + r)))  # V_i = V[:, i]
        self.C = nn.Parameter(torch.randn(K, r, r) * math.sqrt(1.0 / r))  # C_i = C[i]
        self.b = nn.Parameter(torch.zeros(d))  # b_l, shared by the experts
        self.gate = nn.Linear(d, K, bias=False)  # row i = w_i of G_i
        self.g: nn.Module = nn.Tanh()

    def forward(self, x0: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        if self.rank == 0:
            return x0 * self.W(x, cond) + x  # (B, d)
        B, d, K, r = x.shape[0], self.input_dim, self.experts, self.rank
        h = self.g(x @ self.V.view(d, K * r)).view(B, K, r)  # (B, K, r): g(V_i^T x_l)
        h = self.g(torch.einsum("bks,krs->bkr", h, self.C))  # (B, K, r): g(C_i h_i)
        G = torch.softmax(self.gate(x), dim=-1)  # (B, K)
        mix = (G.unsqueeze(-1) * h).view(B, K * r) @ self.U.view(d, K * r).T  # (B, d): sum_i G_i U_i h_i
        return x0 * (mix + self.b) + x  # (B, d)


class CrossNetV2(nn.Module):
    """A stack of ``num_layers`` :class:`CrossLayerV2` (DCN-V2 eq. 1 or eq. 3): (B, d) -> (B, d)."""

    def __init__(self, *, input_dim: int, num_layers: int, rank: int = 0, experts: int = 4,
                 layer: LayerFactory = Linear) -> None:
        super().__init__()
        if num_layers <= 0:
            raise ValueError(f"CrossNetV2 needs num_layers > 0, got {num_layers}")
        self.output_dim = input_dim
        self.layers = nn.ModuleList(
            CrossLayerV2(input_dim=input_dim, rank=rank, experts=experts, layer=layer)
            for _ in range(num_layers))

    def forward(self, x0: Tensor, cond: Tensor | None = None) -> Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x, cond)  # (B, d)
        return x
