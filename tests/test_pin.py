"""The PIN block and DynInt's dynamic layers: hand-checkable algebra and the equivalences the paper states.

(The full models against their formula, sample by sample, are in tests/test_formulas.py.)
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.config import ModelConfig
from adactr.models.registry import build_model
from adactr.nn.adaptivity import measure_adaptivity
from adactr.nn.apg import ConditionNorm
from adactr.nn.penalty import collect_penalties
from adactr.nn.pin import (
    PIN,
    GatedPINLayer,
    LowRankPINLayer,
    PINConfig,
    PINDynamic,
    PINLayer,
    WeightedPINLayer,
    merge_subspaces,
    pairwise_abs_cosine,
    split_subspaces,
)
from adactr.train.trainer import training_loss

LAYOUT = FieldLayout(names=("a", "b", "c", "d"), cat_sizes=(5, 7, 4, 6), n_num=0, seq_sizes=(), seq_pooling=())


def _batch(n: int = 8, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, s, (n,), generator=g) for s in LAYOUT.cat_sizes], dim=1)
    return Batch(cat=cat, num=torch.zeros(n, 0), seq=(), label=torch.randint(0, 2, (n,), generator=g).float())


# ---- xDeepInt's PIN: the algebra by hand ---------------------------------------------------------------

def test_one_field_one_dim_pin_is_the_product_of_one_plus_w_x0() -> None:
    # F = D = h = 1: each layer is x <- x (w x0) + x = x (1 + w x0), so x_L = x0 prod_l (1 + w_l x0)
    pin = PIN(num_fields=1, embedding_dim=1, config=PINConfig(layers=3))
    ws = [0.5, -2.0, 3.0]
    with torch.no_grad():
        for layer, w in zip(pin.layers, ws, strict=True):
            layer.W.fill_(w)
    x0 = torch.tensor([[[2.0]]])
    assert pin(x0).item() == pytest.approx(2.0 * (1 + 0.5 * 2) * (1 - 2.0 * 2) * (1 + 3.0 * 2))  # 2*2*(-3)*7 = -84


def test_zero_weights_give_the_input_map_and_zero_layers_are_lr_on_embedding_sums() -> None:
    pin = PIN(num_fields=3, embedding_dim=4, config=PINConfig(layers=2, subspaces=2))
    with torch.no_grad():
        for layer in pin.layers:
            layer.W.zero_()
    x0 = torch.randn(5, 3, 4)
    torch.testing.assert_close(pin(x0), x0, rtol=0, atol=0)

    cfg = ModelConfig(embedding_dim=4, pin=PINConfig(layers=0))
    model = build_model("xdeepint", layout=LAYOUT, config=cfg).eval()
    batch = _batch()
    e = model.embedding(batch)  # (B, F, D)
    want = e.sum(-1) @ model.out.weight[0] + model.out.bias  # Σ_f w_f Σ_d e_fd + b
    torch.testing.assert_close(model(batch), want)


@pytest.mark.parametrize("dynamic", list(PINDynamic))
@pytest.mark.parametrize("layers", [1, 2, 3])
def test_the_logit_is_a_polynomial_of_degree_layers_plus_one_in_the_embeddings(dynamic: PINDynamic,
                                                                              layers: int) -> None:
    # Scale X_0 by t (the generators see X_0 through a scale-free LayerNorm, so their outputs do not move):
    # the logit is a polynomial of degree L + 1 in t, so its (L + 2)-th finite difference is zero and its
    # (L + 1)-th is not. A layer fed X_{l-1} instead of X_0 would double the degree.
    cfg = PINConfig(layers=layers, subspaces=2, dynamic=dynamic, dgp_rank=3, dwp_rank=2)
    pin = PIN(num_fields=3, embedding_dim=4, config=cfg).double()
    out = nn.Linear(3, 1).double()
    x0 = torch.randn(2, 3, 4, dtype=torch.float64)

    def logit(t: float) -> torch.Tensor:
        return out(pin(t * x0).sum(-1)).squeeze(-1)  # (2,)

    ts = [0.5 + 0.25 * i for i in range(layers + 3)]
    values = torch.stack([logit(t) for t in ts])  # (L + 3, 2)
    diffs = values
    for _ in range(layers + 1):
        diffs = diffs[1:] - diffs[:-1]
    assert diffs.abs().min() > 1e-8  # degree L + 1 is reached
    torch.testing.assert_close(diffs[1:] - diffs[:-1], torch.zeros_like(diffs[1:]), rtol=0, atol=1e-9)


def test_subspace_split_is_the_official_order_and_merge_inverts_it() -> None:
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(2, 3, 4)  # F = 3, D = 4
    s = split_subspaces(x, 2)  # (2, 6, 2): row k F + f = block k of field f
    assert s.shape == (2, 6, 2)
    torch.testing.assert_close(s[0, 0], x[0, 0, :2])  # k 0, f 0
    torch.testing.assert_close(s[0, 2], x[0, 2, :2])  # k 0, f 2
    torch.testing.assert_close(s[0, 3], x[0, 0, 2:])  # k 1, f 0
    torch.testing.assert_close(merge_subspaces(s, 2), x, rtol=0, atol=0)
    torch.testing.assert_close(split_subspaces(x, 1), x, rtol=0, atol=0)  # h = 1: no split


def test_field_major_ordering_is_the_same_pin_with_w_permuted() -> None:
    # TorchRec's reshape order (row f h + k) computes the same function once W is permuted: P W P^T
    F, D, h = 3, 4, 2
    pin = PIN(num_fields=F, embedding_dim=D, config=PINConfig(layers=2, subspaces=h)).double()
    x0 = torch.randn(5, F, D, dtype=torch.float64)
    perm = torch.tensor([k * F + f for f in range(F) for k in range(h)])  # field-major row -> official row
    x0_fm = x0.reshape(5, F * h, D // h)  # row f h + k
    x = x0_fm
    for layer in pin.layers:
        W = layer.W[perm][:, perm]  # P W P^T
        x = x * (W @ x0_fm) + x
    torch.testing.assert_close(x.reshape(5, F, D), pin(x0))


def test_bitwise_subspaces_mix_every_entry_pair() -> None:
    # h = D: every row is one scalar, and W (F D x F D) reaches every (field, bit) pair
    pin = PIN(num_fields=2, embedding_dim=3, config=PINConfig(layers=1, subspaces=3))
    assert pin.layers[0].W.shape == (6, 6)
    x0 = torch.zeros(1, 2, 3)
    x0[0, 1, 2] = 1.0  # one bit on: field 1, column 2 = official row k F + f = 2*2 + 1 = 5
    with torch.no_grad():
        pin.layers[0].W.zero_()
        pin.layers[0].W[5, 5] = 2.0
    assert pin(x0)[0, 1, 2].item() == pytest.approx(1.0 * (1 + 2.0))


# ---- DynInt's dynamic layers ---------------------------------------------------------------------------

def _layer(cls, rows: int = 6, **cfg) -> nn.Module:
    return cls(rows=rows, cond_dim=rows * 2, config=PINConfig(**cfg)).double()


def test_da_with_a_zeroed_gate_net_is_the_static_pin_bit_for_bit() -> None:
    da = _layer(GatedPINLayer)
    static = _layer(PINLayer)
    with torch.no_grad():
        static.W.copy_(da.W)
        da.gate_net.out.weight.zero_()
        da.gate_net.out.bias.zero_()
    x0, x = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(4, 6, 2, dtype=torch.float64)
    torch.testing.assert_close(da.generated(x, x0)["gate"], torch.ones(4, 6, dtype=torch.float64))
    torch.testing.assert_close(da(x, x0), static(x, x0), rtol=0, atol=0)


@pytest.mark.parametrize("cls", [GatedPINLayer, LowRankPINLayer, WeightedPINLayer])
def test_x0_gets_no_gradient_through_the_generator(cls) -> None:
    # The paper blocks X_0's gradient from the generator nets: X_0's gradient equals the one with the
    # generated tensors precomputed as constants
    layer = _layer(cls, dgp_rank=3, orthogonal=0.0)
    x0 = torch.randn(4, 6, 2, dtype=torch.float64, requires_grad=True)
    layer(x0, x0).sum().backward()
    got = x0.grad.clone()
    fixed = {k: v.detach() for k, v in layer.generated(x0, x0).items()}
    layer.generated = lambda x, x0_: fixed  # the same layer with constant generated tensors
    x0.grad = None
    layer(x0, x0).sum().backward()
    torch.testing.assert_close(x0.grad, got)


def test_dgp_low_rank_equals_the_dense_per_instance_matrix() -> None:
    dgp = _layer(LowRankPINLayer, dgp_rank=3)
    x0, x = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(4, 6, 2, dtype=torch.float64)
    sigma = dgp.generated(x, x0)["sigma"]  # (B, K)
    W = dgp.U @ torch.diag_embed(sigma) @ dgp.V.T  # (B, F', F'): eq. (7), materialised
    torch.testing.assert_close(dgp(x, x0), x * (W @ x0) + x)


def test_dgp_with_identity_factors_is_a_per_instance_diagonal_pin() -> None:
    dgp = _layer(LowRankPINLayer, dgp_rank=6)
    with torch.no_grad():
        dgp.U.copy_(torch.eye(6))
        dgp.V.copy_(torch.eye(6))
    x0, x = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(4, 6, 2, dtype=torch.float64)
    sigma = dgp.generated(x, x0)["sigma"]  # (B, 6)
    torch.testing.assert_close(dgp(x, x0), x * (sigma.unsqueeze(-1) * x0) + x)


def test_dwp_vectorised_equals_the_dense_hadamard_weighting() -> None:
    dwp = _layer(WeightedPINLayer, dwp_rank=3)
    x0, x = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(4, 6, 2, dtype=torch.float64)
    g = dwp.generated(x, x0)
    G = g["u"].transpose(1, 2) @ g["v"]  # Σ_p u_p v_p^T: (B, F', F')
    torch.testing.assert_close(dwp(x, x0), x * ((G * dwp.W) @ x0) + x)


def test_dwp_with_unit_weighting_is_the_static_pin_and_starts_near_it() -> None:
    dwp = _layer(WeightedPINLayer, dwp_rank=1)
    static = _layer(PINLayer)
    with torch.no_grad():
        static.W.copy_(dwp.W)
        dwp.uv_net.out.weight.zero_()
        dwp.uv_net.out.bias.zero_()  # u = v = 1/sqrt(1) = 1
    x0, x = torch.randn(4, 6, 2, dtype=torch.float64), torch.randn(4, 6, 2, dtype=torch.float64)
    torch.testing.assert_close(dwp(x, x0), static(x, x0))
    # At initialisation G = Σ_p u_p v_p^T is 1 on average for every K (the paper's 1/K offset gives 1/K):
    # exactly with a zeroed output layer, and over fresh layers and instances with the Glorot one
    for K in (1, 2, 4):
        zeroed = _layer(WeightedPINLayer, rows=10, dwp_rank=K)
        with torch.no_grad():
            zeroed.uv_net.out.weight.zero_()
        g = zeroed.generated(x0, torch.randn(64, 10, 2, dtype=torch.float64))
        torch.testing.assert_close(g["u"].transpose(1, 2) @ g["v"], torch.ones(64, 10, 10, dtype=torch.float64))
        means = []
        for seed in range(20):
            torch.manual_seed(seed)
            fresh = _layer(WeightedPINLayer, rows=10, dwp_rank=K)
            g = fresh.generated(x0, torch.randn(64, 10, 2, dtype=torch.float64))
            means.append(float((g["u"].transpose(1, 2) @ g["v"]).mean().detach()))
        assert sum(means) / len(means) == pytest.approx(1.0, abs=0.15)


class _LargestTensor(TorchDispatchMode):
    """The largest number of elements of any tensor an operator returns."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("dynamic", [PINDynamic.DGP, PINDynamic.DWP])
