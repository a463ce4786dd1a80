"""STAR (Sheng et al., "One Model to Serve All: Star Topology Adaptive Recommender for Multi-Domain CTR
Prediction", CIKM 2021): partitioned normalisation, a star-topology fully-connected network, and an
auxiliary network on the domain indicator whose logit is added::

    x = flatten(FieldEmbedding(batch))                                  (B, F D)
    z = PN_p(x) = (γ * γ_p) (x - μ_p) / sqrt(σ_p^2 + ε) + (β + β_p)    partitioned normalisation
    h^{l+1} = act((W^l ⊙ W_p^l) h^l + (b^l + b_p^l)),  h^0 = z          star-topology FCN (model.hidden)
    s_m = (W^o ⊙ W_p^o) h^L + (b^o + b_p^o)                              its output layer, star too
    s_a = aux([e_p; z])                                                   auxiliary network (aux_hidden)
    logit = s_m + s_a                                                     (the sigmoid is in the loss)

for a row of domain ``p``. PN keeps per-domain running statistics (updated in training mode only, used
in evaluation; :class:`adactr.nn.multidomain.PartitionedNorm`); every FCN layer, the output layer
included, is a :class:`adactr.nn.domain.StarLinear` (shared ``W``, ``b`` times / plus the domain's own);
``e_p`` is a learned embedding of the domain indicator. Every per-domain part is grouped or gathered by
domain once per batch, so a row's cost does not depend on the number of domains.

Unlike the public implementations (``shared/research/multidomain.md``): PN has running statistics per
domain and uses them in evaluation (Scenario-Wise-Rec normalises by the mixed batch, in evaluation too);
no activation or normalisation follows the 1-unit output layer (Scenario-Wise-Rec's STAR logit is >= 0
before the auxiliary logit); every domain's parameters are registered and trained (MMLRec keeps all but
the last in a Python list); the auxiliary network exists and sees the domain indicator (CDC drops it;
Scenario-Wise-Rec feeds it no domain input on ML-1M); mixed-domain batches are supported (MAMDR assumes
one domain per batch). The auxiliary input is the domain embedding with the normalised features (the paper:
"the domain indicator ... and other features depicting the domain"; MAMDR's maintainer reads it as all
features). The reserved ids ``<missing>`` / ``<unseen>`` use the shared parts alone (``StarLinear``, PN's
shared affine), and their own domain embedding rows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.nn.domain import StarLinear, domain_layer_factory
from adactr.nn.embedding import FieldEmbedding
from adactr.nn.mlp import LayerFactory, Linear
from adactr.nn.multidomain import DomainCondition, MLPStyle, PartitionedNorm, domain_ids


class STAR(CTRModel):
    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__()
        if layer is not Linear:
            raise ConfigError("model 'star' builds its network with StarLinear layers, so a layer factory "
                              "cannot be applied to it")
        md = config.multidomain
        md.check()
        self.condition = DomainCondition(n_domains=layout.n_domains, model="star")
        self.embedding = FieldEmbedding(layout=layout, dim=config.embedding_dim,
                                        init_std=config.embedding_init_std)
        d, D = layout.n_fields * config.embedding_dim, config.embedding_dim
        style = MLPStyle(config.activation, config.dropout, config.batch_norm)
        self.norm = PartitionedNorm(d, n_domains=layout.n_domains, min_rows=md.norm_min_rows)
        star = domain_layer_factory(StarLinear, layout.n_domains)
        self.fcn = style.mlp(d, config.hidden, layer=star, output_dim=1, output_layer=star)
        # e_p: the domain indicator's embedding, a gathered (B, D) row per sample (dense gradient)
        std = config.embedding_init_std if config.embedding_init_std is not None else 1e-4
        self.domain_embedding = nn.Parameter(torch.randn(layout.n_domains, D) * std)
        self.aux = style.mlp(D + d, md.aux_hidden, layer=Linear, output_dim=1)

    def forward(self, batch: Batch) -> Tensor:
        emb = self.embedding(batch)  # (B, F, D)
        groups = self.make_condition(batch, emb)  # the rows grouped by domain, once per batch
        z = self.norm(emb.flatten(1), groups)  # (B, F D)
        s_m = self.fcn(z, groups)  # (B, 1)
        e_p = self.domain_embedding.index_select(0, domain_ids(groups))  # (B, D)
        s_a = self.aux(torch.cat([e_p, z], dim=1))  # (B, 1)
        return (s_m + s_a).squeeze(-1)  # (B,)
