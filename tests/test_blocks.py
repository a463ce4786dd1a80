"""Tests for the shared blocks: FieldEmbedding, FMInteraction, FirstOrder, CrossLayerV2 / CrossNetV2.

Goldens are small enough to check by hand; the low-rank cross layer is checked against the full-rank
form of DCN-V2 eq. (1) by composing W = U C V^T.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adactr.data.schema import FieldLayout, Pooling
from adactr.data.tensors import Batch
from adactr.nn import mlp
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.interaction import CrossLayerV2, CrossNetV2, FirstOrder, FMInteraction
from adactr.nn.mlp import Linear, WideOutputLinear


def _layout(cat=(3, 4), n_num=0, seq=(), pooling=()) -> FieldLayout:
    names = tuple(f"f{i}" for i in range(len(cat) + n_num + len(seq)))
    return FieldLayout(names=names, cat_sizes=cat, n_num=n_num, seq_sizes=seq, seq_pooling=pooling)


def _batch(cat, num=None, seq=()) -> Batch:
    cat = torch.tensor(cat)
    B = cat.shape[0]
    num = torch.zeros(B, 0) if num is None else torch.tensor(num)
    return Batch(cat=cat, num=num, seq=tuple(torch.tensor(s) for s in seq), label=torch.zeros(B))


# --- FieldEmbedding -------------------------------------------------------------------------------


def test_embedding_offsets() -> None:
    # cat sizes (3, 4): field 0 owns rows 0..2, field 1 rows 3..6, so field 1 index 2 is row 3 + 2 = 5.
    emb = FieldEmbedding(layout=_layout(), dim=1)
    with torch.no_grad():
        emb.table.weight.copy_(torch.arange(7.0).unsqueeze(1))  # row i holds i
    out = emb(_batch([[0, 2], [2, 3]]))
    assert out.shape == (2, 2, 1)
    assert out.squeeze(-1).tolist() == [[0.0, 5.0], [2.0, 6.0]]


def test_embedding_numerical_scaling() -> None:
    # value x per-field vector: 3 * (1, 2) = (3, 6), -0.5 * (4, 5) = (-2, -2.5)
    emb = FieldEmbedding(layout=_layout(cat=(3,), n_num=2), dim=2)
    with torch.no_grad():
        emb.num_weight.copy_(torch.tensor([[1.0, 2.0], [4.0, 5.0]]))
    out = emb(_batch([[0]], num=[[3.0, -0.5]]))  # (1, 3, 2): cat field first, then the two numericals
    assert out[0, 1:].tolist() == [[3.0, 6.0], [-2.0, -2.5]]


@pytest.mark.parametrize(("pooling", "expected"), [(Pooling.MEAN, 2.5), (Pooling.SUM, 5.0)])
def test_embedding_sequence_pooling_skips_padding(pooling: Pooling, expected: float) -> None:
    # cat (3,), seq (5,): the sequence table starts at row 3. Items 2 and 3 -> rows 5 and 6, holding
    # 2 and 3 (row value - 3); the two 0 paddings are masked: mean = (2 + 3) / 2, sum = 5.
    emb = FieldEmbedding(layout=_layout(cat=(3,), seq=(5,), pooling=(pooling,)), dim=1)
    with torch.no_grad():
        emb.table.weight.copy_(torch.arange(8.0).unsqueeze(1) - 3)
    out = emb(_batch([[0]], seq=[[[2, 0, 3, 0]]]))  # (1, 2, 1)
    assert out[0, 1, 0].item() == expected


def test_embedding_all_padding_sequence_is_zero() -> None:
    emb = FieldEmbedding(layout=_layout(cat=(3,), seq=(5,), pooling=(Pooling.MEAN,)), dim=2, init_std=1.0)
    out = emb(_batch([[1]], seq=[[[0, 0]]]))
    assert out[0, 1].tolist() == [0.0, 0.0]


# --- FM and first order ---------------------------------------------------------------------------


def test_fm_golden() -> None:
    # e1 = (1, 2), e2 = (3, 4), e3 = (5, 6): <e1,e2> + <e1,e3> + <e2,e3> = 11 + 17 + 39 = 67.
    # Lemma form: sum = (9, 12), squares of sum (81, 144), sum of squares (35, 56) -> 0.5 (46 + 88) = 67.
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    assert FMInteraction()(e).tolist() == [[67.0]]


def test_fm_equals_pairwise_sum() -> None:
    e = torch.randn(4, 5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    pairs = sum((e[:, i] * e[:, j]).sum(-1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(FMInteraction()(e).squeeze(-1), pairs)


def test_first_order_golden() -> None:
    # w_0 = 0.5; field 0 index 1 -> row 1 (= 1), field 1 index 3 -> row 3 + 3 = 6 (= 6); numerical
    # weight 2 times value 1.5 = 3. Logit = 0.5 + 1 + 6 + 3 = 10.5.
    fo = FirstOrder(layout=_layout(n_num=1))
    assert fo.embedding.table.weight.abs().sum().item() == 0.0  # zero init: starts at the bias
    with torch.no_grad():
        fo.embedding.table.weight.copy_(torch.arange(7.0).unsqueeze(1))
        fo.embedding.num_weight.fill_(2.0)
        fo.bias.fill_(0.5)
    out = fo(_batch([[1, 3]], num=[[1.5]]))
    assert out.shape == (1, 1) and out.item() == 10.5


# --- DCN-V2 cross layers --------------------------------------------------------------------------


def test_cross_layer_ones_kernel_golden() -> None:
    # W = ones, b = 0: W x = (1.5, 1.5, 1.5); x0 ⊙ W x = (0.15, 0.3, 0.45); + x = (0.55, 0.8, 1.05)
    # (the keras-rs FeatureCross golden).
    layer = CrossLayerV2(input_dim=3)
    with torch.no_grad():
        layer.W.weight.fill_(1.0)
        layer.W.bias.zero_()
    out = layer(torch.tensor([[0.1, 0.2, 0.3]]), torch.tensor([[0.4, 0.5, 0.6]]))
    torch.testing.assert_close(out, torch.tensor([[0.55, 0.8, 1.05]]))


def test_low_rank_equals_full_rank_when_linear() -> None:
    # One expert (gate = 1) and g = identity: x0 ⊙ (U C V^T x + b) + x is eq. (1) with W = U C V^T.
    torch.manual_seed(0)
    d = 4
    low = CrossLayerV2(input_dim=d, rank=d, experts=1).double()
    low.g = nn.Identity()
    full = CrossLayerV2(input_dim=d).double()
    with torch.no_grad():
        low.b.normal_()
        full.W.weight.copy_(low.U[:, 0] @ low.C[0] @ low.V[:, 0].T)
        full.W.bias.copy_(low.b)
    x0, x = torch.randn(3, d, dtype=torch.float64), torch.randn(3, d, dtype=torch.float64)
    torch.testing.assert_close(low(x0, x), full(x0, x))


def test_low_rank_mixture_equals_per_expert_sum() -> None:
    # The fused mixture x0 ⊙ (sum_i G_i U_i h_i + b) equals eq. (3) written expert by expert.
    torch.manual_seed(0)
    d, K, r = 5, 3, 2
    layer = CrossLayerV2(input_dim=d, rank=r, experts=K).double()
    with torch.no_grad():
        layer.b.normal_()
    x0, x = torch.randn(4, d, dtype=torch.float64), torch.randn(4, d, dtype=torch.float64)
    G = torch.softmax(x @ layer.gate.weight.T, dim=-1)  # (B, K)
    expected = x.clone()
    for i in range(K):
        h = torch.tanh(torch.tanh(x @ layer.V[:, i]) @ layer.C[i].T)  # (B, r)
        E = x0 * (h @ layer.U[:, i].T + layer.b)  # (B, d)
        expected = expected + G[:, i:i + 1] * E
    torch.testing.assert_close(layer(x0, x), expected)


def test_cross_layer_uses_factory_and_passes_cond() -> None:
    seen = []

    class Recording(Linear):
        def forward(self, x, cond=None):
            seen.append(cond)
            return super().forward(x)

    net = CrossNetV2(input_dim=3, num_layers=2, layer=Recording)
    cond = torch.ones(2, 1)
    assert net(torch.randn(2, 3), cond).shape == (2, 3)
    assert len(seen) == 2 and all(c is cond for c in seen)


def test_cross_net_shapes() -> None:
    for rank in (0, 2):
        net = CrossNetV2(input_dim=6, num_layers=3, rank=rank, experts=2)
        assert net(torch.randn(5, 6)).shape == (5, 6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"input_dim": 3, "num_layers": 0}, "num_layers > 0"),
    ({"input_dim": 3, "num_layers": 1, "rank": -1}, "rank >= 0"),
    ({"input_dim": 3, "num_layers": 1, "rank": 2, "experts": 0}, "experts > 0"),
    ({"input_dim": 3, "num_layers": 1, "rank": 2, "layer": lambda i, o: Linear(i, o)}, "full-rank W only"),
])
def test_cross_net_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        CrossNetV2(**kwargs)


def test_cpu_gather_backward_equals_nn_embedding() -> None:
    """FieldEmbedding's CPU lookup (index_add_ backward) gives nn.Embedding's gradient, repeats included."""
    from adactr.nn.embedding import _GatherRows

    torch.manual_seed(0)
    table = torch.randn(7, 3, requires_grad=True)
    idx = torch.tensor([[0, 6, 6], [2, 0, 6]])  # row 6 three times, row 0 twice
    grad = torch.randn(2, 3, 3)
    (g_ref,) = torch.autograd.grad(torch.nn.functional.embedding(idx, table), table, grad)
    (g_new,) = torch.autograd.grad(_GatherRows.apply(table, idx), table, grad)
    assert torch.equal(_GatherRows.apply(table, idx), table[idx])
    torch.testing.assert_close(g_new, g_ref)
    # by hand: row 6 collects grad[0,1] + grad[0,2] + grad[1,2]; row 5 nothing
    torch.testing.assert_close(g_new[6], grad[0, 1] + grad[0, 2] + grad[1, 2])
    assert torch.equal(g_new[5], torch.zeros(3))


# --- WideOutputLinear -----------------------------------------------------------------------------

def test_wide_output_linear_has_nn_linear_outputs_and_gradients() -> None:
    """Only the order of the backward's products differs from nn.Linear: same values, same gradients."""
    torch.manual_seed(0)
    ref = nn.Linear(3, 50).double()
    ours = WideOutputLinear(3, 50).double()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(7, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 50, dtype=torch.float64)
    y_ref = ref(x)
    y_ref.backward(g)
    gx_ref, x.grad = x.grad, None
    y = ours(x, None)
    y.backward(g)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(x.grad, gx_ref)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.bias.grad, ref.bias.grad)
    assert ours.weight.grad.is_contiguous()
    # and the hand-written backward passes the numerical check
    assert torch.autograd.gradcheck(mlp._WideLinearFn.apply,
                                    (x.detach().requires_grad_(), ours.weight.detach().clone().requires_grad_(),
                                     ours.bias.detach().clone().requires_grad_()))