def test_no_batch_of_per_instance_matrices_is_ever_made(dynamic: PINDynamic) -> None:
    # §3.5: B F' F' per-instance matrices are what the low-rank paradigms avoid (forward and backward)
    B, F, D = 32, 40, 2
    pin = PIN(num_fields=F, embedding_dim=D, config=PINConfig(layers=2, dynamic=dynamic, dgp_rank=4, dwp_rank=2))
    x0 = torch.randn(B, F, D, requires_grad=True)
    with _LargestTensor() as rec:
        with collect_penalties() as terms:
            y = pin(x0).sum()
        (y + sum(terms.values())).backward()
    assert rec.largest < B * F * F // 4  # the biggest is (B, K, F', d') for DWP, (F', F') for W


# ---- the orthogonal penalty (eqs. 11, 12) through the loss-term seam --------------------------------------

def test_pairwise_abs_cosine_by_hand() -> None:
    eye = torch.eye(3)
    assert float(pairwise_abs_cosine(eye)) == 0.0  # orthonormal
    same = torch.tensor([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])
    assert float(pairwise_abs_cosine(same)) == pytest.approx(3.0)  # K (K - 1) / 2 pairs of cos 1
    v = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # cos 45° = 0.7071, sign ignored
    assert float(pairwise_abs_cosine(v)) == pytest.approx(math.sqrt(0.5))
    assert float(pairwise_abs_cosine(torch.tensor([[-3.0, 0.0], [2.0, 2.0]]))) == pytest.approx(math.sqrt(0.5))


