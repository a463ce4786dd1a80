"""The adaptivity diagnostic (adactr.nn.adaptivity) and APG's conditioning: a fresh APG layer adapts at any
condition scale, and a trained run reports how much its generated parameters vary."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from torch import Tensor, nn

from adactr.cli import main
from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.registry import build_model
from adactr.nn.adaptivity import adaptive_parts, measure_adaptivity
from adactr.nn.apg import Aggregation, APGConfig, APGLinear, APGVersion, ConditionMode, ConditionNorm

LAYOUT = FieldLayout(names=("user", "item", "ctx"), cat_sizes=(6, 7, 5), n_num=0, seq_sizes=(), seq_pooling=())


class Toy(nn.Module):
    """generated = {"g": [1 + c_i, 1]} with c_i the condition: a hand-checkable adaptive part."""

    def generated(self, x: Tensor, cond: Tensor | None = None) -> dict[str, Tensor]:
        assert cond is not None
        return {"g": torch.stack([1 + cond, torch.ones_like(cond)], dim=1)}  # (B, 2)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        return x


class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.part = Toy()

    def forward(self, batch: Batch) -> Tensor:
        return self.part(batch.num[:, 0], batch.num[:, 1])


def _batch(cond: list[float], domain: list[int] | None = None) -> Batch:
    n = len(cond)
    num = torch.stack([torch.zeros(n), torch.tensor(cond)], dim=1)
    return Batch(cat=torch.zeros(n, 0, dtype=torch.long), num=num, seq=(), label=torch.zeros(n),
                 domain=None if domain is None else torch.tensor(domain))


def test_measure_by_hand() -> None:
    # g = [2, 1] and [0, 1]: mean [1, 1] (norm sqrt 2); each row is 1 away from it: adaptivity 1 / sqrt 2.
    # Domains 0 and 1 hold one row each, so the whole spread is between domains: by_domain 1 / sqrt 2 too.
    out = measure_adaptivity(ToyModel(), [_batch([1.0], [0]), _batch([-1.0], [1])])
    assert out == {"part": {"g": {"adaptivity": pytest.approx(1 / math.sqrt(2)),
                                  "by_domain": pytest.approx(1 / math.sqrt(2))}}}
    # two domains with the same mix of rows: nothing between them
    same = measure_adaptivity(ToyModel(), [_batch([1.0, -1.0], [0, 0]), _batch([1.0, -1.0], [1, 1])])
    assert same["part"]["g"]["by_domain"] == pytest.approx(0.0, abs=1e-12)
    # unequal domains: g = [2, 1] twice in domain 0, [-1, 1] once in domain 1; mean [1, 1]; rows are 1, 1 and 2
    # away (adaptivity sqrt(2) / sqrt(2) = 1); domain means are 1 and 2 away, weighted 2 : 1 ->
    # sqrt((2 * 1 + 1 * 4) / 3) / sqrt(2) = 1
    uneven = measure_adaptivity(ToyModel(), [_batch([1.0, 1.0, -2.0], [0, 0, 1])])
    assert uneven["part"]["g"] == {"adaptivity": pytest.approx(1.0), "by_domain": pytest.approx(1.0)}
    static = measure_adaptivity(ToyModel(), [_batch([0.5, 0.5, 0.5])])
    assert static == {"part": {"g": {"adaptivity": 0.0}}}  # no domains: no by_domain
    # max_rows stops after the batch that reaches it
    two = measure_adaptivity(ToyModel(), [_batch([1.0]), _batch([-1.0]), _batch([5.0])], max_rows=2)
    assert two["part"]["g"]["adaptivity"] == pytest.approx(1 / math.sqrt(2))


def test_a_large_batch_is_measured_in_row_chunks_with_the_same_result(monkeypatch) -> None:
    """v3's W_i is (B, N, M): the diagnostic asks each part for at most DIAGNOSTIC_ROWS rows at a time, with
    the rows' own domains, and the moments come out as from one call."""
    import adactr.nn.adaptivity as ad

    model = ToyModel()
    asked: list[int] = []
    real = model.part.generated
    model.part.generated = lambda x, cond=None: (asked.append(x.shape[0]), real(x, cond))[1]  # type: ignore[method-assign]
    g = torch.Generator().manual_seed(0)
    batch = _batch(torch.randn(600, generator=g).tolist(), torch.randint(0, 3, (600,), generator=g).tolist())
    chunked = measure_adaptivity(model, [batch])
    assert asked == [256, 256, 88]
    monkeypatch.setattr(ad, "DIAGNOSTIC_ROWS", 10_000)
    whole = measure_adaptivity(model, [batch])
    assert asked[3:] == [600]
    assert chunked["part"]["g"] == {k: pytest.approx(v, rel=1e-12) for k, v in whole["part"]["g"].items()}


