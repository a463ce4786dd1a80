"""Parts of the multi-domain models (Shared-Bottom, MMoE, PLE, STAR): the domain condition, per-domain
gates and towers, STAR's partitioned normalisation, and their settings (``model.multidomain.*``).

**The domain condition.** :class:`DomainCondition` is the builder in a model's condition seam
(``model.condition``): once per batch it groups the rows by domain (:meth:`DomainGroups.of`, one sort and
one host sync), and every per-domain part of the model gets that one grouping as its ``cond``. The domain
ids are ``Batch.domain`` (``adactr prepare --domain ...``); a model built for a layout without domains, or
handed a batch without them, raises a one-line :class:`ConfigError` naming ``--domain``.

**Cost.** Every per-domain part is computed for each sample's own domain only: ``DomainLinear`` layers
grouped by domain (towers, gates, PLE's specific experts), and STAR's per-domain scales and statistics
gathered per row (``(B, C)``). Nothing runs every domain's network on every sample (the public code's
``torch.where`` over all domains; ``shared/research/multidomain.md``), except where a model's definition
needs every domain's prediction on every row (HMoE: ``models/hmoe.py``, batched and without autograd).

>>> import torch
>>> gate = Gate(3, 2, n_domains=4)
>>> w = gate(torch.randn(5, 3), DomainGroups.of(torch.tensor([2, 3, 2, 0, 1])))
>>> w.shape, bool(torch.allclose(w.sum(1), torch.ones(5)))
(torch.Size([5, 2]), True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adactr.data.schema import RESERVED
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.nn.domain import DomainGroups, DomainLinear, domain_layer_factory
from adactr.nn.mlp import MLP, Activation, LayerFactory, Linear


@dataclass(frozen=True)
class MultiDomainConfig:
    """Settings of the multi-domain models (``model.multidomain.*``). STAR's star-topology FCN is the
    model's tower (``model.hidden``); the others use the experts and towers below."""

    # Shared experts of MMoE and PLE. The MMoE and PLE papers use a handful (MMoE's census study 8 for two
    # tasks; Scenario-Wise-Rec's ML-1M runs 3 for 3 domains). 4 keeps MMoE at 4 Shared-Bottom bottoms, and
    # their count does not grow with the number of domains (the gates choose among them)
    experts: int = 4
    # hidden sizes of every expert, and of Shared-Bottom's bottom (one expert, no gate), so that the three
    # models differ only in how they share; narrower than the DNN tower (400 x 3) because MMoE runs 4
    expert_hidden: tuple[int, ...] = (256, 128)
    # hidden sizes of each domain's tower (then a per-domain output layer). Towers are per-domain
    # parameters: n_domains x this size, so they are kept small (Scenario-Wise-Rec: [8] on ML-1M)
    tower_hidden: tuple[int, ...] = (64,)
    # PLE: each domain's own experts per level. One: the per-domain parameters are n_domains x one expert
    # per level (with hundreds of domains these dominate the model's size)
    specific_experts: int = 1
    # PLE: CGC levels. 1 is CGC (PLE's single-level form, Scenario-Wise-Rec's ML-1M setting); 2 is the
    # smallest stack that is PLE proper (the paper's progressive separation)
    levels: int = 2
    # STAR: hidden sizes of the auxiliary network on [domain embedding; normalised features]. The paper
    # keeps it much smaller than the main network; Scenario-Wise-Rec uses [32]
    aux_hidden: tuple[int, ...] = (32,)
    # STAR's PN: a domain with fewer rows than this in a training batch is normalised by its running
    # statistics (as in evaluation) and does not update them. The paper's batches hold one domain; in a mixed
    # batch a tail domain has a few rows, and batch statistics of n rows are degenerate (n = 1: no variance;
    # n = 2: every feature normalises to ±1, so no gradient reaches the embeddings). Batch norm's error
    # grows quickly below ~16 rows per batch (Wu & He, Group Normalization, ECCV 2018, Fig. 1)
    norm_min_rows: int = 16
    # HMoE: hidden sizes of each domain's relation net (x -> its weights over the domains' predictions). Its
    # output layer is per domain and over the domains, n_domains^2 x the last width parameters, so it is
    # narrow (MMLRec's task-weight net has [64]; the paper gives no size)
    relation_hidden: tuple[int, ...] = (16,)
    # HMoE: each domain's weight on its own prediction at the start. Uniform weights would give a domain's
    # own tower 1/n_domains of its rows' gradient (the others' predictions are stop-gradient); 0.9 starts
    # near MMoE and lets the relation nets learn how much to borrow
    relation_self_init: float = 0.9

    def check(self) -> None:
        for name, value in (("experts", self.experts), ("levels", self.levels)):
            if value < 1:
                raise ConfigError(f"model.multidomain.{name} must be >= 1, got {value}")
        if self.norm_min_rows < 2:
            raise ConfigError(f"model.multidomain.norm_min_rows must be >= 2, got {self.norm_min_rows}")
        if self.specific_experts < 0:
            raise ConfigError(f"model.multidomain.specific_experts must be >= 0, got {self.specific_experts}")
        if not 0.0 < self.relation_self_init < 1.0:
            raise ConfigError(f"model.multidomain.relation_self_init must be in (0, 1), got {self.relation_self_init}")
        for name, dims in (("expert_hidden", self.expert_hidden), ("tower_hidden", self.tower_hidden),
                           ("aux_hidden", self.aux_hidden), ("relation_hidden", self.relation_hidden)):
            if any(h < 1 for h in dims):
                raise ConfigError(f"model.multidomain.{name} sizes must be positive, got {list(dims)}")
        if not self.expert_hidden:
            raise ConfigError("model.multidomain.expert_hidden needs at least one layer")


