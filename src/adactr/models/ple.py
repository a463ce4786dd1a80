"""PLE for multiple domains (Tang et al., "Progressive Layered Extraction (PLE): A Novel Multi-Task
Learning (MTL) Model for Personalized Recommendations", RecSys 2020: Customized Gate Control (CGC) levels
stacked progressively, with the domains as the tasks)::

    level l = 0..L-1 (CGC), inputs x_d^0 = x_s^0 = x = flatten(FieldEmbedding(batch))      (B, F D)
      E_{d,j}^l(x_d^l), j = 1..m_d     the row's own domain's specific experts            (B, H) each
      E_{s,k}^l(x_s^l), k = 1..m_s     shared experts                                     (B, H) each
      x_d^{l+1} = g_d^l(x_d^l) · [E_{d,1..m_d}^l ; E_{s,1..m_s}^l]      the domain's gate
      x_s^{l+1} = g_s^l(x_s^l) · [E_{d,1..m_d}^l ; E_{s,1..m_s}^l]      the shared module's gate (l < L-1)
    logit_i = tower_{d_i}(x_{d_i}^L)                                   the domain's tower

``m_s = model.multidomain.experts``, ``m_d = specific_experts``, ``L = levels`` (1 is CGC). The gates
are softmax gates (``g_d``: one per domain, :class:`adactr.nn.domain.DomainLinear`).

**Per-domain experts, per row.** A specific expert of domain d is an MLP of ``DomainLinear`` layers
indexed by d: each row passes through its own domain's specific experts only, grouped by domain once per
batch. In multi-task PLE every sample feeds every task, so the shared module's gate mixes *all* tasks'
specific experts; here a row belongs to one domain, and computing the others' experts for it would cost
``D`` times the work (what the public multi-domain code does). The shared gate therefore mixes the row's
own domain's specific experts and the shared ones: the same information a row's own domain path has, at
a cost per row that does not depend on the number of domains.
"""

from __future__ import annotations

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.domain import DomainGroups, DomainLinear, domain_layer_factory
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear
from adactr.nn.multidomain import DomainCondition, Gate, MLPStyle, domain_tower, mix


class CGCLevel(nn.Module):
    """One extraction level: the domain's specific experts, the shared experts, the domain gate and (for
    every level but the last) the shared gate. ``forward(x_d, x_s, groups) -> (x_d', x_s' or None)``."""

    def __init__(self, *, input_dim: int, n_domains: int, specific: int, shared: int, style: MLPStyle,
                 hidden: tuple[int, ...], layer: LayerFactory, last: bool) -> None:
        super().__init__()
        per_domain = domain_layer_factory(DomainLinear, n_domains)
        self.specific = nn.ModuleList(style.mlp(input_dim, hidden, layer=per_domain) for _ in range(specific))
        self.shared = nn.ModuleList(style.mlp(input_dim, hidden, layer=layer) for _ in range(shared))
        self.domain_gate = Gate(input_dim, specific + shared, n_domains=n_domains)
        self.shared_gate = None if last else Gate(input_dim, specific + shared, n_domains=None)

    def forward(self, x_d: Tensor, x_s: Tensor, groups: DomainGroups) -> tuple[Tensor, Tensor | None]:
        experts = [e(x_d, groups) for e in self.specific] + [e(x_s, groups) for e in self.shared]  # (B, H) each
        out_d = mix(self.domain_gate(x_d, groups), experts)  # (B, H)
        out_s = None if self.shared_gate is None else mix(self.shared_gate(x_s, groups), experts)  # (B, H)
        return out_d, out_s


class PLE(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        md = config.multidomain
        md.check()
        self.condition = DomainCondition(n_domains=layout.n_domains, model="ple")
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        style = MLPStyle(config.activation, config.dropout, config.batch_norm)
        dims = [layout.n_fields * config.embedding_dim] + [md.expert_hidden[-1]] * md.levels
        self.levels = nn.ModuleList(
            CGCLevel(input_dim=dims[i], n_domains=layout.n_domains, specific=md.specific_experts,
                     shared=md.experts, style=style, hidden=md.expert_hidden, layer=layer,
                     last=i == md.levels - 1)
            for i in range(md.levels))
        self.towers = domain_tower(dims[-1], md.tower_hidden, n_domains=layout.n_domains, style=style)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        groups = self.make_condition(batch, emb)  # the rows grouped by domain, once per batch
        x_d = x_s = emb.flatten(1)  # (B, F D)
        for level in self.levels:
            x_d, x_s = level(x_d, x_s, groups)  # (B, H), (B, H) or None after the last level
        return self.towers(x_d, groups).squeeze(-1)  # (B, 1) -> (B,)