def test_models_without_adaptive_parts_report_nothing() -> None:
    model = build_model("deepfm", layout=LAYOUT, config=ModelConfig(embedding_dim=3, hidden=(4,)))
    assert adaptive_parts(model) == {} and measure_adaptivity(model, []) == {}


def test_mix_output_is_measured_once_through_its_branches() -> None:
    apg = APGConfig(condition=ConditionMode.MIX_OUTPUT, aggregation=Aggregation.MEAN, condition_fields=("user", "item"),
                    rank=2)
    model = build_model("dnn", layout=LAYOUT, config=ModelConfig(embedding_dim=3, hidden=(4, 3),
                                                                  tower_layer=TowerLayer.APG, apg=apg))
    assert list(adaptive_parts(model)) == ["tower.layers.0", "tower.layers.1"]
    cat = torch.stack([torch.randint(0, n, (16,)) for n in LAYOUT.cat_sizes], dim=1)
    out = measure_adaptivity(model, [Batch(cat=cat, num=torch.zeros(16, 0), seq=(), label=torch.zeros(16))])
    assert set(out["tower.layers.0"]) == {"0.S", "0.weight", "1.S", "1.weight"}
    assert model.training  # the mode it had is restored


def _brute_weight(layer: APGLinear, x: Tensor, z: Tensor) -> Tensor:
    """W_i = W_0 + (the version's generated weight), reconstructed in full: (B, N, M)."""
    g = layer.generated(x, z)
    v = layer.version
    if v is APGVersion.V1:
        W = g["W"]
    elif v in (APGVersion.V2, APGVersion.V3):
        W = g["U"] @ g["S"] @ g["V"]
    else:
        U, V = (layer.U, layer.V) if v is APGVersion.V4 else (layer.U_l @ layer.U_r, layer.V_l @ layer.V_r)
        W = U @ g["S"] @ V
    return W if layer.W0 is None else W + layer.W0


def _ratio_of(rows: Tensor) -> float:
    rows = rows.detach().flatten(1).double()
    mean = rows.mean(0)
    return float((rows - mean).square().sum(1).mean().sqrt() / mean.norm())