def _needs_domain(model: str) -> ConfigError:
    return ConfigError(f"model {model!r} needs each row's domain: prepare the data with --domain COLUMN "
                       "(this dataset has no domain column)")


class DomainCondition(nn.Module):
    """The condition builder of the multi-domain models: ``forward(batch, emb) -> DomainGroups``, once per
    batch. ``n_domains`` is ``FieldLayout.n_domains`` (reserved ids included); 0 is a :class:`ConfigError`."""

    def __init__(self, *, n_domains: int, model: str) -> None:
        super().__init__()
        if n_domains <= RESERVED:
            raise _needs_domain(model)
        self.n_domains, self.model = n_domains, model

    def extra_repr(self) -> str:
        return f"n_domains={self.n_domains}"

    def forward(self, batch: Batch, emb: Tensor) -> DomainGroups:
        if batch.domain is None:
            raise _needs_domain(self.model)
        return DomainGroups.of(batch.domain)


def domain_ids(groups: DomainGroups) -> Tensor:
    """Each row's domain id in batch order, (B,) int64."""
    return groups.sorted_domain.index_select(0, groups.inverse).long()


class Gate(nn.Module):
    """A softmax gate over ``n`` experts: ``g(x) = softmax(W_{d} x + b_{d})`` with one gate per domain
    (``n_domains``: :class:`DomainLinear`, MMoE eq. 5 / PLE eq. 4 per domain), or one shared gate
    (``n_domains=None``). Reports its weights to the adaptivity diagnostic (``generated``): across
    instances, and between domains (``by_domain``): whether the domains really mix the experts differently.
    """

    def __init__(self, in_features: int, n: int, *, n_domains: int | None) -> None:
        super().__init__()
        self.linear: nn.Module = (Linear(in_features, n) if n_domains is None
                                  else DomainLinear(in_features, n, n_domains=n_domains))

    def forward(self, x: Tensor, cond: DomainGroups | None = None) -> Tensor:
        return torch.softmax(self.linear(x, cond), dim=-1)  # (B, n)

    def generated(self, x: Tensor, cond: DomainGroups | None = None) -> dict[str, Tensor]:
        # forward's arithmetic without calling self (the diagnostic calls this from a hook on forward)
        return {"gate": torch.softmax(self.linear(x, cond), dim=-1)}


