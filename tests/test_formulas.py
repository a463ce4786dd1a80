"""Every registered model's logit, recomputed from its paper's formula.

**The rule for every model added to adactr**: a test here computes the model's output independently,
from the equations of the paper it implements, on a tiny hand-made batch, and compares it with the
model's forward. "Independently" means the reference below never calls the model's own blocks
(``FMInteraction``, ``CrossNetV2``, ``MultiHeadSelfAttention``, ...): it reads the model's parameters and
redoes the arithmetic sample by sample, field by field, with Python loops in float64. A model that
silently becomes another model (a missing FM term, a cross layer fed ``x_l`` instead of ``x_0``, attention
normalised over the wrong axis) fails here, whatever its AUC. ``tests/mutations.py`` plants such bugs and
checks that this module (with the rest of the suite) catches every one.

The layout has three categorical fields of different sizes (so non-cumulative embedding offsets differ
from cumulative ones), a numerical field and two multi-valued fields, one mean- and one sum-pooled: every
kind of field in the (B, F, D) layout. Parameters are redrawn with a large scale so that every term moves
the logit (the default 1e-4 embeddings would hide a missing second-order term below float tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout, Pooling
from adactr.data.tensors import Batch
from adactr.models.config import CrossStructure, ModelConfig, TowerLayer
from adactr.models.registry import MODELS, build_model
from adactr.nn.adasparse import AdaSparseConfig, FactorForm, PrunedLinear
from adactr.nn.apg import APGConfig, APGVersion, ConditionMode
from adactr.nn.domain import DomainLinear, StarLinear
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import BilinearType
from adactr.nn.multidomain import MultiDomainConfig, PartitionedNorm
from adactr.nn.pin import PINConfig

# Fields, in the order of the (B, F, D) output: a, b, c categorical (3, 5, 4 values), x numerical,
# s (mean-pooled, 6 values) and t (sum-pooled, 3 values) multi-valued.
LAYOUT = FieldLayout(names=("a", "b", "c", "x", "s", "t"), cat_sizes=(3, 5, 4), n_num=1, seq_sizes=(6, 3),
                     seq_pooling=(Pooling.MEAN, Pooling.SUM))
F, D = 6, 3
CONFIG = ModelConfig(embedding_dim=D, hidden=(5, 4), cross_layers=2, attention_heads=2, attention_dim=2,
                     attention_layers=2, senet_reduction=2)
B = 5

Vec = list[float]


def _batch(seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, n, (B,), generator=g) for n in LAYOUT.cat_sizes], dim=1)
    s = torch.randint(0, 6, (B, 3), generator=g)
    s[0] = 0  # an all-padding row: its pooled vector is zero
    s[1] = torch.tensor([2, 0, 2])  # a repeated item and one pad: mean over the two items
    t = torch.randint(0, 3, (B, 2), generator=g)
    return Batch(cat=cat, num=torch.randn(B, 1, generator=g, dtype=torch.float64), seq=(s, t),
                 label=torch.zeros(B, dtype=torch.float64))


def _randomised(model: nn.Module, seed: int = 1, scale: float = 0.5) -> nn.Module:
    """Every parameter (and batch-norm statistic) redrawn from a seeded generator, in float64, eval mode."""
    g = torch.Generator().manual_seed(seed)
    model = model.double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * scale)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=torch.float64) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=torch.float64) + 0.5)
    return model


# ---- the reference arithmetic: lists of floats, nothing from adactr.nn -----------------------------

def _t(x: Tensor) -> list:
    return x.detach().tolist()


def fields(emb: FieldEmbedding, batch: Batch, b: int) -> list[Vec]:
    """The F field vectors of sample b: one table, field f's rows start after all earlier fields' rows."""
    table, wnum = _t(emb.table.weight), _t(emb.num_weight)
    dim = len(table[0])
    out: list[Vec] = []
    start = 0
    for f, size in enumerate(LAYOUT.cat_sizes):
        out.append(table[start + int(batch.cat[b, f])])
        start += size
    for f in range(LAYOUT.n_num):
        out.append([float(batch.num[b, f]) * w for w in wnum[f]])
    for seq, size, pooling in zip(batch.seq, LAYOUT.seq_sizes, LAYOUT.seq_pooling, strict=True):
        items = [int(i) for i in seq[b] if int(i) > 0]  # 0 = padding
        pooled = [sum(table[start + i][d] for i in items) for d in range(dim)]
        if pooling is Pooling.MEAN and items:
            pooled = [v / len(items) for v in pooled]
        out.append(pooled)
        start += size
    return out


def dot(u: Vec, v: Vec) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def matvec(W: list[Vec], x: Vec) -> Vec:  # W (out, in) as nn.Linear stores it
    return [dot(row, x) for row in W]


def vecmat(x: Vec, W: list[Vec]) -> Vec:  # the row vector x times W (in, out)
    return [sum(x[i] * W[i][j] for i in range(len(x))) for j in range(len(W[0]))]


def add(*vs: Vec) -> Vec:
    return [sum(t) for t in zip(*vs, strict=True)]


def mul(u: Vec, v: Vec) -> Vec:
    return [a * b for a, b in zip(u, v, strict=True)]


def scale(c: float, v: Vec) -> Vec:
    return [c * a for a in v]


def relu(v: Vec) -> Vec:
    return [max(a, 0.0) for a in v]


def softmax(v: Vec) -> Vec:
    m = max(v)
    e = [math.exp(a - m) for a in v]
    return [a / sum(e) for a in e]


def flat(vs: list[Vec]) -> Vec:
    return [a for v in vs for a in v]


def linear(layer: nn.Module, x: Vec) -> Vec:
    y = matvec(_t(layer.weight), x)
    return y if layer.bias is None else add(y, _t(layer.bias))


def mlp(tower: nn.Module, x: Vec) -> Vec:
    """y = W_L relu(BN(W_{L-1} ... relu(BN(W_1 x + b_1)) ...) + b_L; BN (eval: running statistics) where
    the tower has one, always before the activation, dropout off in evaluation."""
    for i, layer in enumerate(tower.layers):
        x = linear(layer, x)
        bns = [m for m in tower.post[i] if isinstance(m, nn.BatchNorm1d)]
        for bn in bns:
            x = [(v - m) / math.sqrt(var + bn.eps) * g + beta for v, m, var, g, beta in
                 zip(x, _t(bn.running_mean), _t(bn.running_var), _t(bn.weight), _t(bn.bias), strict=True)]
        x = relu(x)
    return x if tower.out is None else linear(tower.out, x)


def first_order(fo: nn.Module, batch: Batch, b: int) -> float:
    """w_0 + sum_f w_f(x_f): the one-dimensional field 'embeddings' summed (Rendle eq. 1, first terms)."""
    return _t(fo.bias)[0] + sum(v[0] for v in fields(fo.embedding, batch, b))


def fm(e: list[Vec]) -> float:
    """sum_{i<j} <e_i, e_j> (Rendle eq. 1, the pairwise term), written as the double loop."""
    return sum(dot(e[i], e[j]) for i in range(len(e)) for j in range(i + 1, len(e)))


def pairs(n: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(n) for j in range(i + 1, n)]


def attention(mhsa: nn.Module, e: list[Vec], *, scaled: bool) -> list[Vec]:
    """AutoInt eqs. 5-9 for one sample: per head softmax_k <W_Q e_m, W_K e_k>, then concat, + W_Res e_m, relu."""
    H, d = mhsa.heads, mhsa.head_dim
    WQ, WK, WV = _t(mhsa.W_Q.weight), _t(mhsa.W_K.weight), _t(mhsa.W_V.weight)
    q = [matvec(WQ, v) for v in e]
    k = [matvec(WK, v) for v in e]
    val = [matvec(WV, v) for v in e]
    out = []
    for m in range(len(e)):
        heads: Vec = []
        for h in range(H):
            sl = slice(h * d, (h + 1) * d)
            psi = [dot(q[m][sl], k[j][sl]) / (math.sqrt(d) if scaled else 1.0) for j in range(len(e))]
            alpha = softmax(psi)
            heads += [sum(alpha[j] * val[j][sl][c] for j in range(len(e))) for c in range(d)]
        res = matvec(_t(mhsa.W_Res.weight), e[m]) if mhsa.W_Res is not None else [0.0] * len(heads)
        out.append(relu(add(heads, res)))
    return out


# ---- one reference per model -----------------------------------------------------------------------

def ref_lr(model, batch, b):
    return first_order(model.first_order, batch, b)


def ref_fm(model, batch, b):
    return first_order(model.first_order, batch, b) + fm(fields(model.embedding, batch, b))


def ref_dnn(model, batch, b):
    return mlp(model.tower, flat(fields(model.embedding, batch, b)))[0]


def ref_wdl(model, batch, b):  # Cheng et al. eq. 3: wide + deep logits
    return first_order(model.wide, batch, b) + mlp(model.tower, flat(fields(model.embedding, batch, b)))[0]


def ref_deepfm(model, batch, b):  # Guo et al. eq. 1: y_FM (first order + pairwise) + y_DNN
    e = fields(model.embedding, batch, b)
    return first_order(model.first_order, batch, b) + fm(e) + mlp(model.tower, flat(e))[0]


def ref_dcn(model, batch, b):  # Wang et al. 2017 eq. 3 (cross), eq. 4 (deep), eq. 5 (combination)
    x0 = flat(fields(model.embedding, batch, b))
    x = x0
    for layer in model.cross.layers:
        w = _t(layer.w.weight)[0]
        x = add(scale(dot(x, w), x0), _t(layer.b), x)  # x_0 x_l^T w_l + b_l + x_l
    h = mlp(model.tower, x0)
    return linear(model.fc, x + h)[0]


def _cross_v2(layer, x0: Vec, x: Vec) -> Vec:
    if layer.rank == 0:  # DCNv2 eq. 1: x_0 ⊙ (W x_l + b) + x_l
        return add(mul(x0, linear(layer.W, x)), x)
    # eq. 3: sum_i G_i(x_l) [x_0 ⊙ (U_i tanh(C_i tanh(V_i^T x_l)) + b)] + x_l
    U, V, C, bias = _t(layer.U), _t(layer.V), _t(layer.C), _t(layer.b)  # U, V (d, K, r); C (K, r, r)
    K, r, d = layer.experts, layer.rank, len(x)
    G = softmax(matvec(_t(layer.gate.weight), x))
    total = [0.0] * d
    for i in range(K):
        v = [math.tanh(sum(V[j][i][s] * x[j] for j in range(d))) for s in range(r)]
        c = [math.tanh(sum(C[i][s][t] * v[t] for t in range(r))) for s in range(r)]
        u = [sum(U[j][i][s] * c[s] for s in range(r)) for j in range(d)]
        total = add(total, scale(G[i], mul(x0, add(u, bias))))
    return add(total, x)


def ref_dcnv2(model, batch, b):  # Wang et al. 2021, Fig. 1: stacked or parallel
    x0 = flat(fields(model.embedding, batch, b))
    x = x0
    for layer in model.cross.layers:
        x = _cross_v2(layer, x0, x)
    if model.stacked:
        return mlp(model.tower, x)[0]
    return linear(model.fc, x + mlp(model.tower, x0))[0]


def ref_ipnn(model, batch, b):  # Qu et al. III-B: z and p_ij = <f_i, f_j> feed the first layer
    e = fields(model.embedding, batch, b)
    return mlp(model.tower, flat(e) + [dot(e[i], e[j]) for i, j in pairs(F)])[0]


def ref_opnn(model, batch, b):  # Qu et al. III-C: p = f_Σ f_Σ^T, f_Σ = sum_i f_i
    e = fields(model.embedding, batch, b)
    f_sum = add(*e)
    return mlp(model.tower, flat(e) + [f_sum[r] * f_sum[c] for r in range(D) for c in range(D)])[0]


def _bilinear(layer, e: list[Vec]) -> list[Vec]:
    """FiBiNET: p_ij = (v_i · W) ⊙ v_j with W shared / of field i / of pair (i, j)."""
    W = _t(layer.W)
    out = []
    for n, (i, j) in enumerate(pairs(len(e))):
        kind = layer.bilinear_type
        Wk = W[0] if kind is BilinearType.FIELD_ALL else W[i] if kind is BilinearType.FIELD_EACH else W[n]
        out.append(mul(vecmat(e[i], Wk), e[j]))
    return out


def ref_fibinet(model, batch, b):  # Huang et al.: SENET, two bilinear layers, DNN, + linear part
    e = fields(model.embedding, batch, b)
    Z = [sum(v) / len(v) for v in e]  # squeeze: mean over the embedding
    A = relu(matvec(_t(model.senet.W2.weight), relu(matvec(_t(model.senet.W1.weight), Z))))  # excitation
    v = [scale(a, ei) for a, ei in zip(A, e, strict=True)]  # re-weight
    c = flat(_bilinear(model.bilinear_e, e)) + flat(_bilinear(model.bilinear_v, v))
    return first_order(model.first_order, batch, b) + mlp(model.tower, c)[0]


def ref_autoint(model, batch, b):  # Song et al.: interacting layers (eqs. 5-9), output eq. 10 (+ AutoInt+ MLP)
    e = fields(model.embedding, batch, b)
    x = e
    for layer in model.interacting:
        x = attention(layer, x, scaled=False)
    y = linear(model.fc, flat(x))[0]
    if model.tower is not None:
        y += mlp(model.tower, flat(e))[0]
    return y


def ref_difm(model, batch, b):  # Lu et al.: m_x = m_vec + m_bit re-weights the FM's w_i and v_i
    e = fields(model.embedding, batch, b)
    m_vec = matvec(_t(model.P_vec.weight), flat(attention(model.vector_wise, e, scaled=True)))
    m_bit = matvec(_t(model.P_bit.weight), mlp(model.tower, flat(e)))
    m = add(m_vec, m_bit)
    w = [v[0] for v in fields(model.first_order.embedding, batch, b)]  # w_i x_i per field
    linear_part = _t(model.first_order.bias)[0] + sum(mi * wi for mi, wi in zip(m, w, strict=True))
    return linear_part + fm([scale(mi, ei) for mi, ei in zip(m, e, strict=True)])


def ref_pnn(model, batch, b):  # Qu et al. PNN*: z, p_ij = <f_i, f_j> and f_Σ f_Σ^T all feed the first layer
    e = fields(model.embedding, batch, b)
    f_sum = add(*e)
    inner = [dot(e[i], e[j]) for i, j in pairs(F)]
    outer = [f_sum[r] * f_sum[c] for r in range(D) for c in range(D)]
    return mlp(model.tower, flat(e) + inner + outer)[0]


def ref_deepcrossing(model, batch, b):  # Shan et al.: stacked x, units relu(x + W_1 relu(W_0 x + b_0) + b_1)
    x = flat(fields(model.embedding, batch, b))
    for unit in model.units:
        x = relu(add(x, linear(unit.W1, relu(linear(unit.W0, x)))))
    return linear(model.score, x)[0]


def _cin(cin, e: list[Vec]) -> Vec:
    """xDeepFM eqs. 6-7 as loops: X^k_h = sum_i sum_j W^{k,h}_ij (X^{k-1}_i ∘ X^0_j), p^k_h = sum_d X^k_{h,d};
    split-half: maps [0, H/2) go on, [H/2, H) are pooled (the last layer's are all pooled)."""
    x, p, n = e, [], len(cin.W)
    for k, Wk in enumerate(cin.W):
        W = _t(Wk)  # (H_k, H_{k-1}, m)
        xk = [[sum(W[h][i][j] * x[i][c] * e[j][c] for i in range(len(x)) for j in range(len(e)))
               for c in range(len(e[0]))] for h in range(len(W))]
        half = len(xk) // 2
        split = cin.split_half and k < n - 1
        p += [sum(row) for row in (xk[half:] if split else xk)]
        x = xk[:half] if split else xk
    return p


def ref_xdeepfm(model, batch, b):  # Lian et al. eq. 9: linear + w_cin^T p^+ + DNN
    e = fields(model.embedding, batch, b)
    cin = dot(_t(model.cin_out.weight)[0], _cin(model.cin, e))
    return first_order(model.first_order, batch, b) + cin + mlp(model.tower, flat(e))[0]


def _generator(net, z: Vec) -> Vec:
    """DynInt's two-layer generator net on the layer-normalised, flattened X_0."""
    return linear(net.out, relu(linear(net.hidden, _layer_norm(z, net.norm.eps))))


def ref_pin(model, batch, b):  # Yan & Li: PIN layers eqs. 3 (static), 4 (DA), 5/7/8 (DGP), 6/9/10 (DWP), output eq. 2
    e = fields(model.embedding, batch, b)
    h = model.pin.h
    n_f, d = len(e), len(e[0]) // h
    X0 = [e[f][k * d:(k + 1) * d] for k in range(h) for f in range(n_f)]  # row k F + f: block k of field f
    R = len(X0)
    z = flat(X0)
    X = X0
    for layer in model.pin.layers:
        kind = type(layer).__name__
        if kind == "LowRankPINLayer":  # W_i = U diag(1 + net(X_0)) V^T
            U, V = _t(layer.U), _t(layer.V)
            sigma = [1.0 + o for o in _generator(layer.sigma_net, z)]
            W = [[sum(U[r][k] * sigma[k] * V[s][k] for k in range(len(sigma))) for s in range(R)] for r in range(R)]
        elif kind == "WeightedPINLayer":  # (G ∘ W), G = Σ_p u_p v_p^T, u, v = net(X_0) + 1/sqrt(K)
            K = layer.K
            o = [a + 1 / math.sqrt(K) for a in _generator(layer.uv_net, z)]
            u, v = [o[p * R:(p + 1) * R] for p in range(K)], [o[(K + p) * R:(K + p + 1) * R] for p in range(K)]
            W = [[sum(u[p][r] * v[p][s] for p in range(K)) * w for s, w in enumerate(row)]
                 for r, row in enumerate(_t(layer.W))]
        else:
            W = _t(layer.W)
        M = [[sum(W[r][s] * X0[s][c] for s in range(R)) for c in range(d)] for r in range(R)]  # W X_0
        gate = ([2 / (1 + math.exp(-o)) for o in _generator(layer.gate_net, z)] if kind == "GatedPINLayer"
                else [1.0] * R)
        X = [[X[r][c] * M[r][c] * gate[r] + X[r][c] for c in range(d)] for r in range(R)]
    XL = [sum((X[k * n_f + f] for k in range(h)), []) for f in range(n_f)]  # fields back, (F, D)
    return _t(model.out.bias)[0] + sum(w * sum(x) for w, x in zip(_t(model.out.weight)[0], XL, strict=True))


REFERENCES: dict[str, Callable] = {
    "pnn": ref_pnn, "deepcrossing": ref_deepcrossing, "xdeepfm": ref_xdeepfm,
    "lr": ref_lr, "fm": ref_fm, "dnn": ref_dnn, "wdl": ref_wdl, "deepfm": ref_deepfm, "dcnv2": ref_dcnv2,
    "ipnn": ref_ipnn, "opnn": ref_opnn, "fibinet": ref_fibinet, "difm": ref_difm, "dcn": ref_dcn,
    "autoint": ref_autoint, "xdeepint": ref_pin, "dynint_da": ref_pin, "dynint_dgp": ref_pin,
    "dynint_dwp": ref_pin,
}


# ---- the multi-domain models: each sample through its own domain's parameters --------------------------
# Domain ids 0 <missing>, 1 <unseen>, then domains 2..5 (one, 3, absent from the batch).

DOMAIN_LAYOUT = replace(LAYOUT, n_domains=6)
DOMAIN_CONFIG = replace(CONFIG, multidomain=MultiDomainConfig(experts=2, expert_hidden=(4, 3), tower_hidden=(2,),
                                                              specific_experts=2, levels=2, aux_hidden=(3,)))
DOMAINS = (2, 5, 0, 2, 1)


def _domain_batch(seed: int = 0) -> Batch:
    return _batch(seed)._replace(domain=torch.tensor(DOMAINS))


def _post(tower: nn.Module, i: int, x: Vec) -> Vec:
    """Batch norm (evaluation: running statistics) where the tower has one, then relu."""
    for bn in (m for m in tower.post[i] if isinstance(m, nn.BatchNorm1d)):
        x = [(v - m) / math.sqrt(var + bn.eps) * g + beta for v, m, var, g, beta in
             zip(x, _t(bn.running_mean), _t(bn.running_var), _t(bn.weight), _t(bn.bias), strict=True)]
    return relu(x)


def own_linear(layer: nn.Module, x: Vec, d: int) -> Vec:
    """W_d x + b_d (DomainLinear); (W ⊙ W_d) x + (b + b_d), or the centre W x + b for ids 0, 1 (StarLinear)."""
    if isinstance(layer, DomainLinear):
        return add(matvec(_t(layer.weight[d]), x), _t(layer.bias[d]))
    assert isinstance(layer, StarLinear), f"{type(layer).__name__} where a per-domain layer belongs"
    if d < 2:
        return add(matvec(_t(layer.W), x), _t(layer.b))
    W, Wd = _t(layer.W), _t(layer.W_p[d - 2])
    return add(matvec([mul(r, rd) for r, rd in zip(W, Wd, strict=True)], x), add(_t(layer.b), _t(layer.b_p[d - 2])))


def own_mlp(tower: nn.Module, x: Vec, d: int) -> Vec:
    """A tower whose layers (and output layer, if any) are domain d's own."""
    for i, layer in enumerate(tower.layers):
        x = _post(tower, i, own_linear(layer, x, d))
    return x if tower.out is None else own_linear(tower.out, x, d)


def ref_shared_bottom(model, batch, b):  # Caruana: a shared bottom, then the row's own domain's tower
    d = int(batch.domain[b])
    return own_mlp(model.towers, mlp(model.bottom, flat(fields(model.embedding, batch, b))), d)[0]


def _mixed(w: Vec, experts: list[Vec]) -> Vec:
    return [sum(w[k] * e[j] for k, e in enumerate(experts)) for j in range(len(experts[0]))]


def ref_mmoe(model, batch, b):  # Ma et al.: h^d(sum_k g^d(x)_k f_k(x)), g^d = softmax(W_{g,d} x + b_{g,d})
    d, x = int(batch.domain[b]), flat(fields(model.embedding, batch, b))
    w = softmax(own_linear(model.gate.linear, x, d))
    return own_mlp(model.towers, _mixed(w, [mlp(e, x) for e in model.experts]), d)[0]


def ref_hmoe(model, batch, b):  # Li et al.: logit(sum_j w_ij σ(z_j)), z_j domain j's MMoE logit on this row
    i, x = int(batch.domain[b]), flat(fields(model.embedding, batch, b))
    experts = [mlp(e, x) for e in model.experts]
    js = [j for j in range(model.relation.n_domains) if j >= 2 or j == i]  # reserved ids: only the row's own
    z = [own_mlp(model.towers, _mixed(softmax(own_linear(model.gate.linear, x, j)), experts), j)[0] for j in js]
    r = own_mlp(model.relation.mlp, x, i)  # domain i's relation net: a score per domain
    p = sum(w * 1 / (1 + math.exp(-zj)) for w, zj in zip(softmax([r[j] for j in js]), z, strict=True))
    return math.log(p / (1 - p))


def ref_ple(model, batch, b):  # Tang et al.: CGC levels, the domain's and the shared module's gates, a tower
    d = int(batch.domain[b])
    x_d = x_s = flat(fields(model.embedding, batch, b))
    for level in model.levels:
        experts = [own_mlp(e, x_d, d) for e in level.specific] + [mlp(e, x_s) for e in level.shared]
        new_d = _mixed(softmax(own_linear(level.domain_gate.linear, x_d, d)), experts)
        if level.shared_gate is not None:
            x_s = _mixed(softmax(linear(level.shared_gate.linear, x_s)), experts)
        x_d = new_d
    return own_mlp(model.towers, x_d, d)[0]


def ref_star(model, batch, b):  # Sheng et al.: PN (eval: the domain's running statistics), star FCN, + aux
    d, x = int(batch.domain[b]), flat(fields(model.embedding, batch, b))
    pn = model.norm
    own = int(pn.tracked[d]) > 0  # a domain never updated in training: the statistics of all rows
    mu, var = (_t(pn.running_mean[d]), _t(pn.running_var[d])) if own else (_t(pn.shared_mean), _t(pn.shared_var))
    g, beta = _t(pn.gamma), _t(pn.beta)
    if d >= 2:
        g, beta = mul(g, _t(pn.gamma_p[d - 2])), add(beta, _t(pn.beta_p[d - 2]))
    z = [gj * (v - m) / math.sqrt(s + pn.eps) + bj for v, m, s, gj, bj in zip(x, mu, var, g, beta, strict=True)]
    s_m = own_mlp(model.fcn, z, d)[0]
    s_a = mlp(model.aux, _t(model.domain_embedding[d]) + z)[0]
    return s_m + s_a


DOMAIN_REFERENCES: dict[str, Callable] = {
    "shared_bottom": ref_shared_bottom, "mmoe": ref_mmoe, "hmoe": ref_hmoe, "ple": ref_ple, "star": ref_star,
}


def _randomised_domains(model: nn.Module) -> nn.Module:
    """:func:`_randomised`, and PN's running statistics redrawn, domain 2 marked never updated."""
    model = _randomised(model)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, PartitionedNorm):
                for buf in (m.running_mean, m.shared_mean):
                    buf.copy_(torch.randn(buf.shape, generator=g, dtype=torch.float64) * 0.3)
                for buf in (m.running_var, m.shared_var):
                    buf.copy_(torch.rand(buf.shape, generator=g, dtype=torch.float64) + 0.5)
                m.tracked.copy_(torch.tensor([3, 1, 0, 5, 2, 4]))
    return model


def _check(model: nn.Module, ref: Callable, batch: Batch | None = None) -> None:
    batch = batch or _batch()
    with torch.no_grad():
        got = model(batch)
    want = torch.tensor([ref(model, batch, b) for b in range(B)], dtype=torch.float64)
    assert got.shape == (B,)
    assert want.std() > 1e-2  # the rows differ: a constant output would not be checked
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_every_registered_model_has_a_formula_test() -> None:
    # A new model must bring its reference here (the rule in this module's docstring).
    assert set(REFERENCES) | set(DOMAIN_REFERENCES) == set(MODELS)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_model_equals_its_formula(name: str) -> None:
    model = _randomised(build_model(name, layout=LAYOUT, config=CONFIG))
    _check(model, REFERENCES[name])


@pytest.mark.parametrize("batch_norm", [False, True])
@pytest.mark.parametrize("name", list(DOMAIN_REFERENCES))
def test_multidomain_model_equals_its_formula(name: str, batch_norm: bool) -> None:
    cfg = replace(DOMAIN_CONFIG, batch_norm=batch_norm, dropout=0.3 if batch_norm else 0.0)
    model = _randomised_domains(build_model(name, layout=DOMAIN_LAYOUT, config=cfg))
    _check(model, DOMAIN_REFERENCES[name], _domain_batch())


@pytest.mark.parametrize("name", ["dnn", "deepfm", "dcnv2", "fibinet"])
def test_tower_with_batch_norm_equals_its_formula(name: str) -> None:
    cfg = replace(CONFIG, batch_norm=True, dropout=0.3)  # eval mode: dropout off, BN on running statistics
    model = _randomised(build_model(name, layout=LAYOUT, config=cfg))
    assert sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) == len(cfg.hidden)
    _check(model, REFERENCES[name])