def test_the_training_loss_is_bce_plus_the_orthogonal_penalty_of_every_layer() -> None:
    cfg = ModelConfig(embedding_dim=4, pin=PINConfig(layers=2, dgp_rank=3, orthogonal=0.01))
    batch = _batch()
    dgp = build_model("dynint_dgp", layout=LAYOUT, config=cfg).train()
    bce = nn.functional.binary_cross_entropy_with_logits(dgp(batch), batch.label)
    penalty = sum(pairwise_abs_cosine(layer.U.T) + pairwise_abs_cosine(layer.V.T) for layer in dgp.pin.layers)
    torch.testing.assert_close(training_loss(dgp, batch), bce + 0.01 * penalty)  # not bce - penalty (eq. 11's sign)

    dwp = build_model("dynint_dwp", layout=LAYOUT, config=cfg).train()
    x0 = split_subspaces(dwp.embedding(batch), 1)
    want = 0.0
    for layer in dwp.pin.layers:
        g = layer.generated(x0, x0)
        want = want + 0.01 * (pairwise_abs_cosine(g["u"]) + pairwise_abs_cosine(g["v"])).mean()  # eq. 12, batch mean
    bce = nn.functional.binary_cross_entropy_with_logits(dwp(batch), batch.label)
    torch.testing.assert_close(training_loss(dwp, batch), bce + want)
    # xDeepInt and DA add nothing; nor does a forward outside a training step
    xdi = build_model("xdeepint", layout=LAYOUT, config=cfg)
    torch.testing.assert_close(training_loss(xdi, batch),
                               nn.functional.binary_cross_entropy_with_logits(xdi(batch), batch.label))
    with collect_penalties() as terms:
        build_model("dynint_dgp", layout=LAYOUT, config=replace(cfg, pin=replace(cfg.pin, orthogonal=0.0)))(batch)
    assert terms == {}


