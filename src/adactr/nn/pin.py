"""The Polynomial Interaction Network (PIN) of xDeepInt and its dynamic forms from DynInt (Yan & Li,
"DynInt: Dynamic Interaction Modeling for Large-scale Click-Through Rate Prediction", DLP-KDD 2022, §3).

One PIN layer multiplies the running feature map by a linear mix of the input map, with a residual::

    static (xDeepInt)  X_l = X_{l-1} ∘ (W_{l-1} X_0) + X_{l-1}                                  eq. (3)
    DA                 X_l = (X_{l-1} ∘ (W_{l-1} X_0)) ∘ G_{l-1}(X_0) + X_{l-1}                     eq. (4)
    DGP                X_l = X_{l-1} ∘ (U_{l-1} Σ^(i)_{l-1} V_{l-1}^T X_0) + X_{l-1}                eqs. (5), (7), (8)
    DWP                X_l = Σ_p X_{l-1} ∘ ((diag(u_p) W_{l-1} diag(v_p)) X_0) + X_{l-1}           eqs. (6), (9), (10)

    X_l, X_0 (F', d')   W (F', F')   U, V (F', K)   Σ^(i) = diag(σ^(i)) (K, K)   u_p, v_p (F',)

L layers give interactions of degree up to L + 1 in the embeddings. Subspace crossing (§3, Fig. 2b)
splits the (F, D) map into h blocks of D/h columns stacked as rows, (F' = F h, d' = D / h), so one W mixes
every (field, block) pair: h = 1 is purely vector-wise, h = D fully bit-wise. The row order is the official
code's (row ``k F + f`` is block ``k`` of field ``f``); a field-major order (TorchRec's reshape) is the same
function with W permuted (``tests/test_pin.py``).

Choices the paper leaves open, and ours (see docs/dynint.md for what was measured):

- **The generator nets** ("a two-layer DNN with reduction ratio r, using X_0 as input"): input the
  gradient-stopped X_0 flattened (F D values; the paper: "X_0 does not receive gradients"), hidden width
  ``max(1, F D // r)`` with ReLU (the authors' later GatedDense / ExpertRouter read r against the
  flattened input), Glorot-uniform kernels and zero biases (Keras' Dense defaults, the authors' code).
  Each layer has its own net. Beyond the paper: the input is normalised first (``condition_norm``, the
  seam APG uses, LayerNorm by default): embeddings start at rms 1e-4, and a net fed that outputs the same
  gate for every instance, the failure the APG review found (../shared/research/apg-review.md).
- **DA gate**: one gate per row (F' values, broadcast over the d' columns), output ``2 sigmoid``, as the
  authors' GatedDense. The paper's Fig. 3 does not say per row or per element; per row keeps the net's
  output F' instead of F D.
- **DGP**: σ^(i) = 1 + net(X_0): the paper gives no offset or activation; with the offset a layer starts
  as the static low-rank PIN ``U V^T`` (DA starts near its static W through 2 sigmoid ≈ 1, DWP through
  G ≈ 1; all three start as a static PIN). K = ``dgp_rank``; 0 = ``min(F', max(8, ceil(F'/10)))``: F'/10 is
  the paper's memory-claim setting (§3.5.3), which gives 63 on Criteo with h = 16 (its Fig. 6a best: 64),
  and 8 keeps it useful on small F'.
- **DWP offset**: the paper adds 1/K to the net's outputs so that "G ≈ 1", but with u ≈ v ≈ 1/K,
  ``G = Σ_p u_p v_p^T ≈ K / K^2 = 1/K``. We add 1/sqrt(K) to both, which gives G ≈ K (1/sqrt K)^2 = 1.
- **Orthogonal penalty** (eqs. 11, 12): λ Σ_l Σ_{p>q} |cos(u_p, u_q)| + |cos(v_p, v_q)|, added to the
  *negative* log-likelihood (both equations print the log-likelihood with a + sign, which would maximise
  the loss). DGP: the columns of the static U, V (the paper's Σ_i over instances multiplies a term that does
  not depend on i; with our batch-mean loss it is counted once). DWP: per instance, averaged over the
  batch. It goes to the trainer through :mod:`adactr.nn.penalty`.

>>> cfg = PINConfig(layers=2, subspaces=2, dynamic=PINDynamic.DWP)
>>> pin = PIN(num_fields=3, embedding_dim=4, config=cfg)
>>> pin(torch.randn(5, 3, 4)).shape
torch.Size([5, 3, 4])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor, nn

from adactr.errors import ConfigError
from adactr.nn.apg import NORM_EPS, ConditionNorm
from adactr.nn.penalty import add_penalty, penalties_active


class PINDynamic(str, Enum):
    """What makes a PIN layer instance-aware (DynInt §3.2-3.5)."""

    NONE = "none"  # xDeepInt: one static W for every instance, eq. (3)
    DA = "da"  # DynInt-DA: a generated gate on each layer's interaction term, eq. (4)
    DGP = "dgp"  # DynInt-DGP: W^(i) = U Σ^(i) V^T with Σ^(i) generated, eqs. (5), (7), (8)
    DWP = "dwp"  # DynInt-DWP: (G^(i) ∘ W) with G^(i) = Σ_p u_p v_p^T generated, eqs. (6), (9), (10)


@dataclass(frozen=True)
class PINConfig:
    """PIN / DynInt hyper-parameters (``model.pin.*``)."""

    # L: the paper's Table 4 sweep uses 3 ("generally a good choice"); Table 3's best is 3-4
    layers: int = 3
    # h: sub-spaces of the embedding (must divide embedding_dim). 1 = vector-wise only (Table 3's setting);
    # the paper's Table 4 finds h = 16 (= D) best on Criteo and 4 on Avazu / iPinYou.
    subspaces: int = 1
    dynamic: PINDynamic = PINDynamic.NONE  # set by the model name (xdeepint, dynint_da, dynint_dgp, dynint_dwp)
    # r: hidden width of each generator net = F D // r. 16: the authors' AdaEnsemble setting; the paper's
    # grid is 2..16
    reduction: int = 16
    # the generator nets' input normalisation (the APG seam; the paper has none): see the module docstring
    condition_norm: ConditionNorm = ConditionNorm.LAYER
    dgp_rank: int = 0  # K of DGP; 0 = min(F', max(8, ceil(F'/10))) (module docstring)
    dwp_rank: int = 2  # K of DWP: the paper's grid is 1..4
    # λ of eqs. (11)-(12). The paper gives no value, only that a larger λ converges faster (Fig. 7b). The
    # DGP sum has K(K-1) terms per layer (56 at K = 8), cosines of random vectors ~1/sqrt(F'): 1e-3 keeps the
    # penalty at init a few percent of the log loss.
    orthogonal: float = 1e-3

    def check(self, *, embedding_dim: int) -> None:
        if self.layers < 0:
            raise ConfigError(f"model.pin.layers must be >= 0, got {self.layers}")
        if self.subspaces < 1 or embedding_dim % self.subspaces:
            raise ConfigError(f"model.pin.subspaces={self.subspaces} must divide model.embedding_dim="
                              f"{embedding_dim}")
        for key in ("reduction", "dwp_rank"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.pin.{key} must be >= 1, got {getattr(self, key)}")
        if self.dgp_rank < 0:
            raise ConfigError(f"model.pin.dgp_rank must be >= 0 (0 = automatic), got {self.dgp_rank}")
        if self.orthogonal < 0:
            raise ConfigError(f"model.pin.orthogonal must be >= 0, got {self.orthogonal}")

    def dgp_K(self, rows: int) -> int:
        """DGP's rank for F' = ``rows``."""
        return self.dgp_rank or min(rows, max(8, math.ceil(rows / 10)))


# ---- subspace crossing ------------------------------------------------------------------------------------
def split_subspaces(x: Tensor, h: int) -> Tensor:
    """(B, F, D) -> (B, h F, D / h): row ``k F + f`` is columns ``[k D/h, (k+1) D/h)`` of field ``f``
    (the official ``concat(split(X, h, axis=2), axis=1)``)."""
    B, F, D = x.shape
    return x.reshape(B, F, h, D // h).transpose(1, 2).reshape(B, h * F, D // h)


def merge_subspaces(x: Tensor, h: int) -> Tensor:
    """The inverse of :func:`split_subspaces`: (B, h F, d') -> (B, F, h d')."""
    B, R, d = x.shape
    return x.reshape(B, h, R // h, d).transpose(1, 2).reshape(B, R // h, h * d)


# ---- the pieces ------------------------------------------------------------------------------------------
def _glorot(rows: int, cols: int) -> nn.Parameter:
    """A (rows, cols) Glorot-uniform matrix (the official code's initialiser for W, U, V)."""
    w = torch.empty(rows, cols)
    nn.init.xavier_uniform_(w)
    return nn.Parameter(w)


class GeneratorNet(nn.Module):
    """DynInt's "two-layer DNN with reduction ratio r": z (B, n) -> (B, out), z = the flattened X_0.

    ``norm(z)`` -> Linear(n, max(1, n // r)) -> ReLU -> Linear(.., out); Glorot-uniform kernels, zero biases.
    The caller stops the gradient into z (the paper's "blocked" X_0)."""

    def __init__(self, *, in_dim: int, out_dim: int, reduction: int, norm: ConditionNorm) -> None:
        super().__init__()
        hidden = max(1, in_dim // reduction)
        self.norm: nn.Module = {ConditionNorm.NONE: nn.Identity(),
                                ConditionNorm.LAYER: nn.LayerNorm(in_dim, eps=NORM_EPS, elementwise_affine=False),
                                ConditionNorm.BATCH: nn.BatchNorm1d(in_dim, eps=NORM_EPS, affine=False)}[norm]
        self.hidden, self.out = nn.Linear(in_dim, hidden), nn.Linear(hidden, out_dim)
        for lin in (self.hidden, self.out):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, z: Tensor) -> Tensor:
        return self.out(torch.relu(self.hidden(self.norm(z))))  # (B, out)


def pairwise_abs_cosine(vectors: Tensor) -> Tensor:
    """Σ_{p>q} |cos(a_p, a_q)| over the K vectors ``vectors[..., p, :]``: (..., K, n) -> (...).

    0 for orthogonal vectors, K(K-1)/2 for identical ones, unchanged when a vector is rescaled."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # (..., K, n)
    cos = unit @ unit.transpose(-1, -2)  # (..., K, K)
    K = cos.shape[-1]
    upper = torch.ones(K, K, dtype=torch.bool, device=cos.device).triu(1)  # p < q
    return cos.abs().masked_fill(~upper, 0.0).sum((-1, -2))  # (...)


def _generator_input(x0: Tensor) -> Tensor:
    """The gradient-stopped X_0 the generator nets read (paper §3.2: "X_0 does not receive gradients from
    the gating network"): (B, F', d') -> (B, F' d')."""
    return x0.detach().flatten(1)


class PINLayer(nn.Module):
    """xDeepInt's PIN layer, eq. (3): ``X_l = X_{l-1} ∘ (W X_0) + X_{l-1}``, W (F', F') without bias."""

    def __init__(self, *, rows: int, cond_dim: int, config: PINConfig) -> None:
        super().__init__()
        self.W = _glorot(rows, rows)  # (F', F')

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        return x * (self.W @ x0) + x  # (F', F') @ (B, F', d') -> (B, F', d')


class GatedPINLayer(nn.Module):
    """DynInt-DA, eq. (4): ``X_l = (X_{l-1} ∘ (W X_0)) ∘ G(X_0) + X_{l-1}``, one gate per row,
    ``G = 2 sigmoid(net(X_0))``."""

    def __init__(self, *, rows: int, cond_dim: int, config: PINConfig) -> None:
        super().__init__()
        self.W = _glorot(rows, rows)  # (F', F')
        self.gate_net = GeneratorNet(in_dim=cond_dim, out_dim=rows, reduction=config.reduction,
                                     norm=config.condition_norm)

    def generated(self, x: Tensor, x0: Tensor) -> dict[str, Tensor]:
        return {"gate": 2.0 * torch.sigmoid(self.gate_net(_generator_input(x0)))}  # (B, F')

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        gate = self.generated(x, x0)["gate"]  # (B, F')
        return x * (self.W @ x0) * gate.unsqueeze(-1) + x  # (B, F', d')


class LowRankPINLayer(nn.Module):
    """DynInt-DGP, eqs. (5), (7), (8): ``W^(i) X_0 = U (σ^(i) ⊙ (V^T X_0))``, never forming the (B, F', F')
    per-instance matrices; σ^(i) = 1 + net(X_0) (K,). Orthogonal penalty eq. (11) on U's and V's columns."""

    def __init__(self, *, rows: int, cond_dim: int, config: PINConfig) -> None:
        super().__init__()
        K = config.dgp_K(rows)
        self.U, self.V = _glorot(rows, K), _glorot(rows, K)  # (F', K) each
        self.sigma_net = GeneratorNet(in_dim=cond_dim, out_dim=K, reduction=config.reduction,
                                      norm=config.condition_norm)
        self.orthogonal = config.orthogonal

    def generated(self, x: Tensor, x0: Tensor) -> dict[str, Tensor]:
        return {"sigma": 1.0 + self.sigma_net(_generator_input(x0))}  # (B, K)

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        sigma = self.generated(x, x0)["sigma"]  # (B, K)
        h = self.V.T @ x0  # V^T X_0: (K, F') @ (B, F', d') -> (B, K, d')
        y = self.U @ (sigma.unsqueeze(-1) * h)  # U Σ^(i) (V^T X_0): (B, F', d')
        if self.orthogonal and penalties_active():  # eq. (11): columns of the static U and V
            add_penalty("orthogonal", self.orthogonal * (pairwise_abs_cosine(self.U.T) + pairwise_abs_cosine(self.V.T)))
        return x * y + x


class WeightedPINLayer(nn.Module):
    """DynInt-DWP, eqs. (6), (9), (10): ``X_l = Σ_p X_{l-1} ∘ (u_p ⊙ (W (v_p ⊙ X_0))) + X_{l-1}`` (⊙ scales
    rows), which is ``X_{l-1} ∘ ((G ∘ W) X_0)`` with ``G = Σ_p u_p v_p^T``; u_p, v_p (F',) from one net plus
    1/sqrt(K) (so G ≈ 1 at initialisation). Orthogonal penalty eq. (12), per instance."""

    def __init__(self, *, rows: int, cond_dim: int, config: PINConfig) -> None:
        super().__init__()
        self.K, self.rows = config.dwp_rank, rows
        self.W = _glorot(rows, rows)  # (F', F')
        self.uv_net = GeneratorNet(in_dim=cond_dim, out_dim=2 * self.K * rows, reduction=config.reduction,
                                   norm=config.condition_norm)
        self.offset = 1.0 / math.sqrt(self.K)
        self.orthogonal = config.orthogonal

    def generated(self, x: Tensor, x0: Tensor) -> dict[str, Tensor]:
        uv = self.uv_net(_generator_input(x0)) + self.offset  # (B, 2 K F')
        u, v = uv.view(-1, 2, self.K, self.rows).unbind(1)  # (B, K, F') each
        return {"u": u, "v": v}

    def forward(self, x: Tensor, x0: Tensor) -> Tensor:
        g = self.generated(x, x0)
        u, v = g["u"], g["v"]  # (B, K, F')
        xv = v.unsqueeze(-1) * x0.unsqueeze(1)  # diag(v_p) X_0: (B, K, F', d')
        y = (u.unsqueeze(-1) * (self.W @ xv)).sum(1)  # Σ_p diag(u_p) W diag(v_p) X_0: (B, F', d')
        if self.orthogonal and penalties_active():  # eq. (12): per instance, mean over the batch
            add_penalty("orthogonal", self.orthogonal * (pairwise_abs_cosine(u) + pairwise_abs_cosine(v)).mean())
        return x * y + x


PINLayerFactory = Callable[[int, int], nn.Module]  # (rows F', generator input size F D) -> a PIN layer


def pin_layer_factory(config: PINConfig) -> PINLayerFactory:
    """The layer class of ``config.dynamic``, configured: ``factory(rows, cond_dim)``."""
    cls = {PINDynamic.NONE: PINLayer, PINDynamic.DA: GatedPINLayer, PINDynamic.DGP: LowRankPINLayer,
           PINDynamic.DWP: WeightedPINLayer}[config.dynamic]

    def make(rows: int, cond_dim: int) -> nn.Module:
        return cls(rows=rows, cond_dim=cond_dim, config=config)
    return make


class PIN(nn.Module):
    """The PIN block: X_0 (B, F, D) -> X_L (B, F, D), L residual PIN layers over the h-subspace map.

    ``layer`` builds each layer (default: the one ``config.dynamic`` names), so another kind of PIN layer
    plugs in without a new block."""

    def __init__(self, *, num_fields: int, embedding_dim: int, config: PINConfig,
                 layer: PINLayerFactory | None = None) -> None:
        super().__init__()
        config.check(embedding_dim=embedding_dim)
        self.h = config.subspaces
        make = layer or pin_layer_factory(config)
        rows = num_fields * self.h  # F'
        self.layers = nn.ModuleList(make(rows, num_fields * embedding_dim) for _ in range(config.layers))

    def forward(self, x0: Tensor) -> Tensor:
        x0 = split_subspaces(x0, self.h)  # (B, F', d')
        x = x0
        for layer in self.layers:
            x = layer(x, x0)  # (B, F', d')
        return merge_subspaces(x, self.h)  # (B, F, D)