@pytest.mark.parametrize("structure", list(CrossStructure))
@pytest.mark.parametrize("rank", [0, 2])
def test_dcnv2_structures_and_mixture_equal_the_formula(structure: CrossStructure, rank: int) -> None:
    cfg = replace(CONFIG, cross_structure=structure, cross_rank=rank, cross_experts=3)
    _check(_randomised(build_model("dcnv2", layout=LAYOUT, config=cfg)), ref_dcnv2)


@pytest.mark.parametrize("kind", list(BilinearType))
def test_fibinet_bilinear_types_equal_the_formula(kind: BilinearType) -> None:
    cfg = replace(CONFIG, bilinear_type=kind)
    _check(_randomised(build_model("fibinet", layout=LAYOUT, config=cfg)), ref_fibinet)


def test_autoint_plus_equals_the_formula() -> None:
    cfg = replace(CONFIG, autoint_plus=True)
    _check(_randomised(build_model("autoint", layout=LAYOUT, config=cfg)), ref_autoint)


@pytest.mark.parametrize("split_half", [False, True])
def test_xdeepfm_cin_split_half_and_direct_equal_the_formula(split_half: bool) -> None:
    # three CIN layers so that layer 2 and 3 read a split (or whole) X^{k-1}; 4 and 6 even for split-half
    cfg = replace(CONFIG, cin_layers=(4, 6, 3), cin_split_half=split_half)
    model = _randomised(build_model("xdeepfm", layout=LAYOUT, config=cfg), scale=0.3)
    assert model.cin.output_dim == (2 + 3 + 3 if split_half else 4 + 6 + 3)
    _check(model, ref_xdeepfm)