@pytest.mark.parametrize("version", list(APGVersion))
@pytest.mark.parametrize("static_weight", [False, True])
@pytest.mark.parametrize("shape", [(6, 5, 2), (3, 7, 4)])  # (M, N, K); the second has K > N
def test_the_weight_an_instance_gets_is_measured_exactly(version, static_weight, shape) -> None:
    """``diagnosed``'s "weight" has the adaptivity of W_i = W_0 + U S_i V reconstructed in full (its compact
    v4/v5 form is an isometry), and differs from S's: a correction starting at zero has a huge S ratio."""
    torch.manual_seed(3)
    M, N, K = shape
    c = APGConfig(version=version, rank=K, overparam_dim=8, condition=ConditionMode.GROUP, condition_fields=("u",),
                  static_weight=static_weight)
    layer = APGLinear(M, N, config=c, cond_dim=4).double()
    x, z = torch.randn(64, M, dtype=torch.float64), torch.randn(64, 4, dtype=torch.float64)
    with torch.no_grad():
        d = layer.diagnosed(x, z)
        assert _ratio_of(d["weight"]) == pytest.approx(_ratio_of(_brute_weight(layer, x, z)), rel=1e-9)
        assert set(d) - set(layer.generated(x, z)) == {"weight"}
    if version in (APGVersion.V4, APGVersion.V5) and static_weight:
        zero = APGLinear(M, N, config=dataclasses.replace(c, correction_starts_at_zero=True), cond_dim=4).double()
        opt = torch.optim.Adam(zero.parameters(), lr=1e-3)
        for _ in range(2):
            opt.zero_grad()
            zero(x, z).square().mean().backward()
            opt.step()
        with torch.no_grad():
            dz = zero.diagnosed(x, z)
            assert _ratio_of(dz["S"]) > 1 > 10 * _ratio_of(dz["weight"])  # S centred on ~0; W_0 carries the weight
            assert _ratio_of(dz["weight"]) == pytest.approx(_ratio_of(_brute_weight(zero, x, z)), rel=1e-9)


def _fresh_adaptivity(layer: APGLinear, z: Tensor, x: Tensor) -> float:
    (S,) = layer.generated(x, z).values()  # (B, K, K)
    S = S.detach().flatten(1).double()
    mean = S.mean(0)
    return float((S - mean).square().sum(1).mean().sqrt() / mean.norm())


@pytest.mark.parametrize("rms", [1e-4, 1.0])
@pytest.mark.parametrize("condition", [ConditionMode.GROUP, ConditionMode.SELF])
@pytest.mark.parametrize("hidden", [(), (64, 32)])
def test_a_fresh_layer_adapts_whatever_the_condition_scale(rms: float, condition: ConditionMode,
                                                           hidden: tuple[int, ...]) -> None:
    """The instance-varying part of S_i is of the order of its shared part for conditions of rms 1e-4 (the
    embeddings at initialisation) as for rms 1, with or without hidden generator layers."""
    cfg = APGConfig(rank=4, condition=condition, generator_hidden=hidden,
                    condition_fields=("user",) if condition is ConditionMode.GROUP else ())
    layer = APGLinear(40, 16, config=cfg, cond_dim=10)
    x, z = torch.randn(4096, 40) * rms, torch.randn(4096, 10) * rms
    assert 0.5 < _fresh_adaptivity(layer, z, x) < 2.0


@pytest.mark.parametrize("hidden", [(), (64, 32)])
def test_shared_and_varying_parts_start_at_half_the_variance_each(hidden: tuple[int, ...]) -> None:
    """S_i = shared + varying, each of rms sqrt(1/2) / sqrt(K) at initialisation, with or without hidden
    generator layers (whose mean activation belongs to the shared part, their spread to the varying one)."""
    K = 16
    cfg = APGConfig(rank=K, condition=ConditionMode.GROUP, condition_fields=("user",), generator_hidden=hidden)
    layer = APGLinear(40, 16, config=cfg, cond_dim=10)
    with torch.no_grad():
        (S,) = layer.generated(torch.zeros(8192, 40), torch.randn(8192, 10) * 1e-3).values()  # (B, K, K)
    mean = S.mean(0)  # (K, K): the shared part
    expected = math.sqrt(0.5 / K)
    assert abs(float(mean.square().mean().sqrt()) / expected - 1) < 0.1
    assert abs(float((S - mean).square().mean().sqrt()) / expected - 1) < 0.1


def test_without_normalisation_a_small_condition_starves_the_adaptive_part() -> None:
    """The failure the normalisation prevents: with condition_norm=none, S_i varies by rms(z) x its mean."""
    cfg = APGConfig(rank=4, condition=ConditionMode.GROUP, condition_fields=("user",),
                    condition_norm=ConditionNorm.NONE)
    layer = APGLinear(40, 16, config=cfg, cond_dim=10)
    assert _fresh_adaptivity(layer, torch.randn(4096, 10) * 1e-4, torch.randn(4096, 40)) < 1e-3


