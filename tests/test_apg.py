"""APG (Yan et al., NeurIPS 2022): the five versions, the condition modes, v5 collapse, a model end to end."""

import dataclasses
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adactr.cli import main
from adactr.config import override, parse_sets, to_dict
from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch, SplitArrays
from adactr.errors import ConfigError
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.registry import build_model
from adactr.nn.apg import (
    Aggregation,
    APGCondition,
    APGConfig,
    APGLinear,
    APGVersion,
    ConditionMode,
    ConditionNorm,
    apg_layer_factory,
)
from adactr.nn.mlp import MLP
from adactr.train import checkpoint
from adactr.train.config import Device, RunConfig
from adactr.train.run import evaluate_run, load_run
from adactr.train.trainer import predict_logits

LAYOUT = FieldLayout(names=("user", "item", "ctx"), cat_sizes=(6, 7, 5), n_num=0, seq_sizes=(),
                     seq_pooling=())
V = APGVersion


@pytest.fixture(autouse=True)
def _own_rng():
    """The seeds set here must not leak into the global RNG state other test files start from."""
    with torch.random.fork_rng():
        yield


def cfg(**kw) -> APGConfig:
    # the paper's layer (no W_0 path) unless a test asks for it
    base = dict(rank=2, overparam_dim=6, condition=ConditionMode.GROUP, condition_fields=("user",),
                static_weight=False)
    return APGConfig(**{**base, **kw})


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


# ---- the versions ------------------------------------------------------------------------------------

def test_v4_by_hand():
    """U (S_i (V x)) with S_i = diag(z_i) generated: x = [1, 2, 3], z = [2, 3] -> [2, 6, 8]."""
    layer = APGLinear(3, 3, config=cfg(version=V.V4, condition_norm=ConditionNorm.NONE), cond_dim=2)
    out = layer.generator.net.out
    with torch.no_grad():
        out.weight.copy_(torch.tensor([[1.0, 0], [0, 0], [0, 0], [0, 1]]))  # vec(S_i) = [z1, 0, 0, z2]
        out.bias.zero_()
        layer.U.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
        layer.V.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    y = layer(torch.tensor([[1.0, 2, 3]]), torch.tensor([[2.0, 3]]))
    # V x = [1, 2]; S_i (V x) = [2, 6]; U (.) = [2, 6, 8]; static bias starts at 0
    assert torch.equal(y, torch.tensor([[2.0, 6, 8]]))


def test_v2_and_v3_are_the_same_function():
    torch.manual_seed(0)
    v2 = APGLinear(7, 5, config=cfg(version=V.V2, generate_bias=True), cond_dim=4)
    v3 = APGLinear(7, 5, config=cfg(version=V.V3, generate_bias=True), cond_dim=4)
    v3.load_state_dict(v2.state_dict())  # same generator, so the same U_i, S_i, V_i
    x, z = torch.randn(6, 7), torch.randn(6, 4)
    torch.testing.assert_close(v3(x, z), v2(x, z), atol=1e-6, rtol=1e-5)
    # v3 skips the (N, M) reconstruction of W_i (Table 1: O(NKK + NMK) less)
    assert flops(lambda: v3(x, z)) < flops(lambda: v2(x, z))


def test_v1_generates_the_whole_matrix():
    layer = APGLinear(3, 2, config=cfg(version=V.V1, condition_norm=ConditionNorm.NONE), cond_dim=1)
    out = layer.generator.net.out
    with torch.no_grad():
        out.weight.copy_(torch.arange(6.0).unsqueeze(1))  # vec(W_i) = z [0 1 2 3 4 5]
        out.bias.zero_()
    y = layer(torch.tensor([[1.0, 1, 1], [1.0, 1, 1]]), torch.tensor([[1.0], [2.0]]))
    assert torch.equal(y, torch.tensor([[3.0, 12], [6, 24]]))  # row sums of W_i = z [[0 1 2], [3 4 5]]