def test_deepcrossing_units_equal_the_formula() -> None:
    cfg = replace(CONFIG, residual_units=(7, 5))
    _check(_randomised(build_model("deepcrossing", layout=LAYOUT, config=cfg)), ref_deepcrossing)


def test_embedding_layout_against_hand_computed_rows() -> None:
    """Three categorical fields of sizes 3, 5, 4 live at rows 0-2, 3-7 and 8-11; the sequences at 12-17
    and 18-20. The table row r holds (r, 10 r, 100 r), so each looked-up row names itself."""
    emb = FieldEmbedding(layout=LAYOUT, dim=3).double()
    with torch.no_grad():
        r = torch.arange(21, dtype=torch.float64)
        emb.table.weight.copy_(torch.stack([r, 10 * r, 100 * r], dim=1))
        emb.num_weight.copy_(torch.tensor([[1.0, 2.0, 3.0]]))
    batch = Batch(cat=torch.tensor([[2, 4, 3]]), num=torch.tensor([[0.5]], dtype=torch.float64),
                  seq=(torch.tensor([[1, 5, 0]]), torch.tensor([[2, 2]])), label=torch.zeros(1))
    out = emb(batch)[0]
    # a: row 2; b: 3 + 4 = row 7; c: 3 + 5 + 3 = row 11; x: 0.5 x (1, 2, 3);
    # s: mean of rows 12 + 1 = 13 and 12 + 5 = 17 -> 15; t: sum of rows 18 + 2 = 20 twice -> 40
    want = torch.tensor([[2, 20, 200], [7, 70, 700], [11, 110, 1100], [0.5, 1, 1.5],
                         [15, 150, 1500], [40, 400, 4000]], dtype=torch.float64)
    torch.testing.assert_close(out, want, rtol=0, atol=0)