@pytest.mark.parametrize("norm", list(ConditionNorm))
@pytest.mark.parametrize(("generate_bias", "static_weight"), [(True, False), (False, True)])
def test_collapse_folds_every_part_and_draws_no_random_numbers(norm: ConditionNorm, generate_bias: bool,
                                                                 static_weight: bool) -> None:
    cfg = APGConfig(version=APGVersion.V5, rank=2, overparam_dim=6, condition=ConditionMode.SELF,
                    condition_norm=norm, generate_bias=generate_bias, static_weight=static_weight,
                    generator_hidden=(5,))
    layer = APGLinear(7, 4, config=cfg)
    x = torch.randn(9, 7)
    layer(x)  # batch norm: running statistics move away from their initial values
    layer.eval()
    state = torch.random.get_rng_state()
    served = layer.collapse()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not served.training and served.version is APGVersion.V4
    torch.testing.assert_close(served(x), layer(x), atol=1e-6, rtol=1e-5)
    assert (served.W0 is not None) == static_weight and (served.bias is None) == generate_bias


def test_per_layer_lists_run_over_the_tower_first_with_adaptive_cross() -> None:
    apg = APGConfig(rank=(2, 3, 4, 5), condition=ConditionMode.SELF)
    for name in ("dcn", "dcnv2"):
        cfg = ModelConfig(embedding_dim=3, hidden=(8, 6), cross_layers=2, tower_layer=TowerLayer.APG, apg=apg,
                          adaptive_cross=True)
        model = build_model(name, layout=LAYOUT, config=cfg)
        assert [layer.config.K for layer in model.tower.layers] == [2, 3], name  # the tower from the input up
        assert [layer.W.config.K if name == "dcnv2" else layer.w.config.K for layer in model.cross.layers] \
            == [4, 5], name


def test_a_trained_apg_run_reports_its_adaptivity(tmp_path, world_data, capsys) -> None:
    fast = ["--set", "model.hidden=[16,8]", "--set", "train.epochs=1", "--set", "train.batch_size=512", "--quiet"]
    run = tmp_path / "apg"
    assert main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(run), *fast,
                 "--set", "model.tower_layer=apg", "--set", "model.apg.condition=group",
                 "--set", "model.apg.condition_fields=[user_id]"]) == 0
    assert "adaptivity tower.layers.0: S" in capsys.readouterr().out
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["adaptivity"]) == {"tower.layers.0", "tower.layers.1"}
    for part in m["adaptivity"].values():
        assert part["S"]["adaptivity"] > 0 and "by_domain" in part["S"]  # the world has domains
    base = tmp_path / "base"
    assert main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(base), *fast]) == 0
    assert "adaptivity" not in json.loads((base / "metrics.json").read_text())


def test_plot_draws_the_adaptivity_of_the_runs_that_have_it(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from adactr.plot import figure, plot_runs

    hist = [{"epoch": 1, "train_loss": 0.5, "valid_auc": 0.7}]
    for name, extra in (("base", {}), ("apg", {"adaptivity": {"tower.layers.0": {"S": {"adaptivity": 0.3}},
                                                            "tower.layers.1": {"S": {"adaptivity": 0.05}}}})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.json").write_text(json.dumps(
            {"history": hist, "best_epoch": 1, "test": {"auc": 0.7}, **extra}))
    fig = figure({name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("base", "apg")})
    titles = [ax.get_title() for ax in fig.axes]
    assert any("adaptivity" in t for t in titles)
    ax = next(a for a in fig.axes if "adaptivity" in a.get_title())
    heights = sorted(round(p.get_height(), 6) for p in ax.patches)
    assert heights == [0.05, 0.3]  # one bar per APG layer of the run that has them
    assert plot_runs([tmp_path / "base", tmp_path / "apg"], tmp_path / "out.png").stat().st_size > 0