def test_v5_collapse_gives_the_same_outputs_and_folds_once():
    torch.manual_seed(1)
    layer = APGLinear(8, 5, config=cfg(version=V.V5, rank=2, overparam_dim=16), cond_dim=3)
    x, z = torch.randn(4, 8), torch.randn(4, 3)
    served = layer.collapse()
    torch.testing.assert_close(served(x, z), layer(x, z), atol=1e-6, rtol=1e-5)
    names = {n for n, _ in served.named_parameters()}
    assert {"U", "V", "bias"} <= names and not names & {"U_l", "U_r", "V_l", "V_r"}
    assert served.version is V.V4 and tuple(served.U.shape) == (5, 2) and tuple(served.V.shape) == (2, 8)
    assert "U_l" in dict(layer.named_parameters()) and layer.version is V.V5  # the original is untouched
    # no U^l U^r product per call: the served layer costs what a v4 layer costs, less than training form
    v4 = APGLinear(8, 5, config=cfg(version=V.V4, rank=2), cond_dim=3)
    assert flops(lambda: served(x, z)) == flops(lambda: v4(x, z)) < flops(lambda: layer(x, z))
    assert served.collapse() is served


def test_v5_with_p_equal_k_and_identity_factors_is_v4():
    torch.manual_seed(2)
    K = 3
    v5 = APGLinear(6, 4, config=cfg(version=V.V5, rank=K, overparam_dim=K), cond_dim=2)
    with torch.no_grad():
        v5.U_r.copy_(torch.eye(K))  # U = U^l I
        v5.V_l.copy_(torch.eye(K))  # V = I V^r
    v4 = APGLinear(6, 4, config=cfg(version=V.V4, rank=K), cond_dim=2)
    v4.load_state_dict({"U": v5.U_l, "V": v5.V_r, "bias": v5.bias,
                        **{k: t for k, t in v5.state_dict().items() if k.startswith("generator.")}})
    x, z = torch.randn(5, 6), torch.randn(5, 2)
    torch.testing.assert_close(v5(x, z), v4(x, z))


def test_gradients_reach_the_factors_and_the_generator():
    torch.manual_seed(3)
    layer = APGLinear(6, 4, config=cfg(version=V.V5, generator_hidden=(8,)), cond_dim=3)
    z = torch.randn(5, 3, requires_grad=True)
    layer(torch.randn(5, 6), z).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert {"U_l", "U_r", "V_l", "V_r"} <= {n for n, _ in layer.named_parameters()}
    assert z.grad is not None and z.grad.abs().sum() > 0  # and on to the condition embeddings


def test_forward_does_not_change_the_layer():
    layer = APGLinear(6, 4, config=cfg(version=V.V5), cond_dim=3)
    before = {k: t.clone() for k, t in layer.state_dict().items()}
    layer(torch.randn(2, 6), torch.randn(2, 3))
    after = layer.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


# ---- the conditions ----------------------------------------------------------------------------------

MODES = [(ConditionMode.GROUP, Aggregation.CONCAT, ("user",)),
         *[(ConditionMode.MIX_INPUT, a, ()) for a in Aggregation],
         *[(ConditionMode.MIX_OUTPUT, a, ("user", "item")) for a in Aggregation]]


def _layer(mode, agg, fields, version=V.V4, D=3, in_features=5):
    c = cfg(version=version, condition=mode, aggregation=agg, condition_fields=fields)
    builder = APGCondition(layout=LAYOUT, config=c, embedding_dim=D)
    return builder, apg_layer_factory(c, builder.dim, n_conditions=builder.n_conditions)(in_features, 4)


@pytest.mark.parametrize(("mode", "agg", "fields"), MODES, ids=lambda v: getattr(v, "value", str(v)))
def test_output_follows_the_condition_only(mode, agg, fields):
    torch.manual_seed(4)
    builder, layer = _layer(mode, agg, fields)
    x, emb = torch.randn(4, 5), torch.randn(4, 3, 3)  # x fixed; the condition comes from emb
    y = layer(x, builder(None, emb))
    moved = emb.clone()
    moved[:, 0, 0] += 1.0  # field "user" is a condition field in every mode here (one coordinate: a shift
    # of every coordinate at once is removed by the condition's LayerNorm)
    assert not torch.allclose(layer(x, builder(None, moved)), y)
    if mode is ConditionMode.GROUP:  # a field outside the group does not reach the parameters
        other = emb.clone()
        other[:, 2, 0] += 1.0
        torch.testing.assert_close(layer(x, builder(None, other)), y, atol=0, rtol=0)


