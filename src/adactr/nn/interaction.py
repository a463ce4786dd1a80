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

- :class:`CrossLayerV1` / :class:`CrossNet`: DCN (Wang et al., ADKDD 2017) eq. 3,
  ``x_{l+1} = x_0 x_l^T w_l + b_l + x_l`` with a vector ``w_l``.
- :class:`InnerProduct` / :class:`OuterProduct`: the product signals ``p`` of PNN (Qu et al., ICDM 2016),
  pairwise inner products (IPNN) and the sum-pooled outer product ``f_Σ f_Σ^T`` (OPNN).
- :class:`CIN`: xDeepFM's Compressed Interaction Network (Lian et al., KDD 2018), vector-wise feature maps
  ``X^k = W^k (X^{k-1} ⊗ X^0)``, sum-pooled, split-half or direct.
- :class:`SENet` / :class:`BilinearInteraction`: FiBiNET (Huang et al., RecSys 2019) field re-weighting
  (squeeze, excitation, re-weight) and the bilinear interaction ``p_ij = (v_i W) ⊙ v_j``.
- :class:`MultiHeadSelfAttention`: AutoInt's interacting layer (Song et al., CIKM 2019) over fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum

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
        return _FMFn.apply(emb)


class _FMFn(torch.autograd.Function):
    """The FM term with its gradient written out: ``d/d e_f = g * (sum_f' e_f' - e_f)``.

    Autograd of the three-line formula runs ~7 passes over (B, F, D) (square, its backward, two expanded
    sums' backward, their addition); this backward is one ``addcmul``. A (4096, 39, 10) batch, two CPU
    threads, forward + backward: 3.9 -> 1.1 ms. Equal to the formula's autograd within float rounding
    (tests/test_blocks.py, with gradcheck in float64).
    """

    @staticmethod
    def forward(ctx, emb: Tensor) -> Tensor:
        s = emb.sum(dim=1)  # (B, D): sum_f e_f
        flat = emb.flatten(1)  # (B, F*D)
        sq = torch.linalg.vecdot(flat, flat)  # (B,): sum_f sum_d e_fd^2
        ctx.save_for_backward(emb, s)
        return (0.5 * (torch.linalg.vecdot(s, s) - sq)).unsqueeze(1)  # (B, 1)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        emb, s = ctx.saved_tensors  # (B, F, D), (B, D)
        # g * s - g * e_f, broadcast over the fields: (B, 1, D) - (B, F, D) * (B, 1, 1)
        return torch.addcmul((s * g).unsqueeze(1), emb, g.view(-1, 1, 1), value=-1)


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


def _linear_no_bias(in_features: int, out_features: int) -> nn.Module:
    """The static ``x^T w`` of DCN eq. 3: a bias-free :class:`Linear` (``forward(x, cond)``)."""
    return Linear(in_features, out_features, bias=False)