# ---- APG in a backbone, and its served form --------------------------------------------------------

def _layer_norm(z: Vec, eps: float) -> Vec:
    mean = sum(z) / len(z)
    var = sum((a - mean) ** 2 for a in z) / len(z)
    return [(a - mean) / math.sqrt(var + eps) for a in z]


def _apg_layer(layer, x: Vec, z: Vec) -> Vec:
    """APG v4 / v5 (eqs. 5-7): S_i = reshape(G(LayerNorm(z_i))), y = U S_i V x (+ W_0 x) + (b or b_i).

    G is the single-layer generator (generator_hidden = ()) on the layer-normalised condition; v5's
    U = U^l U^r and V = V^l V^r are multiplied out here, in the reference, from the four factors.
    """
    K = layer.config.K
    g = linear(layer.generator.net.out, _layer_norm(z, layer.generator.norm.eps))  # [vec(S_i); b_i]
    S = [g[r * K:(r + 1) * K] for r in range(K)]
    if hasattr(layer, "U_l"):
        U = [vecmat(row, _t(layer.U_r)) for row in _t(layer.U_l)]  # (N, K)
        V = [vecmat(row, _t(layer.V_r)) for row in _t(layer.V_l)]  # (K, M)
    else:
        U, V = _t(layer.U), _t(layer.V)
    y = matvec(U, matvec(S, matvec(V, x)))
    if layer.config.static_weight:
        y = add(y, matvec(_t(layer.W0), x))
    b = g[K * K:] if layer.config.generate_bias else _t(layer.bias)
    return add(y, b)