def test_condition_shapes():
    emb = torch.randn(2, 3, 4)
    shapes = {}
    for mode, agg, fields in [*MODES, (ConditionMode.SELF, Aggregation.CONCAT, ())]:
        c = cfg(condition=mode, aggregation=agg, condition_fields=fields)
        z = APGCondition(layout=LAYOUT, config=c, embedding_dim=4)(None, emb)
        shapes[(mode.value, agg.value)] = None if z is None else tuple(z.shape)
    assert shapes == {("group", "concat"): (2, 4), ("mix_input", "concat"): (2, 12),
                      ("mix_input", "mean"): (2, 4), ("mix_input", "attention"): (2, 4),
                      ("mix_output", "concat"): (2, 2, 4), ("mix_output", "mean"): (2, 2, 4),
                      ("mix_output", "attention"): (2, 2, 4), ("self", "concat"): None}
    group = APGCondition(layout=LAYOUT, config=cfg(condition_fields=("item", "user")), embedding_dim=4)
    torch.testing.assert_close(group(None, emb), torch.cat([emb[:, 1], emb[:, 0]], dim=1))


def test_mix_output_mean_is_the_mean_of_the_branches():
    builder, layer = _layer(ConditionMode.MIX_OUTPUT, Aggregation.MEAN, ("user", "item"))
    x, z = torch.randn(3, 5), builder(None, torch.randn(3, 3, 3))
    expected = (layer.branches[0](x, z[:, 0]) + layer.branches[1](x, z[:, 1])) / 2
    torch.testing.assert_close(layer(x, z), expected)


def test_self_wise_generates_from_its_own_input():
    torch.manual_seed(5)
    layer = APGLinear(5, 4, config=APGConfig(version=V.V4, rank=2, condition=ConditionMode.SELF,
                                             condition_norm=ConditionNorm.NONE, static_weight=False))
    with torch.no_grad():
        layer.bias.zero_()
    x = torch.randn(3, 5)
    torch.testing.assert_close(layer(x, torch.randn(3, 7)), layer(x, None))  # an outside cond is ignored
    # a static bias-free layer is linear in x; here W_i = G(x_i) moves with x, so y(2x) != 2 y(x)
    assert not torch.allclose(layer(2 * x), 2 * layer(x), atol=1e-4)
    # with the condition layer-normalised, W_i depends on the direction of x only: y(2x) = 2 y(x), while
    # y(x + d) != y(x) + y(d) still
    normed = APGLinear(5, 4, config=APGConfig(version=V.V4, rank=2, condition=ConditionMode.SELF,
                                              static_weight=False))
    with torch.no_grad():
        normed.bias.zero_()
    torch.testing.assert_close(normed(2 * x), 2 * normed(x))
    d = torch.randn(3, 5)
    assert not torch.allclose(normed(x + d), normed(x) + normed(d), atol=1e-4)


@pytest.mark.parametrize("before", [True, False], ids=["before-dropout", "after-dropout"])
def test_a_self_wise_layer_in_a_tower_generates_from_its_input_before_dropout(before):
    def tower(before_dropout: bool) -> MLP:
        cfg = APGConfig(rank=2, condition=ConditionMode.SELF, condition_before_dropout=before_dropout)
        return MLP(input_dim=5, hidden=(6, 4), layer=lambda i, o: APGLinear(i, o, config=cfg), dropout=0.5)

    torch.manual_seed(6)
    net = tower(before).train()
    layer, seen = net.layers[1], {}
    layer.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    net(torch.randn(8, 5))
    x = seen["args"][0]  # (8, 6): the second layer's input, after the first layer's dropout
    if before:
        _, cond, source = seen["args"]  # the tower hands it the activations before dropout
        kept = x != 0
        assert cond is None and (~kept).any() and kept.any()
        torch.testing.assert_close(x[kept], 2 * source[kept])  # x = dropout(source), p = 0.5
    else:
        assert len(seen["args"]) == 2  # called as layer(x, cond): it generates from x
        source = x
    # eq. (7) + W_0 x + b with S_i generated from ``source``, computed here, not by the layer's forward
    S = layer.generator(source)["S"]  # (8, 2, 2)
    U, Vm = layer.U_l @ layer.U_r, layer.V_l @ layer.V_r  # (4, 2), (2, 6)
    want = torch.einsum("nk,bkj,jm,bm->bn", U, S, Vm, x) + x @ layer.W0.T + layer.bias  # (8, 4)
    torch.testing.assert_close(seen["out"], want)
    if before:  # the dropped-out input would have given other parameters
        assert not torch.allclose(layer.generator(x)["S"], S)
    # evaluation has no dropout, so the setting does not change the trained function
    other = tower(not before)
    other.load_state_dict(net.state_dict())
    z = torch.randn(3, 5)
    torch.testing.assert_close(other.eval()(z), net.eval()(z))


