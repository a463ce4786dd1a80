"""MMoE for multiple domains (Ma et al., "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts", KDD 2018: y_k = h^k(f^k(x)), f^k(x) = sum_i g^k(x)_i f_i(x),
g^k(x) = softmax(W_gk x), with the domains as the tasks k)::

    x = flatten(FieldEmbedding(batch))                      (B, F D)
    f_k(x), k = 1..K                                        K shared experts (MLPs), each (B, H)
    g^d(x) = softmax(W_{g,d} x + b_{g,d})                   (B, K)   one gate per domain
    logit_i = h^{d_i}( sum_k g^{d_i}(x_i)_k f_k(x_i) )      (B,)     one tower per domain

The experts are shared and their count (``model.multidomain.experts``) does not depend on the number of
domains; each gate and each tower is a per-domain :class:`adactr.nn.domain.DomainLinear` stack, grouped
by domain once per batch: a row reads only its own domain's gate and tower (the public code runs every
domain's gate and tower on every row and keeps one with a mask). The gates report their weights to the
adaptivity diagnostic (``by_domain``: how differently the domains mix the experts).
"""

from __future__ import annotations

from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.domain import DomainGroups
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear
from adactr.nn.multidomain import DomainCondition, Gate, MLPStyle, domain_tower, mix


class MMoE(CTRModel):
    NAME = "mmoe"  # the registered name, for its error messages (HMoE extends this model)

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        md = config.multidomain
        md.check()
        self.condition = DomainCondition(n_domains=layout.n_domains, model=self.NAME)
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        style = MLPStyle(config.activation, config.dropout, config.batch_norm)
        d = layout.n_fields * config.embedding_dim
        self.experts = nn.ModuleList(style.mlp(d, md.expert_hidden, layer=layer) for _ in range(md.experts))
        self.gate = Gate(d, md.experts, n_domains=layout.n_domains)
        self.towers = domain_tower(md.expert_hidden[-1], md.tower_hidden, n_domains=layout.n_domains,
                                   style=style)

    def forward(self, batch: Batch) -> Tensor:
        groups, x, experts = self.shared_part(batch)
        h = mix(self.gate(x, groups), experts)  # (B, K) x K (B, H) -> (B, H)
        return self.towers(h, groups).squeeze(-1)  # (B, 1) -> (B,)

    def shared_part(self, batch: Batch) -> tuple[DomainGroups, Tensor, list[Tensor]]:
        """The rows grouped by domain (once per batch), ``x`` (B, F D) and the K shared experts' outputs
        K x (B, H): what every domain's gate and tower read."""
        emb = self.embedding(batch)  # (B, F, D)
        groups = self.make_condition(batch, emb)
        assert isinstance(groups, DomainGroups)  # the condition is the domain (DomainCondition)
        x = emb.flatten(1)  # (B, F D)
        return groups, x, [f(x, groups) for f in self.experts]
