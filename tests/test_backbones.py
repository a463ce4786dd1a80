"""Tests for the interaction backbones: PNN (IPNN, OPNN, PNN*), FiBiNET, DIFM, DCN (v1), AutoInt, DeepCrossing
and xDeepFM.

Blocks get hand-computable goldens (the arithmetic is in the comments); models get the contract every
registered model has (shape (B,), finite, gradients, B = 1, the layer-factory and condition seams) and
one equivalence test each where the paper gives a formula to check against. The CLI trains every new
model for one epoch on the click-world fixture.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from adactr.cli import main
from adactr.data.schema import FieldLayout, Pooling
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.autoint import AutoInt
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.dcn import DCN
from adactr.models.deepcrossing import ResidualUnit
from adactr.models.difm import DIFM
from adactr.models.fibinet import FiBiNET
from adactr.models.pnn import PNN, Product
from adactr.models.registry import MODELS, build_model
from adactr.nn.apg import APGLinear
from adactr.nn.interaction import (
    CIN,
    BilinearInteraction,
    BilinearType,
    CrossLayerV1,
    CrossNet,
    InnerProduct,
    MultiHeadSelfAttention,
    OuterProduct,
    SENet,
)
from adactr.nn.mlp import Linear

# 3 categorical fields, 2 numerical, 1 mean-pooled sequence: F = 6 fields, D = 4.
LAYOUT = FieldLayout(names=("a", "b", "c", "x", "y", "s"), cat_sizes=(5, 7, 4), n_num=2, seq_sizes=(6,),
                     seq_pooling=(Pooling.MEAN,))
F, D = 6, 4
P = F * (F - 1) // 2  # 15 field pairs
# Larger init than the default 1e-4 so that gradients through the embeddings are clearly non-zero.
CONFIG = ModelConfig(embedding_dim=D, embedding_init_std=0.1, hidden=(8, 4), cross_layers=2,
                     attention_heads=2, attention_dim=3, attention_layers=2, senet_reduction=3)
PLUS = replace(CONFIG, autoint_plus=True)
# DeepCrossing: two units 24 -> 8 -> 24 and 24 -> 4 -> 24; xDeepFM: a split-half CIN of 4 and 2 maps
DC = replace(CONFIG, residual_units=(8, 4))
XD = replace(CONFIG, cin_layers=(4, 2), cin_split_half=True)
NEW = ("ipnn", "opnn", "fibinet", "difm", "dcn", "autoint", "pnn", "deepcrossing", "xdeepfm")
# (name, config, input size of the tower's first layer)
TOWERS = [
    ("ipnn", CONFIG, F * D + P),  # z (24) + 15 inner products = 39
    ("opnn", CONFIG, F * D + D * D),  # z (24) + vec(f_Σ f_Σ^T) (16) = 40
    ("fibinet", CONFIG, 2 * P * D),  # p and q: 2 x 15 pairs x 4 = 120
    ("difm", CONFIG, F * D),  # bit-wise part over flatten(V_x) = 24
    ("dcn", CONFIG, F * D),  # deep network over x_0 = 24
    ("autoint", PLUS, F * D),  # AutoInt+'s MLP over the flattened embeddings = 24
    ("pnn", CONFIG, F * D + P + D * D),  # PNN*: z (24) + 15 inner + 16 outer = 55
    ("xdeepfm", XD, F * D),  # the DNN over the flattened embeddings = 24
]
ALL = [(n, c) for n, c, _ in TOWERS] + [("autoint", CONFIG), ("deepcrossing", DC)]


def _batch(B: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, n, (B,), generator=g) for n in LAYOUT.cat_sizes], dim=1)
    seq = torch.randint(0, 6, (B, 3), generator=g)  # 0 = padding
    return Batch(cat=cat, num=torch.randn(B, 2, generator=g), seq=(seq,),
                 label=torch.randint(0, 2, (B,), generator=g).float())


def _id(name: str, cfg: ModelConfig) -> str:
    return name + ("+" if cfg.autoint_plus else "")


# --- InnerProduct / OuterProduct (PNN) ------------------------------------------------------------


def test_inner_product_of_two_known_vectors() -> None:
    f = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]])  # (1, 2, 3)
    out = InnerProduct(num_fields=2)(f)
    assert out.tolist() == [[32.0]]  # 1*4 + 2*5 + 3*6


def test_inner_product_pair_order_and_count() -> None:
    # Fields e_0..e_3 with e_i = (i + 1) * (1, 1): <e_i, e_j> = 2 (i + 1)(j + 1), pairs row-major.
    f = torch.arange(1.0, 5.0).view(1, 4, 1).expand(1, 4, 2)
    block = InnerProduct(num_fields=4)
    assert block.output_dim == 6
    assert block(f).tolist() == [[4.0, 6.0, 8.0, 12.0, 16.0, 24.0]]  # (0,1) (0,2) (0,3) (1,2) (1,3) (2,3)


def test_outer_product_is_the_superposition_of_all_pairs() -> None:
    # f_1 = (1, 2), f_2 = (3, -1): f_Σ = (4, 1), f_Σ f_Σ^T = [[16, 4], [4, 1]]
    f = torch.tensor([[[1.0, 2.0], [3.0, -1.0]]])
    assert OuterProduct(embedding_dim=2)(f).tolist() == [[16.0, 4.0, 4.0, 1.0]]
    # ... which is sum_i sum_j f_i f_j^T (the paper's p before the superposition trick)
    g = torch.randn(3, 5, 4)
    naive = sum(torch.einsum("bd,be->bde", g[:, i], g[:, j]) for i in range(5) for j in range(5))
    torch.testing.assert_close(OuterProduct(embedding_dim=4)(g), naive.flatten(1))


# --- CIN (xDeepFM) and the residual unit (DeepCrossing) ---------------------------------------------


def _cin_golden(split_half: bool, second: list[float]) -> Tensor:
    # One field, D = 1, X^0 = a = 2. Layer 1, two maps with W^{1,1} = 1, W^{1,2} = 3: X^1 = (a^2, 3 a^2) = (4, 12).
    cin = CIN(num_fields=1, layer_sizes=[2, 1], split_half=split_half)
    with torch.no_grad():
        cin.W[0].copy_(torch.tensor([1.0, 3.0]).view(2, 1, 1))
        cin.W[1].copy_(torch.tensor(second).view(1, -1, 1))
    return cin(torch.tensor([[[2.0]]]))


def test_cin_split_half_golden() -> None:
    # split-half: map 1 (4) goes on, map 2 (12) is pooled; layer 2 (W = 5): X^2 = 5 * 4 * a = 40
    assert _cin_golden(True, [5.0]).tolist() == [[12.0, 40.0]]


def test_cin_direct_golden() -> None:
    # direct: both maps pooled and both go on; layer 2 (W = (5, 7)): X^2 = (5 * 4 + 7 * 12) * a = 208
    assert _cin_golden(False, [5.0, 7.0]).tolist() == [[4.0, 12.0, 208.0]]


@pytest.mark.parametrize(("split_half", "width"), [(True, 6 // 2 + 4 // 2 + 3), (False, 6 + 4 + 3)])
def test_cin_output_width(split_half: bool, width: int) -> None:
    # split-half: sum_{k<T} H_k / 2 + H_T; direct: sum_k H_k. Next-layer filters read H_{k-1} / 2 maps.
    cin = CIN(num_fields=F, layer_sizes=[6, 4, 3], split_half=split_half)
    assert cin.output_dim == width and cin(torch.randn(5, F, D)).shape == (5, width)
    assert [tuple(W.shape) for W in cin.W] == ([(6, F, F), (4, 3, F), (3, 2, F)] if split_half
                                               else [(6, F, F), (4, 6, F), (3, 4, F)])


def test_cin_first_layer_is_a_weighted_sum_of_pairwise_hadamard_products() -> None:
    # X^1_h = sum_ij W_hij (e_i ∘ e_j): with W_h = 1 only at (i, j) = (0, 2), p^1_h = <e_0, e_2>
    cin = CIN(num_fields=3, layer_sizes=[1])
    with torch.no_grad():
        cin.W[0].zero_()
        cin.W[0][0, 0, 2] = 1.0
    e = torch.tensor([[[1.0, 2.0], [5.0, 5.0], [3.0, -1.0]]])
    assert cin(e).tolist() == [[1.0]]  # 1 * 3 + 2 * (-1)


def test_cin_rejects_odd_split_sizes() -> None:
    with pytest.raises(ValueError, match="even sizes for every layer but the last"):
        CIN(num_fields=3, layer_sizes=[5, 3], split_half=True)
    CIN(num_fields=3, layer_sizes=[5, 3], split_half=False)  # direct takes any size
    with pytest.raises(ConfigError, match="model.cin_split_half needs an even model.cin_layers"):
        build_model("xdeepfm", layout=LAYOUT, config=replace(CONFIG, cin_layers=(5, 3), cin_split_half=True))


def test_residual_unit_with_zero_weights_is_relu() -> None:
    unit = ResidualUnit(dim=3, hidden=2)
    with torch.no_grad():
        for W in (unit.W0, unit.W1):
            W.weight.zero_()
            W.bias.zero_()
    x = torch.tensor([[1.0, -2.0, 0.5]])
    assert unit(x).tolist() == [[1.0, 0.0, 0.5]]  # ReLU(x + 0)
    with torch.no_grad():
        unit.W1.bias.copy_(torch.tensor([-2.0, 3.0, 0.0]))
    assert unit(x).tolist() == [[0.0, 1.0, 0.5]]  # ReLU(x + b_1)


def test_residual_unit_golden() -> None:
    # x = (1, 2), W_0 = [[1, -1], [1, 1]], b_0 = 0: relu(-1, 3) = (0, 3); W_1 = [[1, 1], [0, -1]], b_1 = (0, 1):
    # F(x) = (3, -2); ReLU(x + F) = ReLU(4, 0) = (4, 0)
    unit = ResidualUnit(dim=2, hidden=2)
    with torch.no_grad():
        unit.W0.weight.copy_(torch.tensor([[1.0, -1.0], [1.0, 1.0]]))
        unit.W0.bias.zero_()
        unit.W1.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, -1.0]]))
        unit.W1.bias.copy_(torch.tensor([0.0, 1.0]))
    assert unit(torch.tensor([[1.0, 2.0]])).tolist() == [[4.0, 0.0]]


# --- SENet / BilinearInteraction (FiBiNET) ---------------------------------------------------------


def test_senet_with_known_excitation() -> None:
    # F = 2, r = 2 -> reduced width 1. E = [[1, 3], [2, 4]]: squeeze Z = (2, 3).
    # W_1 = [1, 1]: relu(2 + 3) = 5.  W_2 = [1, 2]^T: A = relu(5, 10) = (5, 10).
    # re-weight: V = [5 * (1, 3), 10 * (2, 4)] = [[5, 15], [20, 40]]
    se = SENet(num_fields=2, reduction_ratio=2)
    assert se.W1.weight.shape == (1, 2) and se.W2.weight.shape == (2, 1)
    with torch.no_grad():
        se.W1.weight.copy_(torch.tensor([[1.0, 1.0]]))
        se.W2.weight.copy_(torch.tensor([[1.0], [2.0]]))
    out = se(torch.tensor([[[1.0, 3.0], [2.0, 4.0]]]))
    assert out.tolist() == [[[5.0, 15.0], [20.0, 40.0]]]


def test_senet_relu_can_switch_a_field_off() -> None:
    # Same E, W_2 = [1, -1]^T: A = relu(5, -5) = (5, 0) -> the second field is zeroed.
    se = SENet(num_fields=2, reduction_ratio=2)
    with torch.no_grad():
        se.W1.weight.copy_(torch.tensor([[1.0, 1.0]]))
        se.W2.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    assert se(torch.tensor([[[1.0, 3.0], [2.0, 4.0]]])).tolist() == [[[5.0, 15.0], [0.0, 0.0]]]


@pytest.mark.parametrize("kind", list(BilinearType))
def test_bilinear_with_identity_is_the_hadamard_product(kind: BilinearType) -> None:
    # v = (1, 2), (3, 4), (5, 6): pairs (0,1) (0,2) (1,2) -> (3, 8), (5, 12), (15, 24)
    bi = BilinearInteraction(num_fields=3, embedding_dim=2, bilinear_type=kind)
    with torch.no_grad():
        bi.W.copy_(torch.eye(2).expand_as(bi.W))
    out = bi(torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]))
    assert out.tolist() == [[[3.0, 8.0], [5.0, 12.0], [15.0, 24.0]]]


def test_bilinear_parameter_counts_per_type() -> None:
    n = {kind: BilinearInteraction(num_fields=4, embedding_dim=3, bilinear_type=kind).W.shape[0]
         for kind in BilinearType}
    assert n == {BilinearType.FIELD_ALL: 1, BilinearType.FIELD_EACH: 3, BilinearType.FIELD_INTERACTION: 6}


def test_bilinear_field_each_uses_the_left_fields_matrix() -> None:
    # W_0 = 2 I, W_1 = I: pairs (0,1), (0,2) use W_0 (doubled), (1,2) uses W_1.
    bi = BilinearInteraction(num_fields=3, embedding_dim=2, bilinear_type=BilinearType.FIELD_EACH)
    with torch.no_grad():
        bi.W.copy_(torch.stack([2 * torch.eye(2), torch.eye(2)]))
    out = bi(torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]]))
    assert out.tolist() == [[[6.0, 16.0], [10.0, 24.0], [15.0, 24.0]]]


def test_bilinear_general_w_is_v_i_times_w_then_hadamard() -> None:
    # v_0 = (1, 2), v_1 = (3, 4), W = [[1, 2], [0, 1]] (not symmetric, so W vs W^T matters):
    # v_0 W = (1*1 + 2*0, 1*2 + 2*1) = (1, 4);  ⊙ v_1 = (3, 16)   [v_0 W^T would give (15, 8)]
    bi = BilinearInteraction(num_fields=2, embedding_dim=2, bilinear_type=BilinearType.FIELD_ALL)
    with torch.no_grad():
        bi.W.copy_(torch.tensor([[[1.0, 2.0], [0.0, 1.0]]]))
    assert bi(torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])).tolist() == [[[3.0, 16.0]]]


def test_bilinear_needs_two_fields() -> None:
    with pytest.raises(ValueError, match="num_fields >= 2"):
        BilinearInteraction(num_fields=1, embedding_dim=2)


# --- CrossLayerV1 / CrossNet (DCN) ----------------------------------------------------------------


def _set_cross(layer: CrossLayerV1, w: list[float], b: list[float]) -> None:
    with torch.no_grad():
        layer.w.weight.copy_(torch.tensor([w]))
        layer.b.copy_(torch.tensor(b))


def test_cross_v1_golden_two_layers() -> None:
    # x_0 = (1, 2, 3), w = (1, 0, -1), b = (0.5, 0.5, 0.5) in both layers.
    # layer 1: x_0^T w = 1 - 3 = -2;  x_1 = -2 x_0 + b + x_0 = (-0.5, -1.5, -2.5)
    # layer 2: x_1^T w = -0.5 + 2.5 = 2; x_2 = 2 x_0 + b + x_1 = (2, 3, 4)
    net = CrossNet(input_dim=3, num_layers=2)
    for layer in net.layers:
        _set_cross(layer, [1.0, 0.0, -1.0], [0.5, 0.5, 0.5])
    x0 = torch.tensor([[1.0, 2.0, 3.0]])
    assert net.layers[0](x0, x0).tolist() == [[-0.5, -1.5, -2.5]]
    assert net(x0).tolist() == [[2.0, 3.0, 4.0]]


def test_cross_v1_default_is_eq3_without_extra_bias() -> None:
    layer = CrossLayerV1(input_dim=5)
    assert layer.w.bias is None and layer.w.weight.shape == (1, 5)  # a vector w_l, no scalar offset
    assert torch.count_nonzero(layer.b) == 0  # b_l starts at zero


def test_cross_v1_hands_the_condition_to_w() -> None:
    # The seam a later change uses to generate w_l from the condition: w(x_l, cond) -> (B, 1).
    class FromCond(nn.Module):  # w_l = cond: x_l^T w_l per row
        def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
            assert cond is not None
            return (x * cond).sum(-1, keepdim=True)

    layer = CrossLayerV1(input_dim=2, layer=lambda i, o: FromCond())
    x0 = torch.tensor([[1.0, 2.0], [1.0, 2.0]])
    cond = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # row 0: x^T w = 1, row 1: x^T w = 2
    assert layer(x0, x0, cond).tolist() == [[2.0, 4.0], [3.0, 6.0]]  # x_0 * s + 0 + x_0


# --- MultiHeadSelfAttention (AutoInt) ---------------------------------------------------------------


def _attention_identity(scaled: bool = False) -> MultiHeadSelfAttention:
    att = MultiHeadSelfAttention(input_dim=2, head_dim=2, heads=1, scaled=scaled)
    with torch.no_grad():
        for W in (att.W_Q, att.W_K, att.W_V):
            W.weight.copy_(torch.eye(2))
        att.W_Res.weight.copy_(-torch.eye(2))
    return att


def test_attention_single_head_identity_golden() -> None:
    # e_1 = (1, 0), e_2 = (0, 2), W_Q = W_K = W_V = I, W_Res = -I.
    # ψ = [[<e1,e1>, <e1,e2>], [<e2,e1>, <e2,e2>]] = [[1, 0], [0, 4]]
    # α_1 = softmax(1, 0) = (e/(1+e), 1/(1+e)) = (0.731059, 0.268941)
    # α_2 = softmax(0, 4) = (1/(1+e^4), e^4/(1+e^4)) = (0.017986, 0.982014)
    # ẽ_1 = 0.731059 (1, 0) + 0.268941 (0, 2) = (0.731059, 0.537883)
    # ẽ_2 = 0.017986 (1, 0) + 0.982014 (0, 2) = (0.017986, 1.964028)
    # ReLU(ẽ - e): field 1 -> (relu(-0.268941), 0.537883) = (0, 0.537883)
    #              field 2 -> (0.017986, relu(-0.035972)) = (0.017986, 0)
    out = _attention_identity()(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))
    e = math.e
    expected = torch.tensor([[[0.0, 2 / (1 + e)], [1 / (1 + e**4), 0.0]]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out, torch.tensor([[[0.0, 0.537883], [0.017986, 0.0]]]), atol=1e-6, rtol=0)


def test_attention_scaled_divides_psi_by_sqrt_head_dim() -> None:
    # Same input, ψ / sqrt(2): α_1 = softmax(1/√2, 0), so ẽ_1 = (a, 2 (1 - a)) with a = σ(1/√2).
    out = _attention_identity(scaled=True)(torch.tensor([[[1.0, 0.0], [0.0, 2.0]]]))
    a = 1 / (1 + math.exp(-1 / math.sqrt(2)))
    torch.testing.assert_close(out[0, 0], torch.tensor([0.0, 2 * (1 - a)]))


def test_attention_heads_are_concatenated_single_heads() -> None:
    # Two heads == two single-head layers with the matching slices of W_Q, W_K, W_V, W_Res (eq. 8).
    torch.manual_seed(0)
    multi = MultiHeadSelfAttention(input_dim=4, head_dim=3, heads=2)
    e = torch.randn(5, 6, 4)
    pre_relu = []
    for h in range(2):
        single = MultiHeadSelfAttention(input_dim=4, head_dim=3, heads=1, residual=False)
        rows = slice(3 * h, 3 * h + 3)
        with torch.no_grad():
            for name in ("W_Q", "W_K", "W_V"):
                getattr(single, name).weight.copy_(getattr(multi, name).weight[rows])
        # single is ReLU(attention); recompute without the ReLU to add the residual afterwards
        Q, K, V = single.W_Q(e), single.W_K(e), single.W_V(e)
        pre_relu.append(torch.softmax(Q @ K.transpose(1, 2), dim=-1) @ V)  # (B, F, 3)
        torch.testing.assert_close(single(e), torch.relu(pre_relu[-1]))
    expected = torch.relu(torch.cat(pre_relu, dim=-1) + multi.W_Res(e))
    torch.testing.assert_close(multi(e), expected)
    assert multi(e).shape == (5, 6, 6)


def test_attention_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="head_dim, heads > 0"):
        MultiHeadSelfAttention(input_dim=4, head_dim=0, heads=2)


# --- models: the contract every registered model has ------------------------------------------------


def test_new_models_are_registered() -> None:
    assert set(NEW) <= set(MODELS)
    assert all(MODELS[n].paper for n in NEW)


@pytest.mark.parametrize(("name", "cfg"), ALL, ids=[_id(n, c) for n, c in ALL])
@pytest.mark.parametrize("B", [1, 8])
def test_forward_shape_and_finite(name: str, cfg: ModelConfig, B: int) -> None:
    model = build_model(name, layout=LAYOUT, config=cfg)
    out = model(_batch(B))
    assert out.shape == (B,) and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "cfg"), ALL, ids=[_id(n, c) for n, c in ALL])
def test_gradients_reach_embedding_and_tower(name: str, cfg: ModelConfig) -> None:
    torch.manual_seed(0)
    model = build_model(name, layout=LAYOUT, config=cfg)
    batch = _batch(8)
    nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
    tables = list(model.embedding_parameters())
    assert tables and all(p.grad is not None and p.grad.abs().sum() > 0 for p in tables)
    if getattr(model, "tower", None) is not None:
        assert model.tower.layers[0].weight.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert missing == []  # every parameter is on the path to the logit


@pytest.mark.parametrize(("name", "cfg", "d_in"), TOWERS, ids=[_id(n, c) for n, c, _ in TOWERS])
def test_layer_factory_builds_every_hidden_layer(name: str, cfg: ModelConfig, d_in: int, counting_layer) -> None:
    factory, calls, conds = counting_layer
    model = build_model(name, layout=LAYOUT, config=cfg, layer=factory)
    assert calls == [(d_in, 8), (8, 4)]
    assert model(_batch(2)).shape == (2,)
    assert len(conds) == 2 and conds == [None, None]  # no condition builder -> cond is None


@pytest.mark.parametrize(("name", "cfg", "d_in"), TOWERS, ids=[_id(n, c) for n, c, _ in TOWERS])
def test_condition_builder_reaches_the_tower(name: str, cfg: ModelConfig, d_in: int) -> None:
    seen: list[Tensor | None] = []
    calls = 0

    class Recording(Linear):
        def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
            seen.append(cond)
            return super().forward(x)

    class FirstField(nn.Module):  # a stand-in condition: the first field's embedding
        def forward(self, batch: Batch, emb: Tensor) -> Tensor:
            nonlocal calls
            calls += 1
            return emb[:, 0]  # (B, D)

    model = build_model(name, layout=LAYOUT, config=cfg, layer=Recording)
    model.condition = FirstField()
    model(_batch(3))
    assert calls == 1  # made once per forward
    assert len(seen) == 2 and all(c is not None and c.shape == (3, D) for c in seen)


def test_plain_autoint_rejects_a_layer_factory() -> None:
    with pytest.raises(ConfigError, match="'autoint' has no MLP tower unless autoint_plus"):
        build_model("autoint", layout=LAYOUT, config=CONFIG, layer=lambda i, o: Linear(i, o))


@pytest.mark.parametrize(("name", "cfg"), ALL, ids=[_id(n, c) for n, c in ALL])
def test_deterministic_with_seed(name: str, cfg: ModelConfig) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(7)
        outs.append(build_model(name, layout=LAYOUT, config=cfg)(_batch(4)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


# --- models: structure and equivalence with the papers' formulas ------------------------------------


def test_pnn_both_products_concatenate() -> None:
    # PNN*: z (24) + inner (15) + outer (16) = 55 inputs to the first hidden layer
    model = PNN(layout=LAYOUT, config=CONFIG, product=Product.BOTH)
    assert model.tower.layers[0].in_features == F * D + P + D * D
    assert model(_batch(3)).shape == (3,)


def test_pnn_star_outer_signal_is_symmetric_rank_one() -> None:
    # The registered PNN* (ICDM'16 outer product): the last M^2 inputs of its first layer are f_Σ f_Σ^T.
    model = build_model("pnn", layout=LAYOUT, config=CONFIG)
    seen: list[Tensor] = []
    model.tower.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    batch = _batch(3)
    model(batch)
    assert seen[0].shape == (3, F * D + P + D * D)
    outer = seen[0][:, F * D + P:].view(3, D, D)
    torch.testing.assert_close(outer, outer.transpose(1, 2))
    sv = torch.linalg.svdvals(outer)  # (3, D): rank 1, so only the first is non-zero (float32 rounding)
    assert (sv[:, 0] > 0).all() and (sv[:, 1:] <= 1e-5 * sv[:, :1]).all()
    f_sum = model.embedding(batch).sum(dim=1)  # (3, D)
    torch.testing.assert_close(outer, f_sum.unsqueeze(2) * f_sum.unsqueeze(1))
    emb = model.embedding(batch)  # ... and the inner products in between, as in IPNN
    inner = torch.stack([(emb[:, i] * emb[:, j]).sum(-1) for i in range(F) for j in range(i + 1, F)], dim=1)
    torch.testing.assert_close(seen[0][:, F * D:F * D + P], inner)


def test_deepcrossing_layer_factory_builds_both_layers_of_every_unit(counting_layer) -> None:
    factory, calls, conds = counting_layer
    model = build_model("deepcrossing", layout=LAYOUT, config=DC, layer=factory)
    assert calls == [(F * D, 8), (8, F * D), (F * D, 4), (4, F * D)]  # W_0, W_1 per unit
    assert isinstance(model.score, Linear) and model.score.in_features == F * D  # static scoring layer
    model(_batch(2))
    assert conds == [None] * 4


def test_deepcrossing_condition_reaches_every_unit_layer() -> None:
    seen: list[Tensor | None] = []

    class Recording(Linear):
        def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
            seen.append(cond)
            return super().forward(x)

    model = build_model("deepcrossing", layout=LAYOUT, config=DC, layer=Recording)
    model.condition = lambda batch, emb: emb[:, 0]  # a stand-in condition: the first field (B, D)
    model(_batch(3))
    assert len(seen) == 4 and all(c is not None and c.shape == (3, D) for c in seen)


def test_deepcrossing_with_zero_units_is_linear_in_the_embeddings() -> None:
    # Every unit with zero weights and biases is ReLU: the model is then score(ReLU(x)).
    model = build_model("deepcrossing", layout=LAYOUT, config=DC)
    with torch.no_grad():
        for unit in model.units:
            for W in (unit.W0, unit.W1):
                W.weight.zero_()
                W.bias.zero_()
    batch = _batch(4)
    x = torch.relu(model.embedding(batch).flatten(1))
    torch.testing.assert_close(model(batch), model.score(x).squeeze(-1))


def test_xdeepfm_is_linear_plus_cin_plus_dnn() -> None:
    model = build_model("xdeepfm", layout=LAYOUT, config=XD)
    assert model.cin.output_dim == 4 // 2 + 2 and model.cin_out.bias is None
    batch = _batch(4)
    emb = model.embedding(batch)
    parts = (model.first_order(batch) + model.cin_out(model.cin(emb)) + model.tower(emb.flatten(1))).squeeze(-1)
    torch.testing.assert_close(model(batch), parts)


@pytest.mark.parametrize(("name", "cfg", "part", "n_apg"), [
    ("deepcrossing", DC, "units", 4),  # W_0 and W_1 of both units
    ("xdeepfm", XD, "tower", 2),  # the DNN's two hidden layers; the CIN filters stay static
    ("pnn", CONFIG, "tower", 2),
])
def test_new_models_take_apg_in_their_deep_part(name: str, cfg: ModelConfig, part: str, n_apg: int) -> None:
    model = build_model(name, layout=LAYOUT, config=replace(cfg, tower_layer=TowerLayer.APG))
    apg = [n for n, m in model.named_modules() if isinstance(m, APGLinear)]
    assert len(apg) == n_apg and all(n.startswith(part + ".") for n in apg)
    assert model.condition is not None and model(_batch(3)).shape == (3,)
    served = model.for_inference()
    torch.testing.assert_close(served(_batch(3)), model(_batch(3)), atol=1e-6, rtol=1e-5)


def test_ipnn_first_layer_sees_z_and_the_inner_products() -> None:
    # The first layer's input is [vec(z); <f_i, f_j>]: record it with a hook and compare.
    model = build_model("ipnn", layout=LAYOUT, config=CONFIG)
    seen: list[Tensor] = []
    model.tower.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    batch = _batch(2)
    model(batch)
    emb = model.embedding(batch)  # (2, 6, 4)
    pairs = [(emb[:, i] * emb[:, j]).sum(-1) for i in range(F) for j in range(i + 1, F)]
    torch.testing.assert_close(seen[0], torch.cat([emb.flatten(1), torch.stack(pairs, dim=1)], dim=1))


def test_dcn_combination_layer_sizes() -> None:
    model = DCN(layout=LAYOUT, config=CONFIG)
    assert len(model.cross.layers) == 2
    assert model.tower.out is None and model.fc.in_features == F * D + 4  # [x_L1 (24); h_L2 (4)]


def test_autoint_layer_sizes_and_plus() -> None:
    model = AutoInt(layout=LAYOUT, config=CONFIG)
    H_d = CONFIG.attention_heads * CONFIG.attention_dim  # 2 x 3 = 6
    assert [m.W_Q.in_features for m in model.interacting] == [D, H_d]  # d -> H d', then H d' -> H d'
    assert model.fc.in_features == F * H_d and model.tower is None
    plus = AutoInt(layout=LAYOUT, config=PLUS)
    batch = _batch(4)
    torch.testing.assert_close(  # AutoInt+ = AutoInt logit + MLP logit
        plus(batch), plus.fc(_interact(plus, batch)).squeeze(-1)
        + plus.tower(plus.embedding(batch).flatten(1)).squeeze(-1))


def _interact(model: AutoInt, batch: Batch) -> Tensor:
    e = model.embedding(batch)
    for layer in model.interacting:
        e = layer(e)
    return e.flatten(1)


@pytest.mark.parametrize("kind", list(BilinearType))
def test_fibinet_all_bilinear_types_and_linear_part(kind: BilinearType) -> None:
    cfg = replace(CONFIG, bilinear_type=kind)
    model = FiBiNET(layout=LAYOUT, config=cfg)
    assert model.senet.W1.out_features == 2  # F / r = 6 / 3
    batch = _batch(4)
    with torch.no_grad():  # silence the deep part: the logit is then the linear part w_0 + sum w_i x_i
        model.tower.out.weight.zero_()
        model.tower.out.bias.zero_()
        model.first_order.bias.fill_(0.25)
    torch.testing.assert_close(model(batch), torch.full((4,), 0.25))


def test_difm_uses_the_scaled_attention_and_bias_free_projections() -> None:
    # DIFM's output against its formula is tests/test_formulas.py (computed there without the model's own
    # sub-networks); this checks the two choices its header documents.
    model = DIFM(layout=LAYOUT, config=CONFIG)
    assert model.vector_wise.scaled and model.P_vec.bias is None and model.P_bit.bias is None


# --- CLI ---------------------------------------------------------------------------------------------


def test_cli_lists_the_new_models(capsys) -> None:
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in NEW:
        assert any(line.split()[0] == name for line in out.splitlines())


FAST = ["--set", "model.hidden=[16]", "--set", "model.attention_dim=4", "--set", "train.epochs=1",
        "--set", "train.batch_size=1024", "--quiet"]


@pytest.mark.parametrize(("name", "extra"), [
    ("ipnn", []), ("opnn", []), ("fibinet", ["--set", "model.bilinear_type=field_each"]), ("difm", []),
    ("dcn", []), ("autoint", []), ("autoint", ["--set", "model.autoint_plus=true"]), ("pnn", []),
    ("deepcrossing", ["--set", "model.residual_units=[16]"]),
    ("xdeepfm", ["--set", "model.cin_layers=[4,2]", "--set", "model.cin_split_half=true"]),
])
def test_cli_trains_each_model(world_data, tmp_path, name: str, extra: list[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", name, "--out", str(run), *FAST, *extra]) == 0
    assert (run / "metrics.json").exists()