@pytest.mark.parametrize("version", list(V), ids=lambda v: v.value)
def test_batch_of_one_and_rows_are_independent(version):
    torch.manual_seed(6)
    modes = [*MODES, (ConditionMode.SELF, Aggregation.CONCAT, ())]
    for mode, agg, fields in modes:
        builder, layer = _layer(mode, agg, fields, version=version)
        x, emb = torch.randn(3, 5), torch.randn(3, 3, 3)
        z = builder(None, emb)
        one = layer(x[:1], None if z is None else z[:1])
        assert one.shape == (1, 4)
        torch.testing.assert_close(one, layer(x, z)[:1], atol=1e-6, rtol=1e-5)


# ---- invalid configurations --------------------------------------------------------------------------

def test_invalid_rank_p_and_fields_name_the_key():
    with pytest.raises(ConfigError, match=r"apg\.rank \(K\).*got 0"):
        APGConfig(rank=0)
    with pytest.raises(ConfigError, match=r"apg\.overparam_dim \(P\).*got -1"):
        APGConfig(overparam_dim=-1)
    with pytest.raises(ConfigError, match=r"apg\.overparam_dim \(P\) = 2 is below apg\.rank \(K\) = 4"):
        APGLinear(6, 4, config=cfg(version=V.V5, rank=4, overparam_dim=2), cond_dim=3)
    APGLinear(6, 4, config=cfg(version=V.V4, rank=4, overparam_dim=2), cond_dim=3)  # P unused by v4
    with pytest.raises(ConfigError, match=r"unknown field 'nope'; fields are: user, item, ctx"):
        APGCondition(layout=LAYOUT, config=cfg(condition_fields=("user", "nope")), embedding_dim=3)
    with pytest.raises(ConfigError, match="needs apg.condition_fields"):
        APGCondition(layout=LAYOUT, config=cfg(condition_fields=()), embedding_dim=3)
    with pytest.raises(ConfigError, match="not used by apg.condition=self"):
        apg_layer_factory(cfg(condition=ConditionMode.SELF), 0)
    with pytest.raises(ConfigError, match="'user' twice"):
        APGCondition(layout=LAYOUT, config=cfg(condition_fields=("user", "user")), embedding_dim=3)
    with pytest.raises(ConfigError, match="no (deep|MLP) tower"):
        build_model("lr", layout=LAYOUT, config=ModelConfig(tower_layer=TowerLayer.APG))


def test_static_ablation_is_a_fixed_rank_k_layer():
    """adaptive=false: S is one learned (K, K) matrix, the condition changes nothing, y = U S V x + b."""
    layer = APGLinear(3, 3, config=cfg(version=V.V4, adaptive=False), cond_dim=2)
    with torch.no_grad():
        (S,) = layer.generator.params
        S.copy_(torch.tensor([[2.0, 0], [0, 3]]))
        layer.U.copy_(torch.tensor([[1.0, 0], [0, 1], [1, 1]]))
        layer.V.copy_(torch.tensor([[1.0, 0, 0], [0, 1, 0]]))
    x = torch.tensor([[1.0, 2, 3], [1.0, 2, 3]])
    y = layer(x, torch.randn(2, 2))
    # V x = [1, 2]; S (V x) = [2, 6]; U (.) = [2, 6, 8] for both rows, whatever the condition
    assert torch.equal(y, torch.tensor([[2.0, 6, 8], [2.0, 6, 8]]))
    five = APGLinear(4, 3, config=cfg(version=V.V5, adaptive=False), cond_dim=2)
    x, z = torch.randn(5, 4), torch.randn(5, 2)
    assert torch.allclose(five.collapse()(x, z), five(x, z), atol=1e-6)
    assert torch.equal(five(x, z), five(x, torch.randn(5, 2)))
    assert "static" in repr(five)