def mix(weights: Tensor, experts: list[Tensor]) -> Tensor:
    """``sum_k w_k E_k``: weights (B, K), experts K x (B, H) -> (B, H)."""
    return torch.einsum("bk,bkh->bh", weights, torch.stack(experts, dim=1))  # (B, K, H) -> (B, H)


@dataclass(frozen=True)
class MLPStyle:
    """The activation, dropout and batch norm of the model's config, for every MLP a model builds."""

    activation: Activation
    dropout: float
    batch_norm: bool

    def mlp(self, input_dim: int, hidden: tuple[int, ...], *, layer: LayerFactory,
            output_dim: int | None = None, output_layer: LayerFactory = Linear) -> MLP:
        return MLP(input_dim=input_dim, hidden=hidden, output_dim=output_dim, layer=layer,
                   activation=self.activation, dropout=self.dropout, batch_norm=self.batch_norm,
                   output_layer=output_layer)


def domain_tower(input_dim: int, hidden: tuple[int, ...], *, n_domains: int, style: MLPStyle) -> MLP:
    """One tower per domain, output layer included: every layer a :class:`DomainLinear`, ``forward(h, groups)``
    -> (B, 1), each row through its own domain's tower."""
    per_domain = domain_layer_factory(DomainLinear, n_domains)
    return style.mlp(input_dim, hidden, layer=per_domain, output_dim=1, output_layer=per_domain)