def _apg_tower(tower, x: Vec, z: Vec | None) -> float:
    for layer in tower.layers:
        x = relu(_apg_layer(layer, x, x if z is None else z))
    return linear(tower.out, x)[0]


@pytest.mark.parametrize("version", [APGVersion.V4, APGVersion.V5])
@pytest.mark.parametrize(("generate_bias", "static_weight"), [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("condition", [ConditionMode.GROUP, ConditionMode.SELF])
def test_deepfm_with_apg_equals_the_formula_and_so_does_its_served_form(
        version: APGVersion, generate_bias: bool, static_weight: bool, condition: ConditionMode) -> None:
    apg = APGConfig(version=version, rank=2, overparam_dim=3, generate_bias=generate_bias,
                    static_weight=static_weight, condition=condition,
                    condition_fields=("b", "x") if condition is ConditionMode.GROUP else ())
    cfg = replace(CONFIG, tower_layer=TowerLayer.APG, apg=apg)
    model = _randomised(build_model("deepfm", layout=LAYOUT, config=cfg))

    def ref(model, batch, b):
        e = fields(model.embedding, batch, b)
        z = e[1] + e[3] if condition is ConditionMode.GROUP else None  # z = [e_b; e_x]
        return first_order(model.first_order, batch, b) + fm(e) + _apg_tower(model.tower, flat(e), z)

    _check(model, ref)
    served = model.for_inference()
    if version is APGVersion.V5:
        assert served is not model and not any(hasattr(m, "U_l") for m in served.modules())
    _check(served, ref if version is APGVersion.V4 else
           lambda served_model, batch, b: ref(model, batch, b))  # the served model gives the training formula


def test_collapse_carries_a_nonzero_static_bias() -> None:
    apg = APGConfig(version=APGVersion.V5, rank=2, overparam_dim=3, condition=ConditionMode.SELF)
    model = _randomised(build_model("dnn", layout=LAYOUT, config=replace(CONFIG, tower_layer=TowerLayer.APG,
                                                                         apg=apg)))
    layer = model.tower.layers[0]
    assert layer.bias.abs().min() > 0  # the randomised static bias is non-zero everywhere
    served = layer.collapse()
    torch.testing.assert_close(served.bias, layer.bias, rtol=0, atol=0)
    x = torch.randn(B, layer.in_features, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(served(x), layer(x), rtol=1e-10, atol=1e-10)


# ---- AdaSparse in a backbone, and its served form --------------------------------------------------

def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _adasparse_layer(layer, x: Vec, e_d: Vec) -> tuple[Vec, Vec]:
    """Yang et al. eqs. (2)-(8): v = W_p [e_d; h] + b_p, π by the form, y = W (h ⊙ π) + b; returns (y, π)."""
    c, alpha = layer.config, float(layer.alpha.value)
    v = add(matvec(_t(layer.pruner.weight), e_d + x), _t(layer.pruner.bias))
    if c.form is FactorForm.BINARIZATION:
        pi = [1.0 if _sig(alpha * vj) - c.epsilon > 0 else 0.0 for vj in v]
    elif c.form is FactorForm.SCALING:
        pi = [c.beta * _sig(vj) for vj in v]
    else:
        pi = [c.beta * _sig(alpha * vj) if c.beta * _sig(alpha * vj) - c.epsilon > 0 else 0.0 for vj in v]
    return linear(layer.linear, mul(x, pi)), pi


@pytest.mark.parametrize("form", list(FactorForm))
@pytest.mark.parametrize("name", ["dnn", "dcnv2"])
def test_adasparse_backbones_equal_the_formula_and_so_does_the_served_form(form: FactorForm, name: str) -> None:
    cfg = replace(CONFIG, tower_layer=TowerLayer.ADASPARSE,
                  adasparse=AdaSparseConfig(form=form, domain_dim=2, schedule_steps=10))
    model = _randomised(build_model(name, layout=DOMAIN_LAYOUT, config=cfg))
    layers = list(model.tower.layers)
    for layer in layers:
        layer.alpha.advance(10)  # α = 5: sharp enough that the random pruners prune some inputs
    factors: list[float] = []

    def tower(t, x: Vec, e_d: Vec) -> Vec:
        for i, layer in enumerate(t.layers):
            y, pi = _adasparse_layer(layer, x, e_d)
            factors.extend(pi)
            x = _post(t, i, y)
        return x if t.out is None else linear(t.out, x)

    def ref(model, batch, b):
        e_d = _t(model.condition.table.weight[int(batch.domain[b])])
        x0 = flat(fields(model.embedding, batch, b))
        if name == "dnn":
            return tower(model.tower, x0, e_d)[0]
        x = x0
        for layer in model.cross.layers:  # DCNv2 eq. (1), the parallel structure (the default)
            x = _cross_v2(layer, x0, x)
        return linear(model.fc, x + tower(model.tower, x0, e_d))[0]

    _check(model, ref, _domain_batch())
    if form is not FactorForm.SCALING:
        assert 0.0 in factors and any(f > 0 for f in factors)  # both pruned and kept inputs were checked
    served = model.for_inference()
    assert served is not model and all(isinstance(m, PrunedLinear) for m in served.tower.layers) == (
        form is not FactorForm.SCALING)
    assert served.state_dict().keys() == model.state_dict().keys()
    _check(served, lambda _m, batch, b: ref(model, batch, b), _domain_batch())


# ---- the PIN block's sub-spaces and depth -----------------------------------------------------------

@pytest.mark.parametrize("name", ["xdeepint", "dynint_da", "dynint_dgp", "dynint_dwp"])
@pytest.mark.parametrize(("layers", "subspaces"), [(0, 1), (1, 3), (3, 3)])
def test_pin_models_with_subspaces_and_depths_equal_the_formula(name: str, layers: int, subspaces: int) -> None:
    cfg = replace(CONFIG, pin=PINConfig(layers=layers, subspaces=subspaces, dgp_rank=4, dwp_rank=3))
    _check(_randomised(build_model(name, layout=LAYOUT, config=cfg), scale=0.3), ref_pin)