def test_default_has_the_static_full_rank_path_and_false_is_the_papers_layer():
    on = APGLinear(6, 4, config=APGConfig(), cond_dim=0)
    off = APGLinear(6, 4, config=APGConfig(static_weight=False), cond_dim=0)
    assert on.W0.shape == (4, 6) and off.W0 is None
    assert sum(p.numel() for p in on.parameters()) == sum(p.numel() for p in off.parameters()) + 4 * 6
    assert "+ W_0 x" in repr(on) and "W_0" not in repr(off)


@pytest.mark.parametrize("version", list(V))
@pytest.mark.parametrize("condition", ["self", "group"])
def test_correction_starting_at_zero_is_the_static_layer_then_adapts(version, condition):
    """correction_starts_at_zero: a fresh layer is W_0 x + b exactly, for every instance; one Adam step
    later the generated core varies across instances (it trains, through the zeroed output layer)."""
    torch.manual_seed(0)
    kw = dict(static_weight=True, correction_starts_at_zero=True, version=version)
    c = cfg(**kw) if condition == "group" else cfg(condition=ConditionMode.SELF, condition_fields=(), **kw)
    layer = APGLinear(4, 3, config=c, cond_dim=2)
    with torch.no_grad():
        layer.bias.normal_()
    x, z = torch.randn(16, 4), torch.randn(16, 2)
    assert torch.equal(layer(x, z), x @ layer.W0.T + layer.bias)
    core = "W" if version is V.V1 else "S"
    assert torch.count_nonzero(layer.generated(x, z)[core]) == 0
    opt = torch.optim.Adam(layer.parameters(), lr=1e-2)
    for _ in range(2):  # v4/v5's U and V first move on step 2 (S is 0 on step 1)
        opt.zero_grad()
        (layer(x, z) - torch.randn(16, 3)).pow(2).mean().backward()
        opt.step()
    g = layer.generated(x, z)[core]  # (B, ...)
    assert g.std(0).mean() > 1e-3  # varies across instances
    assert not torch.allclose(layer(x, z), x @ layer.W0.T + layer.bias)


def test_correction_starting_at_zero_needs_the_static_path():
    with pytest.raises(ConfigError, match="correction_starts_at_zero needs apg.static_weight=true"):
        APGLinear(4, 3, config=cfg(correction_starts_at_zero=True), cond_dim=2)


def test_generator_l2_adds_its_rate_times_the_varying_weights_squared_to_the_loss():
    """generator_l2: rate x ||W_G||^2 (G's output weights, not its bias) per APG layer, in training only."""
    import torch.nn.functional as F

    from adactr.nn.penalty import collect_penalties
    from adactr.train.trainer import training_loss

    torch.manual_seed(0)
    apg = APGConfig(rank=2, generator_l2=0.3, condition=ConditionMode.SELF)
    model = build_model("dnn", layout=LAYOUT, config=ModelConfig(embedding_dim=3, hidden=(5, 4),
                                                                  tower_layer=TowerLayer.APG, apg=apg))
    cat = torch.stack([torch.randint(0, n, (8,)) for n in LAYOUT.cat_sizes], dim=1)
    batch = Batch(cat=cat, num=torch.zeros(8, 0), seq=(), label=torch.randint(0, 2, (8,)).float())
    layers = [m for m in model.modules() if isinstance(m, APGLinear)]
    by_hand = sum(0.3 * float(m.generator.net.out.weight.square().sum()) for m in layers)
    bce = F.binary_cross_entropy_with_logits(model(batch), batch.label)
    assert float(training_loss(model, batch)) == pytest.approx(float(bce) + by_hand, rel=1e-6)
    with collect_penalties() as terms:
        model(batch)
    assert list(terms) == ["apg_generator_l2"] and float(terms["apg_generator_l2"]) == pytest.approx(by_hand, rel=1e-6)
    with pytest.raises(ConfigError, match="generator_l2 must be >= 0"):
        APGConfig(generator_l2=-1.0)
    with pytest.raises(ConfigError, match="generator_l2 penalises the generator's instance-varying part"):
        APGConfig(generator_l2=0.1, adaptive=False).check()  # the static ablation has no generator


