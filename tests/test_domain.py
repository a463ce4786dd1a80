"""Per-domain layers (adactr.nn.domain): each sample through its own domain's parameters, checked by hand,
against a loop over samples, gradients confined to a domain's own rows, and a cost that does not depend on
the number of domains."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adactr.nn.domain import (
    DomainGroups,
    DomainLinear,
    StarLinear,
    domain_layer_factory,
    per_domain_parameters,
    set_sparse_domain_gradients,
)
from adactr.nn.mlp import MLP
from adactr.train.config import DomainOptimizer, TrainConfig
from adactr.train.lazy_adam import LazyAdam
from adactr.train.trainer import build_optimizers


def _ids(n: int, n_domains: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, n_domains, (n,), generator=torch.Generator().manual_seed(seed))


def test_domain_linear_by_hand() -> None:
    layer = DomainLinear(2, 1, n_domains=3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 1.0]]]))  # (3, 1, 2)
        layer.bias.copy_(torch.tensor([[0.0], [10.0], [100.0]]))
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    y = layer(x, torch.tensor([2, 0, 1, 2]))
    assert y.squeeze(1).tolist() == [103.0, 3.0, 16.0, 115.0]  # row order kept


@pytest.mark.parametrize("cls", [DomainLinear, StarLinear])
def test_equals_a_loop_over_samples_with_their_own_matrix(cls) -> None:
    torch.manual_seed(0)
    layer = cls(5, 3, n_domains=7)
    with torch.no_grad():  # away from the all-ones start, so that the domains differ
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x, d = torch.randn(40, 5), _ids(40, 7)
    y = layer(x, d)
    for i in range(40):
        k = int(d[i])
        if cls is DomainLinear:
            W, b = layer.weight[k], layer.bias[k]
        elif k < 2:  # <missing>, <unseen>: the shared centre alone
            W, b = layer.W, layer.b
        else:
            W, b = layer.W * layer.W_p[k - 2], layer.b + layer.b_p[k - 2]
        torch.testing.assert_close(y[i], W @ x[i] + b)
    torch.testing.assert_close(layer(x, DomainGroups.of(d)), y)  # the grouping made once per batch


@pytest.mark.parametrize("cls", [DomainLinear, StarLinear])
def test_a_domains_parameters_get_gradient_only_from_its_samples(cls) -> None:
    torch.manual_seed(1)
    layer = cls(4, 3, n_domains=6)
    x = torch.randn(12, 4, requires_grad=True)
    d = torch.tensor([2, 3, 2, 5, 3, 2, 5, 5, 3, 2, 0, 1])  # domain 4 absent
    layer(x, d).pow(2).sum().backward()
    per_domain = [p for n, p in layer.named_parameters() if n in ("weight", "bias", "W_p", "b_p")]
    row = (lambda k: k) if cls is DomainLinear else (lambda k: k - 2)
    for p in per_domain:
        assert p.grad[row(4)].abs().sum() == 0  # absent domain: no gradient at all
    # domain 3's gradient is the same with every other domain's rows removed from the batch
    own = d == 3
    grads = [p.grad[row(3)].clone() for p in per_domain]
    layer.zero_grad()
    layer(x[own], d[own]).pow(2).sum().backward()
    for p, g in zip(per_domain, grads, strict=True):
        torch.testing.assert_close(p.grad[row(3)], g)
    # and the input gradient of each row is that of its own domain's layer alone
    x2 = x.detach().clone().requires_grad_()
    layer(x2[:1], d[:1]).pow(2).sum().backward()
    x3 = x.detach().clone().requires_grad_()
    layer(x3, d).pow(2).sum().backward()
    torch.testing.assert_close(x3.grad[0], x2.grad[0])


def test_star_reserved_ids_use_the_shared_centre_and_start_as_it() -> None:
    torch.manual_seed(2)
    layer = StarLinear(3, 2, n_domains=5)
    x = torch.randn(6, 3)
    shared = x @ layer.W.T + layer.b
    torch.testing.assert_close(layer(x, torch.tensor([0, 1, 2, 3, 4, 2])), shared)  # at init every domain
    with torch.no_grad():
        layer.W_p.mul_(2.0)
        layer.b_p.add_(1.0)
    y = layer(x, torch.tensor([0, 1, 2, 3, 4, 2]))
    torch.testing.assert_close(y[:2], shared[:2])  # <missing>, <unseen>: still the centre
    torch.testing.assert_close(y[2:], 2 * (x[2:] @ layer.W.T) + layer.b + 1)
    assert layer.W_p.shape == (3, 2, 3)  # no parameters for the reserved ids


def _flops(layer: torch.nn.Module, x: torch.Tensor, d: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        layer(x, d).sum().backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("cls", [DomainLinear, StarLinear])
def test_matrix_products_cost_the_same_whatever_the_number_of_domains(cls) -> None:
    """Forward + backward multiply-adds of the products: those of one nn.Linear, at 3 and at 300 domains
    (the mask-every-domain approach would do 3x and 300x)."""
    x = torch.randn(512, 16, requires_grad=True)
    plain = torch.nn.Linear(16, 8)
    with FlopCounterMode(display=False) as counter:
        plain(x).sum().backward()
    dense = counter.get_total_flops()
    assert dense == 3 * 2 * 512 * 16 * 8  # y, dx, dW
    for n_domains in (3 + 2, 300 + 2):
        layer = cls(16, 8, n_domains=n_domains)
        assert _flops(layer, x, _ids(512, n_domains)) == dense, n_domains


def test_bad_condition_is_named() -> None:
    layer = DomainLinear(2, 2, n_domains=3)
    with pytest.raises(ValueError, match="needs the domain ids as its condition"):
        layer(torch.ones(2, 2), None)
    with pytest.raises(ValueError, match="domain id 3 is outside n_domains = 3"):
        layer(torch.ones(2, 2), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="1-D integer tensor"):
        layer(torch.ones(2, 2), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="n_domains >= 2"):
        StarLinear(2, 2, n_domains=1)


def test_in_a_tower_through_the_layer_factory() -> None:
    torch.manual_seed(3)
    tower = MLP(input_dim=6, hidden=(5, 4), layer=domain_layer_factory(DomainLinear, 4))
    x, d = torch.randn(10, 6), _ids(10, 4)
    y = tower(x, DomainGroups.of(d))
    assert y.shape == (10, 1)
    # row by row, each alone in its batch: the same outputs (no sample sees another domain's weights)
    torch.testing.assert_close(torch.cat([tower(x[i:i + 1], d[i:i + 1]) for i in range(10)]), y)


# ---- sparse per-domain gradients and the lazy optimiser (train.domain_optimizer=lazy_adam) --------------

def _tower(cls, n_domains: int = 7) -> MLP:
    torch.manual_seed(4)
    tower = MLP(input_dim=5, hidden=(4,), layer=domain_layer_factory(cls, n_domains),
                output_layer=domain_layer_factory(cls, n_domains)).double()
    with torch.no_grad():  # away from STAR's all-ones start, so that the domains differ
        for p in tower.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return tower


@pytest.mark.parametrize("cls", [DomainLinear, StarLinear])
def test_sparse_gradients_are_the_dense_ones_on_the_present_rows_only(cls) -> None:
    """float64: the same outputs and the same gradient numbers; the sparse gradient names the present rows
    only (domain 4 absent; STAR's reserved ids 0, 1 have no rows), the dense one has zeros there."""
    x = torch.randn(30, 5, dtype=torch.float64)
    d = torch.tensor([2, 3, 5, 6, 0, 1] * 5)
    dense, sparse = _tower(cls), _tower(cls)
    set_sparse_domain_gradients(sparse, True)
    y_dense, y_sparse = dense(x, d), sparse(x, d)
    torch.testing.assert_close(y_sparse, y_dense, rtol=0, atol=0)  # the same forward, bit for bit
    y_dense.square().sum().backward()
    y_sparse.square().sum().backward()
    own = [2, 3, 5, 6] if cls is DomainLinear else [0, 1, 3, 4]  # rows of weight / W_p with rows in the batch
    if cls is DomainLinear:
        own = [0, 1, *own]
    for pd, ps in zip(per_domain_parameters(dense), per_domain_parameters(sparse), strict=True):
        assert not pd.grad.is_sparse and ps.grad.is_sparse
        g = ps.grad.coalesce()
        assert g._indices()[0].tolist() == own  # nothing for an absent domain
        torch.testing.assert_close(g.to_dense(), pd.grad)  # the present rows' numbers, zeros elsewhere
    shared = [p for p in dense.parameters() if all(p is not q for q in per_domain_parameters(dense))]
    for pd, ps in zip(shared, [p for p in sparse.parameters() if not p.grad.is_sparse], strict=True):
        torch.testing.assert_close(ps.grad, pd.grad)  # STAR's centre, and nothing else changes


def _train(tower: MLP, optimiser: str, batches) -> list[torch.Tensor]:
    cfg = TrainConfig(domain_optimizer=DomainOptimizer(optimiser), lr=0.05)
    opts = build_optimizers(_AsModel(tower), cfg)
    for x, d in batches:
        for o in opts:
            o.zero_grad(set_to_none=True)
        tower(x, d).square().mean().backward()
        for o in opts:
            o.step()
    return [p.detach().clone() for p in tower.parameters()]


class _AsModel(torch.nn.Module):
    """A tower as the trainer sees a model: no embedding tables, its registry defaults those of a DNN."""

    def __init__(self, tower: MLP) -> None:
        super().__init__()
        self.tower = tower

    def embedding_parameters(self):
        return iter(())


@pytest.mark.parametrize("cls", [DomainLinear, StarLinear])
def test_lazy_adam_is_adam_when_every_domain_is_present(cls) -> None:
    g = torch.Generator().manual_seed(5)
    ids = torch.arange(7).repeat(4)  # every domain (reserved ids included) in every batch
    batches = [(torch.randn(28, 5, generator=g, dtype=torch.float64), ids[torch.randperm(28, generator=g)])
               for _ in range(6)]
    lazy, dense = _train(_tower(cls), "lazy_adam", batches), _train(_tower(cls), "dense", batches)
    assert any(not torch.equal(a, b) for a, b in zip(lazy, [p.detach() for p in _tower(cls).parameters()],
                                                      strict=True))  # it trained
    for a, b in zip(lazy, dense, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("cls", [DomainLinear, StarLinear])
def test_lazy_adam_leaves_absent_domains_and_their_moments_alone(cls) -> None:
    tower = _tower(cls)
    opts = build_optimizers(_AsModel(tower), TrainConfig(lr=0.05))  # unset: lazy with adam
    lazy = opts[-1]
    assert isinstance(lazy, LazyAdam) and lazy.param_groups[0]["params"] == per_domain_parameters(tower)
    g = torch.Generator().manual_seed(6)
    absent = 4  # domain id 4 (row 4 of weight, row 2 of W_p) never in a batch after the first
    row = absent if cls is DomainLinear else absent - 2

    def step(d: torch.Tensor) -> None:
        for o in opts:
            o.zero_grad(set_to_none=True)
        tower(torch.randn(len(d), 5, generator=g, dtype=torch.float64), d).square().mean().backward()
        for o in opts:
            o.step()

    step(torch.tensor([2, 3, 4, 5, 6, 4]))  # domain 4 trained once: its moments are not zero
    before = {id(p): (p[row].clone(), lazy.state[p]["exp_avg"][row].clone(), lazy.state[p]["exp_avg_sq"][row].clone())
              for p in per_domain_parameters(tower)}
    present = {id(p): p[row - 1].clone() for p in per_domain_parameters(tower)}
    for _ in range(3):
        step(torch.tensor([2, 3, 5, 6, 2, 3]))
    for p in per_domain_parameters(tower):
        w, m, v = before[id(p)]
        assert torch.equal(p[row], w) and torch.equal(lazy.state[p]["exp_avg"][row], m)  # untouched
        assert torch.equal(lazy.state[p]["exp_avg_sq"][row], v) and m.abs().sum() > 0
        assert not torch.equal(p[row - 1], present[id(p)])  # a present domain's row moved
        assert int(lazy.state[p]["step"]) == 4


def test_domain_optimizer_settings() -> None:
    from adactr.errors import ConfigError
    from adactr.train.config import Optimizer
    from adactr.train.config import domain_optimizer_of as domain_optimizer

    assert domain_optimizer(TrainConfig()) is DomainOptimizer.LAZY_ADAM
    assert domain_optimizer(TrainConfig(optimizer=Optimizer.SGD)) is DomainOptimizer.DENSE
    assert domain_optimizer(TrainConfig(clip_grad_norm=1.0)) is DomainOptimizer.DENSE
    with pytest.raises(ConfigError, match="clip_grad_norm") as e:
        domain_optimizer(TrainConfig(domain_optimizer=DomainOptimizer.LAZY_ADAM, clip_grad_norm=1.0))
    assert "\n" not in str(e.value)
    for kind in (Optimizer.SGD, Optimizer.FTRL, Optimizer.ADAGRAD):  # dense: every row, with train.optimizer
        tower = _tower(StarLinear)
        opts = build_optimizers(_AsModel(tower), TrainConfig(optimizer=kind, lr=0.05))
        assert len(opts) == 1 and not any(m.sparse for m in tower.modules() if hasattr(m, "sparse"))
        tower(torch.randn(6, 5, dtype=torch.float64), torch.tensor([2, 3, 4, 5, 6, 0])).sum().backward()
        opts[0].step()
    # lazy per-domain parameters beside sgd for the rest (STAR's centre), when asked for
    tower = _tower(StarLinear)
    opts = build_optimizers(_AsModel(tower), TrainConfig(optimizer=Optimizer.SGD, lr=0.05,
                                                          domain_optimizer=DomainOptimizer.LAZY_ADAM))
    assert [type(o).__name__ for o in opts] == ["SGD", "LazyAdam"]


def test_per_domain_layers_report_each_rows_domain_layer_to_the_adaptivity_diagnostic() -> None:
    torch.manual_seed(0)
    star = StarLinear(4, 3, n_domains=6)
    with torch.no_grad():
        star.W_p[1] *= 2  # domain 3: every weight doubled, so its unit norms double
        star.b_p[2] += 1  # domain 4: bias + 1
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 3])
    g = star.generated(torch.randn(7, 4), DomainGroups.of(ids))
    centre = torch.linalg.vector_norm(star.W, dim=1).detach()  # (out,) the shared layer's unit norms
    expect_norm = torch.stack([centre * (2 if d == 3 else 1) for d in ids.tolist()])
    expect_bias = torch.stack([star.b.detach() + (1 if d == 4 else 0) for d in ids.tolist()])
    torch.testing.assert_close(g["weight_norm"], expect_norm)
    torch.testing.assert_close(g["bias"], expect_bias)
    lin = DomainLinear(4, 3, n_domains=6)
    g = lin.generated(torch.randn(7, 4), DomainGroups.of(ids))
    for row, d in enumerate(ids.tolist()):
        torch.testing.assert_close(g["weight_norm"][row], torch.linalg.vector_norm(lin.weight[d], dim=1).detach())
        torch.testing.assert_close(g["bias"][row], lin.bias[d].detach())


def test_star_layer_served_form_folds_the_domain_factors_and_gives_the_same_outputs() -> None:
    torch.manual_seed(1)
    star = StarLinear(5, 3, n_domains=6)
    with torch.no_grad():
        star.W_p.normal_(1.0, 0.3)
        star.b_p.normal_(0.0, 0.3)
    served = star.collapse()
    assert isinstance(served, DomainLinear)
    torch.testing.assert_close(served.weight[3], star.W * star.W_p[1])  # domain 3 = row 1 of W_p
    torch.testing.assert_close(served.weight[1], star.W.detach())  # <unseen>: the shared centre
    ids = torch.tensor([0, 1, 2, 3, 4, 5, 5, 2])
    x = torch.randn(8, 5)
    torch.testing.assert_close(served(x, ids), star(x, ids))
    assert star.W_p.requires_grad and star.collapse().weight.shape == (6, 3, 5)  # unchanged, deterministic