class CrossLayerV1(nn.Module):
    """One DCN cross layer (Wang et al., "Deep & Cross Network for Ad Click Predictions", ADKDD 2017), eq. 3::

        x_{l+1} = x_0 x_l^T w_l + b_l + x_l,      w_l, b_l in R^d

    ``x_0 x_l^T w_l`` is ``x_0`` scaled by the scalar ``x_l^T w_l``, so a layer costs O(d), not O(d^2).
    The scalar is one module made by ``layer(d, 1)`` and called as ``w(x_l, cond) -> (B, 1)``; the default
    is a bias-free static projection (exactly eq. 3). This is the seam where a later change generates
    ``w_l`` from the condition (a module returning ``sum(x_l * w_l(cond))``) without touching this class.
    """

    def __init__(self, *, input_dim: int, layer: LayerFactory = _linear_no_bias) -> None:
        super().__init__()
        if input_dim <= 0:
            raise ValueError(f"CrossLayerV1 needs input_dim > 0, got {input_dim}")
        self.w = layer(input_dim, 1)  # x_l^T w_l, adaptive interface forward(x, cond) -> (B, 1)
        self.b = nn.Parameter(torch.zeros(input_dim))  # b_l

    def forward(self, x0: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return x0 * self.w(x, cond) + self.b + x  # (B, d) * (B, 1) + (d,) + (B, d) -> (B, d)


class CrossNet(nn.Module):
    """A stack of ``num_layers`` :class:`CrossLayerV1` (DCN eq. 3): (B, d) -> (B, d)."""

    def __init__(self, *, input_dim: int, num_layers: int, layer: LayerFactory = _linear_no_bias) -> None:
        super().__init__()
        if num_layers <= 0:
            raise ValueError(f"CrossNet needs num_layers > 0, got {num_layers}")
        self.output_dim = input_dim
        self.layers = nn.ModuleList(CrossLayerV1(input_dim=input_dim, layer=layer) for _ in range(num_layers))

    def forward(self, x0: Tensor, cond: Tensor | None = None) -> Tensor:
        x = x0
        for layer in self.layers:
            x = layer(x0, x, cond)  # (B, d)
        return x


class InnerProduct(nn.Module):
    """IPNN's product signals (Qu et al., "Product-based Neural Networks for User Response Prediction",
    ICDM 2016, Sec. III-B): ``p_{i,j} = <f_i, f_j>`` for every pair ``i < j``, (B, F, D) -> (B, F(F-1)/2).

    The pairs are in row-major order (0,1), (0,2), ..., (1,2), .... The weights ``W_p^n`` of ``l_p`` (eq. 3)
    are the next dense layer's, as in the authors' released code (``PNN1``); the paper's rank-1 reduction
    ``W_p^n = θ^n θ^n^T`` is a complexity trade-off that this block leaves to the layer that follows.

    >>> f = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # (1, 3, 2)
    >>> InnerProduct(num_fields=3)(f)  # <f1,f2>, <f1,f3>, <f2,f3>
    tensor([[11., 17., 39.]])
    """

    def __init__(self, *, num_fields: int) -> None:
        super().__init__()
        if num_fields <= 0:
            raise ValueError(f"InnerProduct needs num_fields > 0, got {num_fields}")
        row, col = torch.triu_indices(num_fields, num_fields, offset=1)
        self.row: Tensor
        self.col: Tensor
        self.register_buffer("row", row, persistent=False)  # (P,)
        self.register_buffer("col", col, persistent=False)  # (P,)
        self.output_dim = num_fields * (num_fields - 1) // 2

    def forward(self, emb: Tensor) -> Tensor:
        gram = emb @ emb.transpose(1, 2)  # (B, F, F): <f_i, f_j>
        return gram[:, self.row, self.col]  # (B, P)


class OuterProduct(nn.Module):
    """OPNN's product signal with the superposition trick (Qu et al., ICDM 2016, Sec. III-C):

        p = sum_i sum_j f_i f_j^T = f_Σ f_Σ^T,    f_Σ = sum_i f_i,          (B, F, D) -> (B, D*D)

    which cuts the cost of ``l_p`` from O(D_1 M^2 N^2) to O(D_1 M (M + N)). ``l_p^n = W_p^n ⊙ p`` with an
    M x M kernel ``W_p^n`` per unit is a linear map of ``vec(p)``: the next dense layer holds the kernels,
    as in the authors' released code (``PNN2``: ``matmul(p, k1)`` inside the first layer).

    >>> f = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])  # (1, 2, 2): f_Σ = (2, 2)
    >>> OuterProduct(embedding_dim=2)(f)  # vec of [[4, 4], [4, 4]]
    tensor([[4., 4., 4., 4.]])
    """

    def __init__(self, *, embedding_dim: int) -> None:
        super().__init__()
        if embedding_dim <= 0:
            raise ValueError(f"OuterProduct needs embedding_dim > 0, got {embedding_dim}")
        self.output_dim = embedding_dim * embedding_dim

    def forward(self, emb: Tensor) -> Tensor:
        s = emb.sum(dim=1)  # (B, D): f_Σ
        return (s.unsqueeze(2) * s.unsqueeze(1)).flatten(1)  # (B, D, D) -> (B, D*D)


class CIN(nn.Module):
    """xDeepFM's Compressed Interaction Network (Lian et al., "xDeepFM: Combining Explicit and Implicit
    Feature Interactions for Recommender Systems", KDD 2018, Sec. 3.2), (B, m, D) -> (B, output_dim)::

        X^k_{h,*} = sum_{i=1}^{H_{k-1}} sum_{j=1}^{m} W^{k,h}_{ij} (X^{k-1}_{i,*} ∘ X^0_{j,*})     (eq. 6)
        p^k_h = sum_{d=1}^{D} X^k_{h,d}                                                      (eq. 7)
        p^+ = [p^1, ..., p^T]

    with ``X^0`` the (m, D) field embeddings and ``W^{k,h}`` an (H_{k-1}, m) matrix per feature map h. As in
    eq. 6 there is no bias and no activation (the authors' code defaults to the identity too; DeepCTR's
    ReLU is its own choice). ``W[k]`` is stored as (H_k, H_{k-1}, m): ``W[k][h]`` is the paper's
    ``W^{k,h}``. Two ways to feed the next layer:

    - direct (``split_half=False``, eqs. 6-7 as written): all H_k maps go to the next layer and all are
      pooled into ``p^k``. Output width ``sum_k H_k``.
    - split-half (``split_half=True``, the authors' released code, Microsoft ``recommenders``
      ``_build_CIN(direct=False)``, kept by DeepCTR): for every layer but the last, the first H_k/2 maps
      feed the next layer and the second H_k/2 are pooled into the output; the last layer's maps are all
      pooled. Output width ``sum_{k<T} H_k/2 + H_T``; H_k must be even for k < T.

    Filters start Glorot-uniform over (H_k, H_{k-1} m), as in the authors' LightCTR ``CIN``.

    >>> cin = CIN(num_fields=2, layer_sizes=[1])
    >>> with torch.no_grad():
    ...     _ = cin.W[0].fill_(1.0)  # X^1 = sum_i sum_j X^0_i ∘ X^0_j = f_Σ ∘ f_Σ
    >>> cin(torch.tensor([[[1.0, 2.0], [3.0, 0.0]]])).tolist()  # f_Σ = (4, 2): p = 16 + 4
    [[20.0]]
    """

    def __init__(self, *, num_fields: int, layer_sizes: Sequence[int], split_half: bool = False) -> None:
        super().__init__()
        sizes = list(layer_sizes)
        if num_fields <= 0 or not sizes or any(h <= 0 for h in sizes):
            raise ValueError(f"CIN needs num_fields > 0 and at least one positive layer size, "
                             f"got {num_fields} and {sizes}")
        if split_half and any(h % 2 for h in sizes[:-1]):
            raise ValueError(f"CIN with split_half needs even sizes for every layer but the last, got {sizes}")
        self.split_half = split_half
        self.W = nn.ParameterList()
        h_prev = num_fields  # H_0 = m
        for k, h in enumerate(sizes):
            w = torch.empty(h, h_prev * num_fields)
            nn.init.xavier_uniform_(w)
            self.W.append(nn.Parameter(w.view(h, h_prev, num_fields)))  # (H_k, H_{k-1}, m)
            last = k == len(sizes) - 1
            h_prev = h // 2 if split_half and not last else h
        # maps pooled into p^+ per layer: the second half (split-half, not last) or all of them
        self.pooled = [h - h // 2 if split_half and k < len(sizes) - 1 else h for k, h in enumerate(sizes)]
        self.output_dim = sum(self.pooled)

    def forward(self, x0: Tensor) -> Tensor:
        B, m, D = x0.shape
        x = x0  # X^0: (B, m, D)
        pooled = []
        for W, n_out in zip(self.W, self.pooled, strict=True):
            h_k, h_prev = W.shape[0], W.shape[1]
            z = (x.unsqueeze(2) * x0.unsqueeze(1)).reshape(B, h_prev * m, D)  # X^{k-1}_i ∘ X^0_j: (B, H m, D)
            xk = torch.matmul(W.reshape(h_k, h_prev * m), z)  # eq. 6: (H_k, H m) @ (B, H m, D) -> (B, H_k, D)
            pooled.append(xk[:, h_k - n_out:].sum(dim=2))  # eq. 7 on the output maps: (B, n_out)
            x = xk[:, :h_k - n_out] if n_out < h_k else xk  # split-half: the first half goes on
        return torch.cat(pooled, dim=1)  # p^+: (B, output_dim)


class SENet(nn.Module):
    """FiBiNET's SENET layer (Huang et al., "FiBiNET: Combining Feature Importance and Bilinear feature
    Interaction for Click-Through Rate Prediction", RecSys 2019), (B, F, D) -> (B, F, D)::

        squeeze     z_i = mean_t e_i^(t)                            Z in R^F
        excitation  A = σ_2(W_2 σ_1(W_1 Z)),  W_1: F -> F/r,  W_2: F/r -> F
        re-weight   V = [a_1 e_1, ..., a_F e_F]

    Mean pooling (not the max pooling of the image SENet) as in the paper; ``σ_1 = σ_2 = ReLU`` and no
    biases, as in the DeepCTR and FuxiCTR implementations. The reduced width is ``max(1, F // r)``.
    """

    def __init__(self, *, num_fields: int, reduction_ratio: int = 3) -> None:
        super().__init__()
        if num_fields <= 0 or reduction_ratio <= 0:
            raise ValueError(f"SENet needs num_fields > 0 and reduction_ratio > 0, "
                             f"got {num_fields}, {reduction_ratio}")
        reduced = max(1, num_fields // reduction_ratio)
        self.W1 = nn.Linear(num_fields, reduced, bias=False)
        self.W2 = nn.Linear(reduced, num_fields, bias=False)

    def forward(self, emb: Tensor) -> Tensor:
        Z = emb.mean(dim=2)  # (B, F): squeeze
        A = torch.relu(self.W2(torch.relu(self.W1(Z))))  # (B, F): excitation
        return emb * A.unsqueeze(-1)  # (B, F, D): re-weight


class BilinearType(str, Enum):
    FIELD_ALL = "field_all"  # FiBiNET Field-All type: one W shared by all pairs
    FIELD_EACH = "field_each"  # Field-Each type: one W_i per (left) field
    FIELD_INTERACTION = "field_interaction"  # Field-Interaction type: one W_ij per pair


class BilinearInteraction(nn.Module):
    """FiBiNET's bilinear-interaction layer (Huang et al., RecSys 2019), (B, F, D) -> (B, P, D)::

        p_ij = (v_i · W) ⊙ v_j,   i < j,   P = F(F-1)/2 pairs in row-major order

    with ``W`` shared by all pairs (Field-All), one ``W_i`` per field (Field-Each) or one ``W_ij`` per
    pair (Field-Interaction). Field-Each allocates F-1 matrices: the last field is never
    the left member ``i`` of a pair, so its ``W_F`` would never be used.
    """

    def __init__(self, *, num_fields: int, embedding_dim: int,
                 bilinear_type: BilinearType = BilinearType.FIELD_INTERACTION) -> None:
        super().__init__()
        if num_fields < 2 or embedding_dim <= 0:
            raise ValueError(f"BilinearInteraction needs num_fields >= 2 and embedding_dim > 0, "
                             f"got {num_fields}, {embedding_dim}")
        self.bilinear_type = bilinear_type
        row, col = torch.triu_indices(num_fields, num_fields, offset=1)
        self.row: Tensor
        self.col: Tensor
        self.register_buffer("row", row, persistent=False)  # (P,): i of each pair
        self.register_buffer("col", col, persistent=False)  # (P,): j of each pair
        n = {BilinearType.FIELD_ALL: 1, BilinearType.FIELD_EACH: num_fields - 1,
             BilinearType.FIELD_INTERACTION: len(row)}[bilinear_type]
        D = embedding_dim
        self.W = nn.Parameter(torch.randn(n, D, D) * math.sqrt(2.0 / (D + D)))  # Xavier normal, like DeepCTR
        self.output_dim = len(row) * D  # flattened size

    def forward(self, emb: Tensor) -> Tensor:
        vi, vj = emb[:, self.row], emb[:, self.col]  # (B, P, D) each
        if self.bilinear_type is BilinearType.FIELD_ALL:
            vW = vi @ self.W[0]  # (B, P, D): v_i · W
        elif self.bilinear_type is BilinearType.FIELD_EACH:
            vW = torch.einsum("bpd,pde->bpe", vi, self.W[self.row])  # (B, P, D): v_i · W_i
        else:
            vW = torch.einsum("bpd,pde->bpe", vi, self.W)  # (B, P, D): v_i · W_ij
        return vW * vj  # (B, P, D)


class MultiHeadSelfAttention(nn.Module):
    """AutoInt's interacting layer (Song et al., "AutoInt: Automatic Feature Interaction Learning via
    Self-Attentive Neural Networks", CIKM 2019): multi-head self-attention over the F fields,
    (B, F, d) -> (B, F, H d')::

        ψ^(h)(e_m, e_k) = <W_Q^(h) e_m, W_K^(h) e_k>                                   (eq. 6)
        α^(h)_{m,k} = softmax_k ψ^(h)(e_m, e_k)                                          (eq. 5)
        ẽ_m^(h) = sum_k α^(h)_{m,k} W_V^(h) e_k                                          (eq. 7)
        ẽ_m = ẽ_m^(1) ⊕ ... ⊕ ẽ_m^(H)                                                    (eq. 8)
        e_m^Res = ReLU(ẽ_m + W_Res e_m)                                                  (eq. 9)

    ``W_Q, W_K, W_V: d -> d'`` per head (stored stacked, d -> H d') and ``W_Res: d -> H d'``, all without
    bias as in the paper. ψ is the plain inner product of eq. 6; ``scaled=True`` divides it by ``sqrt(d')``
    (the Transformer's scaled dot product, used by DIFM's vector-wise part). ``residual=False`` drops the
    ``W_Res e_m`` term.
    """

    def __init__(self, *, input_dim: int, head_dim: int, heads: int, scaled: bool = False,
                 residual: bool = True) -> None:
        super().__init__()
        if input_dim <= 0 or head_dim <= 0 or heads <= 0:
            raise ValueError(f"MultiHeadSelfAttention needs input_dim, head_dim, heads > 0, "
                             f"got {input_dim}, {head_dim}, {heads}")
        self.heads, self.head_dim, self.scaled = heads, head_dim, scaled
        self.output_dim = heads * head_dim
        self.W_Q = nn.Linear(input_dim, self.output_dim, bias=False)
        self.W_K = nn.Linear(input_dim, self.output_dim, bias=False)
        self.W_V = nn.Linear(input_dim, self.output_dim, bias=False)
        self.W_Res = nn.Linear(input_dim, self.output_dim, bias=False) if residual else None

    def forward(self, e: Tensor) -> Tensor:
        B, F = e.shape[0], e.shape[1]
        H, d = self.heads, self.head_dim
        Q = self.W_Q(e).view(B, F, H, d).transpose(1, 2)  # (B, H, F, d')
        K = self.W_K(e).view(B, F, H, d).transpose(1, 2)  # (B, H, F, d')
        V = self.W_V(e).view(B, F, H, d).transpose(1, 2)  # (B, H, F, d')
        psi = Q @ K.transpose(2, 3)  # (B, H, F, F): ψ(e_m, e_k)
        if self.scaled:
            psi = psi / math.sqrt(d)
        alpha = torch.softmax(psi, dim=-1)  # (B, H, F, F): over k
        out = (alpha @ V).transpose(1, 2).reshape(B, F, H * d)  # (B, F, H d'): heads concatenated
        if self.W_Res is not None:
            out = out + self.W_Res(e)
        return torch.relu(out)  # (B, F, H d')