def test_w0_init_linear_starts_w0_as_nn_linear_does():
    torch.manual_seed(5)
    lecun = APGLinear(300, 200, config=APGConfig(), cond_dim=0).W0
    linear = APGLinear(300, 200, config=APGConfig(w0_init="linear"), cond_dim=0).W0
    assert float(lecun.std()) == pytest.approx(1 / 300 ** 0.5, rel=0.02)
    assert float(linear.std()) == pytest.approx(1 / (3 * 300) ** 0.5, rel=0.02)
    assert float(linear.abs().max()) <= 1 / 300 ** 0.5  # uniform on ±1/sqrt(M)
    with pytest.raises(ConfigError, match="apg.w0_init must be lecun or linear"):
        APGConfig(w0_init="xavier")


def test_default_p_follows_k():
    """overparam_dim=0 (the default) means P = 8 K, so changing only K keeps P >> K."""
    assert APGConfig().P == 32 and APGConfig(rank=16).P == 128 and APGConfig(rank=16, overparam_dim=20).P == 20
    layer = APGLinear(5, 3, config=APGConfig(rank=3), cond_dim=0)
    assert layer.U_l.shape == (3, 24) and layer.V_r.shape == (24, 5)


def test_rank_and_p_per_layer():
    """A list gives the i-th APG layer its own K and P; a wrong length names the keys and the count."""
    c = override(RunConfig(), parse_sets(["model.tower_layer=apg", "model.hidden=[8,6,4]",
                                          "model.apg.rank=[4,3,2]", "model.apg.overparam_dim=[8,0,5]"]))
    assert c.model.apg.rank == (4, 3, 2) and c.model.apg.overparam_dim == (8, 0, 5)
    model = build_model("deepfm", layout=LAYOUT, config=c.model)
    layers = [m for m in model.modules() if isinstance(m, APGLinear)]
    # (K, P, M): P = 0 -> 8 K; the input is 3 fields x embedding 10
    assert [(m.U_r.shape[1], m.U_l.shape[1], m.in_features) for m in layers] == [(4, 8, 30), (3, 24, 8), (2, 5, 6)]
    assert override(RunConfig(), parse_sets(["model.apg.rank=8"])).model.apg.rank == 8
    short = override(RunConfig(), parse_sets(["model.tower_layer=apg", "model.apg.rank=[4,3]"]))
    with pytest.raises(ConfigError, match="list 2 values, one per APG layer"):
        build_model("deepfm", layout=LAYOUT, config=short.model)  # default tower: 3 layers
    long = override(RunConfig(), parse_sets(["model.tower_layer=apg", "model.apg.rank=[4,3,2,2]"]))
    with pytest.raises(ConfigError, match="has 3 APG layers"):
        build_model("deepfm", layout=LAYOUT, config=long.model)
    with pytest.raises(ConfigError, match="different lengths"):
        APGConfig(rank=(2, 2), overparam_dim=(8, 8, 8)).check()
    with pytest.raises(ConfigError, match=r"P\) = 3 is below apg.rank \(K\) = 4 \(layer 1\)"):
        APGConfig(rank=(2, 4), overparam_dim=(8, 3)).check()
    with pytest.raises(ConfigError, match="apg.rank"):
        APGConfig(rank=(2, 0))


def test_config_keys_round_trip():
    sets = ["model.tower_layer=apg", "model.apg.version=v3", "model.apg.condition=mix_output",
            "model.apg.aggregation=attention", "model.apg.condition_fields=user_id,item_id",
            "model.apg.generator_hidden=[16]", "model.apg.generate_bias=true", "model.apg.adaptive=false"]
    c = override(RunConfig(), parse_sets(sets))
    assert c.model.apg == APGConfig(version=V.V3, condition=ConditionMode.MIX_OUTPUT,
                                    aggregation=Aggregation.ATTENTION,
                                    condition_fields=("user_id", "item_id"),
                                    generator_hidden=(16,), generate_bias=True, adaptive=False)
    saved = json.loads(json.dumps(to_dict(c)))
    assert saved["model"]["apg"]["condition_fields"] == ["user_id", "item_id"]
    assert override(RunConfig(), saved) == c
    with pytest.raises(ConfigError, match="model.apg.rank"):
        override(RunConfig(), parse_sets(["model.apg.rank=x"]))


# ---- in a model --------------------------------------------------------------------------------------