# ---- adaptivity, configuration -------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "tensors"), [("dynint_da", {"gate"}), ("dynint_dgp", {"sigma"}),
                                               ("dynint_dwp", {"u", "v"})])
def test_every_dynamic_layer_reports_its_adaptivity(name: str, tensors: set[str]) -> None:
    cfg = ModelConfig(embedding_dim=4, pin=PINConfig(layers=2))
    model = build_model(name, layout=LAYOUT, config=cfg)
    report = measure_adaptivity(model, [_batch(64)])
    assert set(report) == {"pin.layers.0", "pin.layers.1"}
    for part in report.values():
        assert set(part) == tensors
        assert all(0.01 < v["adaptivity"] < 10 for v in part.values())  # a normalised X_0: the layers adapt
    assert measure_adaptivity(build_model("xdeepint", layout=LAYOUT, config=cfg), [_batch(64)]) == {}


def test_without_normalisation_the_gates_of_a_fresh_model_barely_vary() -> None:
    # The APG lesson, for DynInt: with embeddings at rms 1e-4 (the other models' initialisation, or an
    # embedding L2 that shrinks them), a generator fed them raw gives every instance the same gate; the
    # normalised input (the default) makes them vary from the start
    spreads = {}
    for norm in (ConditionNorm.NONE, ConditionNorm.LAYER):
        cfg = ModelConfig(embedding_dim=4, embedding_init_std=1e-4, pin=PINConfig(layers=1, condition_norm=norm))
        model = build_model("dynint_da", layout=LAYOUT, config=cfg)
        spreads[norm] = measure_adaptivity(model, [_batch(64)])["pin.layers.0"]["gate"]["adaptivity"]
    assert spreads[ConditionNorm.NONE] < 1e-3 < 0.05 < spreads[ConditionNorm.LAYER]


def test_bad_pin_settings_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="subspaces=3 must divide model.embedding_dim=4"):
        build_model("xdeepint", layout=LAYOUT, config=ModelConfig(embedding_dim=4, pin=PINConfig(subspaces=3)))
    with pytest.raises(ConfigError, match="contradicts the model"):
        build_model("dynint_da", layout=LAYOUT,
                    config=ModelConfig(embedding_dim=4, pin=PINConfig(dynamic=PINDynamic.DWP)))
    # xdeepint with a dynamic layer asked for is that DynInt variant (the block's option)
    model = build_model("xdeepint", layout=LAYOUT, config=ModelConfig(embedding_dim=4,
                                                                       pin=PINConfig(dynamic=PINDynamic.DWP)))
    assert all(isinstance(m, WeightedPINLayer) for m in model.pin.layers)
    assert PINConfig().dgp_K(10) == 8 and PINConfig().dgp_K(624) == 63 and PINConfig().dgp_K(4) == 4