def test_wide_output_linear_without_autograd_is_plain_linear() -> None:
    ours = WideOutputLinear(2, 4)
    with torch.no_grad():
        ours.weight.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1], [2, -1]]))
        ours.bias.copy_(torch.tensor([0.0, 0, 0, 1]))
        y = ours(torch.tensor([[3.0, 4]]), None)
    assert torch.equal(y, torch.tensor([[3.0, 4, 7, 3]]))


# --- Linear on the CPU: oneDNN products -----------------------------------------------------------

onednn = pytest.mark.skipif(not mlp.CPU_ONEDNN, reason="this torch build has no oneDNN linear")


def _grads(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(g)
    bias = () if layer.bias is None else (layer.bias.grad,)
    return (y.detach(), x.grad, layer.weight.grad, *bias)


@onednn
@pytest.mark.parametrize("bias", [True, False])
def test_linear_onednn_path_matches_f_linear(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same outputs and gradients (float rounding only) as PyTorch's F.linear; the oneDNN path is the one taken."""
    torch.manual_seed(0)
    layer = Linear(39, 17, bias=bias)
    x = torch.randn(mlp.ONEDNN_MIN_ROWS + 5, 39)
    g = torch.randn(mlp.ONEDNN_MIN_ROWS + 5, 17)
    y = layer(x.requires_grad_())
    assert type(y.grad_fn).__name__ == "_OneDnnLinearFnBackward"
    ours = _grads(layer, x, g)
    monkeypatch.setattr(mlp, "CPU_ONEDNN", False)
    assert type(layer(x).grad_fn).__name__ == ("AddmmBackward0" if bias else "MmBackward0")
    ref = _grads(layer, x, g)
    assert len(ours) == len(ref) == 3 + bias
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@onednn
def test_linear_onednn_handles_a_transposed_input_and_frozen_weights() -> None:
    torch.manual_seed(0)
    layer = Linear(5, 3)
    n = mlp.ONEDNN_MIN_ROWS
    x = torch.randn(5, n).t()  # (n, 5), not contiguous
    torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer.requires_grad_(False)
    xg = x.detach().clone().requires_grad_()
    y = layer(xg)
    assert type(y.grad_fn).__name__ == "_OneDnnLinearFnBackward"
    y.sum().backward()  # only the input needs a gradient
    torch.testing.assert_close(xg.grad, layer.weight.sum(0).expand(n, 5))
    with torch.no_grad():
        assert layer(x).grad_fn is None


def test_linear_falls_back_to_f_linear_off_the_onednn_path() -> None:
    """float64, small batches, 3-D inputs: PyTorch's own product, bit for bit."""
    torch.manual_seed(0)
    layer = Linear(4, 2).double()
    x = torch.randn(mlp.ONEDNN_MIN_ROWS, 4, dtype=torch.float64)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer = Linear(4, 2)
    x = torch.randn(mlp.ONEDNN_MIN_ROWS - 1, 4, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == "AddmmBackward0"
    assert torch.equal(y, torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer = Linear(4, 2)
    x3 = torch.randn(2, 3, 4)
    assert torch.equal(layer(x3), torch.nn.functional.linear(x3, layer.weight, layer.bias))


def test_fm_written_out_gradient_equals_autograd_of_the_formula() -> None:
    """_FMFn's backward (g * (sum_f e_f - e_f)) against autograd of Rendle's Lemma 3.1, and gradcheck."""
    torch.manual_seed(0)
    emb = torch.randn(5, 4, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(5, 1, dtype=torch.float64)
    s = emb.sum(dim=1)
    formula = 0.5 * (s.square() - emb.square().sum(dim=1)).sum(dim=1, keepdim=True)
    (g_formula,) = torch.autograd.grad(formula, emb, g)
    ours = FMInteraction()(emb)
    (g_ours,) = torch.autograd.grad(ours, emb, g)
    torch.testing.assert_close(ours, formula)
    torch.testing.assert_close(g_ours, g_formula)
    assert torch.autograd.gradcheck(FMInteraction(), (emb.detach().requires_grad_(),))
    # by hand, one row: e = [[1, 2], [3, 4], [5, 6]], g = 1: d/d e_1 = sum_f e_f - e_1 = [8, 10]
    e = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], requires_grad=True)
    FMInteraction()(e).sum().backward()
    assert torch.equal(e.grad, torch.tensor([[[8.0, 10.0], [6.0, 8.0], [4.0, 6.0]]]))


def test_embedding_int32_and_int64_indices_give_the_same_rows() -> None:
    """Prepared data is int32: the int32 offset path must pick exactly the rows the int64 one does."""
    emb = FieldEmbedding(layout=_layout(cat=(3, 4)), dim=2, init_std=1.0)
    cat = torch.tensor([[0, 3], [2, 1]])
    out64 = emb(_batch(cat.tolist()))
    out32 = emb(Batch(cat=cat.int(), num=torch.zeros(2, 0), seq=(), label=torch.zeros(2)))
    assert torch.equal(out32, out64)
    assert torch.equal(out64[0, 1], emb.table.weight[3 + 3])  # field 1 starts at row 3