def _batch(n: int, seed: int) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, s, (n,), generator=g) for s in LAYOUT.cat_sizes], dim=1)
    return Batch(cat=cat, num=torch.zeros(n, 0), seq=(), label=torch.zeros(n))


def test_deepfm_with_apg_v5_serves_the_same_logits():
    torch.manual_seed(7)
    config = ModelConfig(embedding_dim=4, hidden=(8, 6), tower_layer=TowerLayer.APG,
                         apg=cfg(version=V.V5, condition_fields=("user",)))
    model = build_model("deepfm", layout=LAYOUT, config=config)
    assert isinstance(model.condition, APGCondition)
    with torch.no_grad():  # embeddings start near 0 (std 1e-4): make the group condition matter
        model.embedding.table.weight.normal_()
    batch = _batch(16, 0)
    served = model.for_inference()
    assert served is not model and not any(n.endswith("U_l") for n, _ in served.named_parameters())
    assert any(n.endswith("U_l") for n, _ in model.named_parameters())  # training form untouched
    torch.testing.assert_close(served(batch), model(batch), atol=1e-5, rtol=1e-5)
    # a freshly built model's served form has the same structure, so saved weights load into it
    fresh = build_model("deepfm", layout=LAYOUT, config=config).for_inference()
    fresh.load_state_dict(served.state_dict())
    torch.testing.assert_close(fresh(batch), model(batch), atol=1e-5, rtol=1e-5)
    linear = dataclasses.replace(config, tower_layer=TowerLayer.LINEAR)
    plain = build_model("deepfm", layout=LAYOUT, config=linear)
    assert plain.for_inference() is plain and plain.condition is None


def test_cli_train_apg_then_load_run_matches_the_trained_model(tmp_path, world_data):
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "deepfm", "--out", str(run),
                 "--set", "model.tower_layer=apg", "--set", "model.apg.version=v5",
                 "--set", "model.apg.condition=group", "--set", "model.apg.condition_fields=user_id",
                 "--set", "model.hidden=[16,8]", "--set", "train.epochs=1", "--set", "train.batch_size=512",
                 "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    served, schema, config, _ = load_run(run)
    assert config.model.apg.condition_fields == ("user_id",)
    weights = checkpoint.load_weights(run / "model.safetensors")
    assert any(k.endswith(".U") for k in weights) and not any(k.endswith("U_l") for k in weights)
    # the trained training form (best epoch, from the resume checkpoint) gives the served logits
    trained = build_model("deepfm", layout=schema.layout(), config=config.model)
    trained.load_state_dict(checkpoint.load_state(run / "last.pt")["best_model"])
    test = SplitArrays.load(world_data / "test").to_tensors(torch.device("cpu"))
    torch.testing.assert_close(predict_logits(served, test, 4096), predict_logits(trained, test, 4096),
                               atol=1e-5, rtol=1e-5)
    again = evaluate_run(run=run, data=world_data, device=Device.CPU)
    assert again["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-9)
    assert again["logloss"] == pytest.approx(metrics["test"]["logloss"], abs=1e-9)


@pytest.mark.parametrize("name", ["dcn", "dcnv2"])
def test_adaptive_cross_puts_apg_into_the_cross_layers(name):
    """Beyond the paper: model.adaptive_cross builds the cross layers' weights with the APG factory too."""
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model
    from adactr.nn.apg import APGLinear

    layout = FieldLayout(names=("a", "b", "c"), cat_sizes=(5, 7, 4), n_num=0, seq_sizes=(), seq_pooling=())
    sets = ["tower_layer=apg", "hidden=[8]", "embedding_dim=4", "cross_layers=2"]
    plain = build_model(name, layout=layout, config=override(ModelConfig(), parse_sets(sets)))
    cross = build_model(name, layout=layout, config=override(ModelConfig(), parse_sets([*sets, "adaptive_cross=true"])))
    count = lambda m: sum(isinstance(x, APGLinear) for x in m.cross.modules())  # noqa: E731
    assert count(plain) == 0 and count(cross) == 2
    torch.manual_seed(0)
    batch = Batch(cat=torch.randint(0, 4, (6, 3)), num=torch.zeros(6, 0), seq=(), label=torch.zeros(6))
    assert cross(batch).shape == (6,)
    assert torch.allclose(cross.for_inference()(batch), cross(batch), atol=1e-6)