class PartitionedNorm(nn.Module):
    """STAR's partitioned normalisation, PN (Sheng et al., CIKM 2021)::

        z' = (γ * γ_p) (z - μ_p) / sqrt(σ_p^2 + ε) + (β + β_p)

    for a row of domain ``p``: ``γ, β`` (C,) shared, ``γ_p, β_p`` (C,) the domain's own (ones and zeros at
    the start, so every domain starts as plain batch norm). In training, ``μ_p, σ_p^2`` are the mean and
    (biased) variance of domain ``p``'s rows *in the batch* (the paper's mini-batches hold one domain; in a
    mixed batch each domain is normalised by its own rows, as the paper's per-domain statistics intend),
    and each domain's running statistics move by ``momentum`` (unbiased variance, as ``BatchNorm1d``),
    under ``no_grad``, in training mode only. In evaluation each row uses its domain's running statistics.

    Choices the paper leaves open: a domain with fewer than ``min_rows`` rows in a training batch is
    normalised as in evaluation (its running statistics, not moved; batch statistics of a few rows are
    degenerate: see ``MultiDomainConfig.norm_min_rows``); a domain whose statistics were never updated uses
    the running statistics of all rows (``shared_mean``, ``shared_var``, moved by every training batch); the
    reserved ids ``<missing>`` and ``<unseen>`` have statistics like any domain but no ``γ_p, β_p`` (the
    shared affine alone, as :class:`StarLinear` uses the shared centre for them).
    """

    def __init__(self, num_features: int, *, n_domains: int, min_rows: int = 16, eps: float = 1e-5,
                 momentum: float = 0.1) -> None:
        super().__init__()
        if n_domains <= RESERVED or num_features < 1 or min_rows < 2:
            raise ValueError(f"PartitionedNorm needs num_features >= 1, n_domains > {RESERVED} and min_rows >= 2, "
                             f"got {num_features}, {n_domains}, {min_rows}")
        self.num_features, self.n_domains, self.eps, self.momentum = num_features, n_domains, eps, momentum
        self.min_rows = min_rows
        C, P = num_features, n_domains - RESERVED
        self.gamma = nn.Parameter(torch.ones(C))
        self.beta = nn.Parameter(torch.zeros(C))
        self.gamma_p = nn.Parameter(torch.ones(P, C))
        self.beta_p = nn.Parameter(torch.zeros(P, C))
        self.running_mean: Tensor
        self.running_var: Tensor
        self.tracked: Tensor
        self.shared_mean: Tensor
        self.shared_var: Tensor
        self.register_buffer("running_mean", torch.zeros(n_domains, C))
        self.register_buffer("running_var", torch.ones(n_domains, C))
        self.register_buffer("tracked", torch.zeros(n_domains, dtype=torch.long))  # updates per domain
        self.register_buffer("shared_mean", torch.zeros(C))
        self.register_buffer("shared_var", torch.ones(C))

    def extra_repr(self) -> str:
        return (f"{self.num_features}, n_domains={self.n_domains}, min_rows={self.min_rows}, eps={self.eps}, "
                f"momentum={self.momentum}")

    def forward(self, x: Tensor, cond: DomainGroups | None = None) -> Tensor:
        if not isinstance(cond, DomainGroups):
            raise ValueError("PartitionedNorm needs the batch's DomainGroups as its condition")
        d = domain_ids(cond)  # (B,)
        seen = (self.tracked.index_select(0, d) > 0).unsqueeze(1)  # (B, 1)
        mu = torch.where(seen, self.running_mean.index_select(0, d), self.shared_mean)  # (B, C)
        var = torch.where(seen, self.running_var.index_select(0, d), self.shared_var)  # (B, C)
        if self.training:  # each row's own domain's batch statistics, where it has min_rows rows
            mu, var = self._batch_statistics(x, d, mu, var)  # (B, C), (B, C)
        gamma_p = F.pad(self.gamma_p, (0, 0, RESERVED, 0), value=1.0).index_select(0, d)  # (B, C)
        beta_p = F.pad(self.beta_p, (0, 0, RESERVED, 0)).index_select(0, d)  # (B, C)
        return (self.gamma * gamma_p) * (x - mu) * torch.rsqrt(var + self.eps) + (self.beta + beta_p)

    def _batch_statistics(self, x: Tensor, d: Tensor, mu_run: Tensor, var_run: Tensor) -> tuple[Tensor, Tensor]:
        R, C = self.n_domains, self.num_features
        n = torch.bincount(d, minlength=R).to(x.dtype)  # (R,) rows per domain
        mean = x.new_zeros(R, C).index_add(0, d, x) / n.clamp_min(1).unsqueeze(1)  # (R, C)
        mu = mean.index_select(0, d)  # (B, C)
        var = x.new_zeros(R, C).index_add(0, d, (x - mu).square()) / n.clamp_min(1).unsqueeze(1)  # (R, C)
        moved = (n >= self.min_rows).unsqueeze(1)  # (R, 1): domains with enough rows for batch statistics
        own = moved.index_select(0, d)  # (B, 1)
        with torch.no_grad():  # the running statistics: BatchNorm's update, per domain, training only
            m = self.momentum
            unbiased = var * (n / (n - 1).clamp_min(1)).unsqueeze(1)  # (R, C)
            self.running_mean.copy_(torch.where(moved, (1 - m) * self.running_mean + m * mean, self.running_mean))
            self.running_var.copy_(torch.where(moved, (1 - m) * self.running_var + m * unbiased, self.running_var))
            self.tracked.add_(moved.squeeze(1).long())
            if x.shape[0] >= 2:
                self.shared_mean.mul_(1 - m).add_(m * x.mean(0))
                self.shared_var.mul_(1 - m).add_(m * x.var(0, unbiased=True))
        return torch.where(own, mu, mu_run), torch.where(own, var.index_select(0, d), var_run)


__all__ = ["DomainCondition", "Gate", "MLPStyle", "MultiDomainConfig", "PartitionedNorm", "domain_ids",
           "domain_tower", "mix"]
