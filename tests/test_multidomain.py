"""The multi-domain models (Shared-Bottom, MMoE, PLE, STAR): the domain condition, per-domain parameters
trained by their own domain's rows only, one domain = the obvious single-domain network, STAR's partitioned
normalisation by hand, gates that report by domain, and a cost that does not depend on the number of
domains. Their formulas are in tests/test_formulas.py."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from adactr.cli import main
from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.registry import build_model
from adactr.nn.adaptivity import measure_adaptivity
from adactr.nn.domain import DomainGroups, DomainLinear, StarLinear
from adactr.nn.multidomain import MultiDomainConfig, PartitionedNorm

MULTI = ("shared_bottom", "mmoe", "ple", "star")
LAYOUT = FieldLayout(names=("a", "b", "x"), cat_sizes=(5, 4), n_num=1, seq_sizes=(), seq_pooling=(), n_domains=6)
CONFIG = ModelConfig(embedding_dim=3, embedding_init_std=0.3, hidden=(6, 4),
                     multidomain=MultiDomainConfig(experts=2, expert_hidden=(5, 4), tower_hidden=(3,),
                                                   specific_experts=1, levels=2, aux_hidden=(2,), norm_min_rows=2))


def _batch(domain: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    B = len(domain)
    cat = torch.stack([torch.randint(0, n, (B,), generator=g) for n in LAYOUT.cat_sizes], dim=1)
    return Batch(cat=cat, num=torch.randn(B, 1, generator=g), seq=(),
                 label=torch.randint(0, 2, (B,), generator=g).float(),
                 domain=torch.tensor(domain, dtype=torch.int32))


@pytest.mark.parametrize("name", [*MULTI, "hmoe"])
def test_without_domains_a_one_line_config_error_names_domain(name: str) -> None:
    with pytest.raises(ConfigError, match="--domain") as e:
        build_model(name, layout=replace(LAYOUT, n_domains=0), config=CONFIG)
    assert "\n" not in str(e.value)
    model = build_model(name, layout=LAYOUT, config=CONFIG)
    with pytest.raises(ConfigError, match="--domain"):
        model(_batch([2, 3])._replace(domain=None))


def test_training_on_data_without_a_domain_column_fails_naming_domain(world_csv, tmp_path, capsys) -> None:
    data = tmp_path / "nodomain"
    assert main(["prepare", "--train", str(world_csv["train"]), "--valid", str(world_csv["valid"]),
                 "--out", str(data), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", "mmoe", "--out", str(tmp_path / "run"), "--quiet"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--domain" in err and len(err.splitlines()) == 1, err


def test_a_multi_domain_model_trains_and_evaluates_by_domain(world_data, tmp_path) -> None:
    out = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "mmoe", "--out", str(out), "--quiet",
                 "--set", "train.epochs=1", "--set", "model.multidomain.expert_hidden=[16]"]) == 0
    import json
    metrics = json.loads((out / "metrics.json").read_text())
    assert "adaptivity" in metrics  # the gates report (by domain)
    assert any("by_domain" in t for part in metrics["adaptivity"].values() for t in part.values())


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe", "hmoe", "ple"])
def test_apg_tower_layer_is_refused_for_a_model_whose_condition_is_the_domain(name: str) -> None:
    with pytest.raises(ConfigError, match="own condition"):
        build_model(name, layout=LAYOUT, config=replace(CONFIG, tower_layer=TowerLayer.APG))


def _per_domain(model: nn.Module) -> list[tuple[str, torch.Tensor, int]]:
    """(name, parameter, offset) of every per-domain parameter: row d - offset belongs to domain d."""
    out = []
    for mname, m in model.named_modules():
        if isinstance(m, DomainLinear):
            out += [(f"{mname}.weight", m.weight, 0), (f"{mname}.bias", m.bias, 0)]
        elif isinstance(m, StarLinear):
            out += [(f"{mname}.W_p", m.W_p, 2), (f"{mname}.b_p", m.b_p, 2)]
        elif isinstance(m, PartitionedNorm):
            out += [(f"{mname}.gamma_p", m.gamma_p, 2), (f"{mname}.beta_p", m.beta_p, 2)]
    if hasattr(model, "domain_embedding"):
        out.append(("domain_embedding", model.domain_embedding, 0))
    return out


@pytest.mark.parametrize("name", [*MULTI, "hmoe"])  # HMoE: by its task-constrained back-propagation
def test_a_domains_parameters_get_gradient_only_from_its_rows(name: str) -> None:
    torch.manual_seed(2)  # a draw where no ReLU of these tiny networks is dead for domain 3's rows
    model = build_model(name, layout=LAYOUT, config=CONFIG).double().eval()  # eval: PN on fixed statistics
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    batch = _batch([2, 3, 2, 5, 3, 2, 3, 5])  # domain 4 absent
    batch = batch._replace(num=batch.num.double())
    model(batch).pow(2).sum().backward()
    params = _per_domain(model)
    assert params
    grads = {n: p.grad.clone() for n, p, _ in params}
    for n, p, off in params:
        assert p.grad[4 - off].abs().sum() == 0, n  # an absent domain: no gradient
        assert p.grad[3 - off].abs().sum() > 0, n
    own = (batch.domain == 3).nonzero().squeeze(1)
    model.zero_grad()
    model(Batch(*(t[own] if isinstance(t, torch.Tensor) else t for t in batch))).pow(2).sum().backward()
    for n, p, off in params:  # domain 3's gradient is the same with every other domain's rows removed
        torch.testing.assert_close(p.grad[3 - off], grads[n][3 - off], msg=n)


def test_shared_bottom_of_one_domain_is_the_bottom_then_that_domains_tower() -> None:
    torch.manual_seed(1)
    model = build_model("shared_bottom", layout=LAYOUT, config=CONFIG).eval()
    batch = _batch([3] * 6)
    x = model.embedding(batch).flatten(1)
    layers: list[nn.Module] = []
    for lin in model.bottom.layers:
        layers += [lin, nn.ReLU()]
    for lin in [*model.towers.layers, model.towers.out]:
        plain = nn.Linear(lin.in_features, lin.out_features)
        with torch.no_grad():
            plain.weight.copy_(lin.weight[3]), plain.bias.copy_(lin.bias[3])
        layers += [plain, nn.ReLU()]
    want = nn.Sequential(*layers[:-1])(x).squeeze(1)
    torch.testing.assert_close(model(batch), want)


def test_star_of_one_domain_at_the_start_is_batch_norm_then_the_shared_network_plus_aux() -> None:
    # γ_p = 1, β_p = 0, W_p = 1, b_p = 0 at the start: PN is batch norm (training mode, batch statistics)
    # and every star layer is its shared centre
    torch.manual_seed(2)
    model = build_model("star", layout=LAYOUT, config=CONFIG).train()
    batch = _batch([4] * 8)
    x = model.embedding(batch).flatten(1)
    z = nn.functional.batch_norm(x, None, None, training=True, eps=model.norm.eps)
    h = z
    for lin in model.fcn.layers:
        h = torch.relu(h @ lin.W.T + lin.b)
    s_m = h @ model.fcn.out.W.T + model.fcn.out.b
    e = model.domain_embedding[4].expand(8, -1)
    s_a = model.aux(torch.cat([e, z], dim=1))
    torch.testing.assert_close(model(batch), (s_m + s_a).squeeze(1))


def test_partitioned_norm_by_hand() -> None:
    # one feature; domain 2 rows 1, 3 (mean 2, biased var 1, unbiased 2); domain 3 rows 10, 14, 18
    # (mean 14, biased var 32/3, unbiased 16); domain 4 one row (< min_rows: running statistics, not moved)
    pn = PartitionedNorm(1, n_domains=5, min_rows=2, eps=0.0, momentum=0.5)
    with torch.no_grad():
        pn.gamma_p[1].fill_(2.0)  # domain 3's γ_p
        pn.beta_p[0].fill_(1.0)  # domain 2's β_p
    x = torch.tensor([[1.0], [10.0], [3.0], [14.0], [7.0], [18.0]])
    g = DomainGroups.of(torch.tensor([2, 3, 2, 3, 4, 3]))
    y = pn(x, g).squeeze(1)
    s = (32 / 3) ** 0.5
    want = [-1 + 1, 2 * -4 / s, 1 + 1, 0.0, 7.0, 2 * 4 / s]  # domain 4: shared statistics, mean 0, var 1
    torch.testing.assert_close(y, torch.tensor(want))
    torch.testing.assert_close(pn.running_mean.squeeze(1), torch.tensor([0.0, 0.0, 1.0, 7.0, 0.0]))
    torch.testing.assert_close(pn.running_var.squeeze(1), torch.tensor([1.0, 1.0, 1.5, 8.5, 1.0]))
    assert pn.tracked.tolist() == [0, 0, 1, 1, 0]
    # evaluation: each row through its domain's running statistics, which do not move
    pn.eval()
    state = {k: v.clone() for k, v in pn.state_dict().items()}
    y = pn(torch.tensor([[2.0], [9.0], [5.0]]), DomainGroups.of(torch.tensor([2, 3, 4]))).squeeze(1)
    torch.testing.assert_close(y, torch.tensor([(2 - 1) / 1.5 ** 0.5 + 1, 2 * 2 / 8.5 ** 0.5,
                                                (5 - pn.shared_mean.item()) / pn.shared_var.item() ** 0.5]))
    assert all(torch.equal(v, pn.state_dict()[k]) for k, v in state.items())


def test_mmoe_and_ple_gates_report_how_they_differ_by_domain() -> None:
    torch.manual_seed(3)
    for name in ("mmoe", "ple"):
        model = build_model(name, layout=LAYOUT, config=CONFIG)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, DomainLinear) and m.out_features == 2 + (name == "ple"):
                    m.bias.copy_(torch.randn_like(m.bias) * 2)  # the domains' gates lean differently
        report = measure_adaptivity(model, [_batch([2, 3, 4, 5] * 16)])
        gates = {k: v for k, v in report.items() if "gate" in k}
        assert gates, report
        assert all(v["gate"]["by_domain"] > 0.05 for k, v in gates.items() if "shared" not in k), report


@pytest.mark.parametrize("name", MULTI)
def test_cost_per_row_does_not_depend_on_the_number_of_domains(name: str) -> None:
    batch = _batch([2, 3, 4, 2, 3, 2, 2, 5])
    flops = []
    for n_domains in (6, 300):
        torch.manual_seed(0)
        model = build_model(name, layout=replace(LAYOUT, n_domains=n_domains), config=CONFIG)
        with FlopCounterMode(display=False) as counter:
            model(batch).sum().backward()
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0


# ---- STAR's star-topology layers in any backbone's tower (model.tower_layer=star) ------------------------

STAR_TOWER = replace(CONFIG, tower_layer=TowerLayer.STAR)


@pytest.mark.parametrize("name", ["dnn", "dcnv2"])
def test_star_tower_at_init_is_the_backbone_with_the_shared_weights(name: str) -> None:
    # W_p = 1, b_p = 0 at the start: every domain computes the backbone's layers with the shared W, b
    star = build_model(name, layout=LAYOUT, config=STAR_TOWER).eval()
    plain = build_model(name, layout=LAYOUT, config=CONFIG).eval()
    assert sum(isinstance(m, StarLinear) for m in star.modules()) == len(CONFIG.hidden)
    rename = {".W": ".weight", ".b": ".bias"}  # StarLinear's shared centre is nn.Linear's weight and bias
    state = {next((k[:-len(a)] + b for a, b in rename.items() if k.endswith(a)), k): v
             for k, v in star.state_dict().items() if not k.endswith("_p")}
    plain.load_state_dict(state)
    batch = _batch([2, 3, 5, 1, 0, 4])
    torch.testing.assert_close(star(batch), plain(batch))


def test_star_tower_a_domains_factors_train_from_its_rows_only() -> None:
    model = build_model("dnn", layout=LAYOUT, config=STAR_TOWER)
    model(_batch([2, 2, 4])).sum().backward()
    layer = next(m for m in model.modules() if isinstance(m, StarLinear))
    touched = [d for d in range(LAYOUT.n_domains - 2) if layer.W_p.grad[d].abs().sum() > 0]
    assert touched == [0, 2]  # domain ids 2 and 4 are rows 0 and 2 of W_p; 3 and 5 had no rows


def test_star_tower_needs_domains_and_a_tower() -> None:
    with pytest.raises(ConfigError, match="--domain"):
        build_model("dnn", layout=replace(LAYOUT, n_domains=0), config=STAR_TOWER)
    with pytest.raises(ConfigError, match="no MLP tower"):
        build_model("fm", layout=LAYOUT, config=STAR_TOWER)
    with pytest.raises(ConfigError, match="own condition"):
        build_model("mmoe", layout=LAYOUT, config=STAR_TOWER)


def test_star_run_is_served_folded_and_evaluates_as_trained(world_data, tmp_path) -> None:
    import json

    from adactr.train.run import evaluate_run, load_run

    out = tmp_path / "star"
    assert main(["train", "--data", str(world_data), "--model", "star", "--out", str(out), "--quiet",
                 "--set", "train.epochs=1", "--set", "model.hidden=[16,8]"]) == 0
    served, *_ = load_run(out)
    assert not any(isinstance(m, StarLinear) for m in served.modules())  # W ⊙ W_p folded per domain
    assert any(isinstance(m, DomainLinear) for m in served.modules())
    metrics = json.loads((out / "metrics.json").read_text())
    again = evaluate_run(run=out, data=world_data, split="test")
    assert again["auc"] == pytest.approx(metrics["test"]["auc"], abs=1e-6)
    assert any("weight_norm" in part for part in metrics["adaptivity"].values())
