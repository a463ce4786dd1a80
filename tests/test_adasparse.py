"""AdaSparse (Yang et al., CIKM 2022): the pruner's forms by hand, the straight-through gradient, the sparsity
regulariser of eqs. (9)-(10), the α / λ̂ schedules (advanced by optimisation steps only, resumed exactly),
the served form that skips pruned inputs, and the adaptivity report (sparsity, overlap between domains)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch, SplitArrays
from adactr.errors import ConfigError
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.registry import build_model
from adactr.nn.adaptivity import measure_adaptivity
from adactr.nn.adasparse import AdaSparseConfig, AdaSparseLinear, FactorForm, PrunedLinear, step
from adactr.nn.mlp import MLP
from adactr.nn.penalty import collect_penalties
from adactr.nn.schedule import GeometricSchedule, advance_schedules, fit_schedules, schedules_of
from adactr.train import trainer as trainer_mod
from adactr.train.config import EarlyStopping, TrainConfig


def _sig(v: float) -> float:
    return 1 / (1 + math.exp(-v))


def _layer(form: FactorForm, bias: list[float], *, alpha: float = 1.0) -> AdaSparseLinear:
    """A 3-input layer whose pruner ignores its input: v = ``bias``; W = identity, b = 0."""
    layer = AdaSparseLinear(3, 3, config=AdaSparseConfig(form=form), cond_dim=2)
    with torch.no_grad():
        layer.pruner.weight.zero_()
        layer.pruner.bias.copy_(torch.tensor(bias))
        layer.linear.weight.copy_(torch.eye(3))
        layer.linear.bias.zero_()
        layer.alpha.value.fill_(alpha)
    return layer


def test_step_is_zero_at_and_below_zero_never_minus_one() -> None:
    assert step(torch.tensor([-2.0, 0.0, 1e-9, 3.0])).tolist() == [0.0, 0.0, 1.0, 1.0]


@pytest.mark.parametrize(("form", "want"), [
    # v = (-2, 0, 3), α = 1, β = 2, ε = 0.25
    (FactorForm.BINARIZATION, [0.0, 1.0, 1.0]),  # σ(-2) = 0.119 <= ε
    (FactorForm.SCALING, [2 * _sig(-2), 1.0, 2 * _sig(3)]),  # β σ(v), nothing pruned
    (FactorForm.FUSION, [0.0, 1.0, 2 * _sig(3)]),  # 2 σ(-2) = 0.238 <= ε
])
def test_factor_forms_by_hand(form: FactorForm, want: list[float]) -> None:
    layer = _layer(form, [-2.0, 0.0, 3.0])
    x, e_d = torch.tensor([[1.0, 2.0, 3.0]]), torch.zeros(1, 2)
    pi = layer.factors(x, e_d)
    torch.testing.assert_close(pi, torch.tensor([want]))
    torch.testing.assert_close(layer(x, e_d), x * torch.tensor([want]))  # W = I: y = h ⊙ π


def test_a_domain_only_pruner_reads_e_d_alone() -> None:
    """pruner_input=domain: v = W_p e_d + b_p by hand; the factors ignore h (rows of one domain share them)."""
    layer = AdaSparseLinear(3, 3, config=AdaSparseConfig(form=FactorForm.FUSION, pruner_input="domain"), cond_dim=2)
    assert layer.pruner.weight.shape == (3, 2)
    with torch.no_grad():
        layer.pruner.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
        layer.pruner.bias.copy_(torch.tensor([0.0, -3.0, 1.0]))
        layer.alpha.value.fill_(1.0)
    e_d = torch.tensor([[2.0, 0.0], [2.0, 0.0]])  # two rows of one domain, different inputs
    pi = layer.factors(torch.tensor([[1.0, 2.0, 3.0], [-5.0, 0.5, 9.0]]), e_d)
    v = [2.0, -3.0, -1.0]  # W_p e_d + b_p
    want = [2 * _sig(x) if 2 * _sig(x) > 0.25 else 0.0 for x in v]  # Fusion, β = 2, ε = 0.25
    torch.testing.assert_close(pi, torch.tensor([want, want]))
    assert want[1] == 0.0 and want[0] > 0  # one pruned input, for both rows
    with pytest.raises(ConfigError, match="pruner_input"):
        AdaSparseConfig(pruner_input="layer").check()
    with pytest.raises(ConfigError, match="pruner_before_dropout needs pruner_input=both"):
        AdaSparseConfig(pruner_input="domain", pruner_before_dropout=True).check()


@pytest.mark.parametrize("before", [True, False], ids=["before-dropout", "after-dropout"])
def test_a_pruner_in_a_tower_can_read_its_input_before_dropout(before: bool) -> None:
    """pruner_before_dropout: π from the undropped h^l, applied to the dropped-out h^l (computed by hand)."""
    cfg = AdaSparseConfig(form=FactorForm.SCALING, pruner_before_dropout=before)
    torch.manual_seed(3)
    tower = MLP(input_dim=4, hidden=(5, 3), layer=lambda i, o: AdaSparseLinear(i, o, config=cfg, cond_dim=2),
                dropout=0.5).train()
    layer, seen = tower.layers[1], {}
    layer.register_forward_hook(lambda m, args, out: seen.update(args=args, out=out))
    e_d = torch.randn(6, 2)
    tower(torch.randn(6, 4), e_d)
    x = seen["args"][0]  # (6, 5): h^l after the first layer's dropout
    h = seen["args"][2] if before else x  # what the pruner reads
    if before:
        kept = x != 0
        assert (~kept).any() and kept.any()
        torch.testing.assert_close(x[kept], 2 * h[kept])  # x = dropout(h), p = 0.5
    else:
        assert len(seen["args"]) == 2
    pi = 2.0 * torch.sigmoid(torch.cat([e_d, h], 1) @ layer.pruner.weight.T + layer.pruner.bias)  # β σ(v)
    torch.testing.assert_close(seen["out"], (x * pi) @ layer.linear.weight.T + layer.linear.bias)


def test_alpha_sharpens_binarization() -> None:
    # σ(0.1 * -5) = 0.38 > ε: kept while α is small; σ(5 * -5) ~ 0: pruned once α reaches 5
    assert _layer(FactorForm.BINARIZATION, [-5.0, 1.0, 1.0], alpha=0.1).factors(
        torch.ones(1, 3), torch.zeros(1, 2)).tolist() == [[1.0, 1.0, 1.0]]
    assert _layer(FactorForm.BINARIZATION, [-5.0, 1.0, 1.0], alpha=5.0).factors(
        torch.ones(1, 3), torch.zeros(1, 2)).tolist() == [[0.0, 1.0, 1.0]]


@pytest.mark.parametrize("form", [FactorForm.BINARIZATION, FactorForm.FUSION])
def test_straight_through_gradient_reaches_the_pruner(form: FactorForm) -> None:
    torch.manual_seed(0)
    layer = AdaSparseLinear(4, 2, config=AdaSparseConfig(form=form), cond_dim=3)
    layer(torch.randn(8, 4), torch.randn(8, 3)).sum().backward()
    assert layer.pruner.weight.grad is not None and layer.pruner.weight.grad.abs().sum() > 0


def test_sparsity_regulariser_is_zero_inside_the_band_and_the_papers_value_outside() -> None:
    layer = AdaSparseLinear(10, 2, config=AdaSparseConfig(form=FactorForm.BINARIZATION), cond_dim=1, share=0.5)
    inside = torch.ones(1, 10)
    inside[0, :2] = 0  # r = 0.2
    assert float(layer.sparsity_penalty(inside)) == 0.0
    inside[0, 2] = 0  # r = 0.3 > r_max: λ = λ̂ |0.3 - 0.2|, term = 1/L λ |0.3 - 0.2|
    outside = inside.clone().requires_grad_()
    term = layer.sparsity_penalty(outside)
    assert float(term.detach()) == pytest.approx(0.5 * 0.01 * 0.1 * 0.1)
    term.backward()  # d/dπ of 1/L λ |1 - mean(π) - r| (λ a weight): -1/L λ / N for every factor
    torch.testing.assert_close(outside.grad, torch.full((1, 10), -0.5 * 0.01 * 0.1 / 10))
    none = torch.ones(1, 10)  # r = 0 < r_min
    assert float(layer.sparsity_penalty(none)) == pytest.approx(0.01 * 0.2 * 0.2 * 0.5)


def test_forward_adds_the_regulariser_to_the_training_loss_only() -> None:
    layer = _layer(FactorForm.FUSION, [-2.0, 0.0, 3.0])  # r = 1/3 > r_max
    with collect_penalties() as terms:
        layer(torch.ones(4, 3), torch.zeros(4, 2))
    assert float(terms["adasparse_sparsity"].detach()) == pytest.approx(0.01 * (1 / 3 - 0.2) ** 2)
    with collect_penalties() as terms:
        _layer(FactorForm.SCALING, [-2.0, 0.0, 3.0])(torch.ones(4, 3), torch.zeros(4, 2))
    assert terms == {}  # Scaling never prunes: no regulariser


def test_geometric_schedule() -> None:
    s = GeometricSchedule(start=0.01, end=1.0, steps=4)
    assert [round(s.at(t), 6) for t in (0, 2, 4, 9)] == [0.01, 0.1, 1.0, 1.0]
    s.advance(2)
    assert float(s.value) == pytest.approx(0.1) and "value" in s.state_dict()


def test_a_horizon_in_epochs_is_fitted_to_the_data() -> None:
    """``epochs`` > 0: fit() turns it into round(epochs × steps an epoch) steps; a horizon in steps ignores it."""
    by_epochs = GeometricSchedule(start=0.1, end=5.0, steps=2000, epochs=1.5)
    by_steps = GeometricSchedule(start=0.1, end=5.0, steps=2000)
    fit_schedules([by_epochs, by_steps], steps_per_epoch=7)
    assert (by_epochs.steps, by_steps.steps) == (10, 2000)  # round(10.5) = 10 (banker's rounding)
    assert by_epochs.at(10) == pytest.approx(5.0) and by_epochs.at(5) == pytest.approx((0.1 * 5.0) ** 0.5)
    fit_schedules([by_epochs], steps_per_epoch=0)
    assert by_epochs.steps == 1  # never a zero horizon
    with pytest.raises(ConfigError, match="schedule_epochs must be >= 0"):
        AdaSparseConfig(schedule_epochs=-1).check()


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="beta must be >= 1"):
        AdaSparseConfig(beta=0.5).check()
    with pytest.raises(ConfigError, match="r_min / r_max"):
        AdaSparseConfig(r_min=0.3, r_max=0.2).check()


# ---- in a model, trained ----------------------------------------------------------------------------

LAYOUT = FieldLayout(names=("a", "b"), cat_sizes=(12, 30), n_num=0, seq_sizes=(), seq_pooling=(), n_domains=6)
CONFIG = ModelConfig(hidden=(16, 8), tower_layer=TowerLayer.ADASPARSE,
                     adasparse=AdaSparseConfig(schedule_steps=8, domain_dim=4))


def _data(n: int, seed: int):
    rng = np.random.default_rng(seed)
    cat = np.stack([rng.integers(2, s, n) for s in LAYOUT.cat_sizes], 1).astype(np.int32)
    domain = rng.integers(2, 6, n).astype(np.int64)
    label = (rng.random(n) < 1 / (1 + np.exp(-(cat[:, 0] % 3 - 1.0) * (domain - 3.5)))).astype(np.float32)
    return SplitArrays({"cat": cat, "num": np.zeros((n, 0), np.float32), "label": label, "domain": domain})


def _fit(run_dir, *, resume: bool = False, model_seed: int = 0):
    torch.manual_seed(model_seed)
    model = build_model("dnn", layout=LAYOUT, config=CONFIG)
    cfg = TrainConfig(batch_size=50, seed=1, progress=False, eval_every_steps=3, epochs=3, lr=0.01,
                      early_stopping=EarlyStopping.LOGLOSS)
    fit = trainer_mod.Trainer(config=cfg, device=torch.device("cpu"), run_dir=run_dir).fit(
        model, _data(200, 1), _data(300, 2).to_tensors(torch.device("cpu")), resume=resume)
    return fit, model


def test_schedules_advance_with_optimisation_steps_only(tmp_path) -> None:
    torch.manual_seed(0)
    model = build_model("dnn", layout=LAYOUT, config=CONFIG)
    assert len(schedules_of(model)) == 4  # α and λ̂ of each of the two pruned layers
    batch = Batch(cat=torch.tensor([[2, 3], [4, 5]]), num=torch.zeros(2, 0), seq=(), label=torch.zeros(2),
                  domain=torch.tensor([2, 3]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for mode in (True, False):
        model.train(mode)
        with torch.no_grad():
            model(batch)  # forwards, in training and evaluation mode, move nothing
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    layer = model.tower.layers[0]
    advance_schedules(schedules_of(model), 4)
    assert float(layer.alpha.value) == pytest.approx(0.1 * 50 ** 0.5)
    assert float(layer.lambda_hat.value) == pytest.approx(0.1)


def test_resume_continues_the_schedules_exactly(tmp_path, kill_after_first_epoch) -> None:
    """Evaluations every 3 of 4 steps an epoch: a run killed after its first evaluation resumes to the same
    history and weights, α and λ̂ included (a schedule restarted at 0 would change both)."""
    (tmp_path / "full").mkdir()
    full, full_model = _fit(tmp_path / "full")
    disarm = kill_after_first_epoch(when=None)
    (tmp_path / "killed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "killed")
    disarm()
    st = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert st["steps"] == 3
    assert float(st["model"]["tower.layers.0.alpha.value"]) == pytest.approx(0.1 * 50 ** (3 / 8))
    resumed, resumed_model = _fit(tmp_path / "killed", resume=True, model_seed=9)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert resumed.steps == full.steps == 12
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k
    last = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    assert float(last["tower.layers.1.lambda_hat.value"]) == pytest.approx(1.0)  # 12 steps > schedule_steps


def test_build_needs_domains_and_composes_into_dcnv2() -> None:
    with pytest.raises(ConfigError, match="--domain"):
        build_model("dnn", layout=replace(LAYOUT, n_domains=0), config=CONFIG)
    model = build_model("dcnv2", layout=LAYOUT, config=CONFIG)
    assert sum(isinstance(m, AdaSparseLinear) for m in model.modules()) == 2
    assert all(m.share == 0.5 for m in model.modules() if isinstance(m, AdaSparseLinear))
    with pytest.raises(ConfigError, match="cannot be applied"):
        build_model("star", layout=LAYOUT, config=CONFIG)


def _batches(n: int = 400, seed: int = 3):
    return list(_data(n, seed).to_tensors(torch.device("cpu")).batches(100))


def test_served_form_skips_pruned_inputs_with_equal_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("dnn", layout=LAYOUT, config=replace(CONFIG, hidden=(32, 32))).eval()
    with torch.no_grad():
        for layer in model.tower.layers:
            layer.alpha.value.fill_(5.0)
            layer.pruner.bias.normal_(0, 1)  # some inputs pruned for every row, some for a few
    served = model.for_inference()
    assert all(isinstance(m, PrunedLinear) for m in served.tower.layers)
    for batch in _batches():
        with torch.no_grad():
            torch.testing.assert_close(served(batch), model(batch), rtol=1e-5, atol=1e-6)
            one = Batch(cat=batch.cat[:1], num=batch.num[:1], seq=(), label=batch.label[:1], domain=batch.domain[:1])
            torch.testing.assert_close(served(one), model(one), rtol=1e-5, atol=1e-6)


def test_adaptivity_reports_sparsity_and_overlap_between_domains() -> None:
    torch.manual_seed(0)
    model = build_model("dnn", layout=LAYOUT, config=CONFIG)
    with torch.no_grad():
        for layer in model.tower.layers:
            layer.alpha.value.fill_(5.0)
    report = measure_adaptivity(model, _batches())
    first = report["tower.layers.0"]["factor"]
    assert 0 < first["sparsity"] < 1 and 0 < first["domain_overlap"] <= 1 and first["by_domain"] > 0
    with torch.no_grad():
        model.condition.table.weight[3:].copy_(model.condition.table.weight[2])  # every domain the same e_d
        model.tower.layers[0].pruner.weight[:, 4:].zero_()  # and a pruner that reads e_d only
    same = measure_adaptivity(model, _batches())["tower.layers.0"]["factor"]
    assert same["domain_overlap"] == pytest.approx(1.0) and same["adaptivity"] == pytest.approx(0.0, abs=1e-6)


def test_cli_trains_dnn_and_dcnv2_with_adasparse_and_reports_sparsity(tmp_path, world_data) -> None:
    import json

    from adactr.cli import main

    for model in ("dnn", "dcnv2"):
        out = tmp_path / model
        assert main(["train", "--data", str(world_data), "--out", str(out), "--model", model, "--quiet",
                     "--set", "model.tower_layer=adasparse", "--set", "model.hidden=[16,8]",
                     "--set", "train.epochs=1", "--set", "train.batch_size=500"]) == 0
        report = json.loads((out / "metrics.json").read_text())["adaptivity"]
        assert set(report) == {"tower.layers.0", "tower.layers.1"}
        assert {"sparsity", "domain_overlap", "by_domain"} <= set(report["tower.layers.1"]["factor"])


def test_a_schedule_longer_than_the_run_is_named_in_a_warning(tmp_path, world_data) -> None:
    """One epoch of a few steps with the default 2000-step horizon: the kept weights hold α and λ̂ short of
    their end, and training says so (on the built-in click world with 300 domains the default left α at ~0.4
    and nothing pruned); a horizon within the run warns nothing."""
    import warnings

    from adactr.cli import main

    args = ["train", "--data", str(world_data), "--model", "dnn", "--quiet", "--set", "model.tower_layer=adasparse",
            "--set", "model.hidden=[16,8]", "--set", "train.epochs=1", "--set", "train.batch_size=500"]
    with pytest.warns(UserWarning, match=r"schedule\(s\) had not reached their end .* tower\.layers\.0\.alpha at "
                                         r"[0-9.]+ of 5.*model\.adasparse\.schedule_steps"):
        assert main([*args, "--out", str(tmp_path / "long")]) == 0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main([*args, "--out", str(tmp_path / "short"), "--set", "model.adasparse.schedule_steps=1"]) == 0
        # a horizon in epochs that fits the run: the schedule ends within it, whatever the data's size
        assert main([*args, "--out", str(tmp_path / "epochs"), "--set", "model.adasparse.schedule_epochs=1"]) == 0
    assert not [w for w in seen if "schedule(s)" in str(w.message)]
    from safetensors.torch import load_file
    assert float(load_file(tmp_path / "epochs" / "model.safetensors")["tower.layers.0.alpha.value"]) == 5.0
    with pytest.warns(UserWarning, match=r"had not reached their end .*model\.adasparse\.schedule_epochs"):
        assert main([*args, "--out", str(tmp_path / "two"), "--set", "model.adasparse.schedule_epochs=2"]) == 0
