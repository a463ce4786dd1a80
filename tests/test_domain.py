"""Per-domain layers (adactr.nn.domain): each sample through its own domain's parameters, checked by hand,
against a loop over samples, gradients confined to a domain's own rows, and a cost that does not depend on
the number of domains."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from adactr.nn.domain import DomainGroups, DomainLinear, StarLinear, domain_layer_factory
from adactr.nn.mlp import MLP


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
