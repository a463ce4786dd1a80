"""Shared-Bottom for multiple domains (Caruana, "Multitask Learning", Machine Learning 1997; the
Shared-Bottom baseline of ADL, Li et al., SIGIR 2023, and of the multi-domain benchmarks): one bottom
network shared by every domain, then one tower per domain::

    x = flatten(FieldEmbedding(batch))                      (B, F D)
    h = bottom(x)                                           (B, H)   shared: model.multidomain.expert_hidden
    logit_i = tower_{d_i}(h_i)                              (B,)     each row through its own domain's tower

    Batch ──FieldEmbedding──> x ──bottom MLP(layer)──> h ──tower_{d_i} (DomainLinear layers)──> logit

The towers are :class:`adactr.nn.domain.DomainLinear` layers (``model.multidomain.tower_hidden``, then a
per-domain output layer), grouped by domain once per batch (the model's condition is the domain,
:class:`adactr.nn.multidomain.DomainCondition`): a row is computed by its own domain's tower only, so the
cost per row does not depend on the number of domains. The bottom's layers come from ``layer``.
"""

from __future__ import annotations

from torch import Tensor

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear
from adactr.nn.multidomain import DomainCondition, MLPStyle, domain_tower


class SharedBottom(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        md = config.multidomain
        md.check()
        self.condition = DomainCondition(n_domains=layout.n_domains, model="shared_bottom")
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        style = MLPStyle(config.activation, config.dropout, config.batch_norm)
        self.bottom = style.mlp(layout.n_fields * config.embedding_dim, md.expert_hidden, layer=layer)
        self.towers = domain_tower(self.bottom.output_dim, md.tower_hidden, n_domains=layout.n_domains,
                                   style=style)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        groups = self.make_condition(batch, emb)  # the rows grouped by domain, once per batch
        h = self.bottom(emb.flatten(1), groups)  # (B, H)
        return self.towers(h, groups).squeeze(-1)  # (B, 1) -> (B,)
