"""HMoE for multiple domains (Li et al., "Improving Multi-Scenario Learning to Rank in E-commerce by
Exploiting Task Relationships in the Label Space", CIKM 2020): MMoE in the feature space, plus a model of
how the domains' *predictions* relate, in the label space, trained with task-constrained back-propagation.

    x = flatten(FieldEmbedding(batch))                      (B, F D)
    z_j(x) = h^j( sum_k g^j(x)_k f_k(x) )                   (B, R)   every domain j's MMoE logit (gate and tower j)
    log w_i(x) = log_softmax_j( r_i(x) )                    (B, R)   domain i's relation net, over the domains
    p_i(x) = w_ii σ(z_i) + sum_{j≠i} w_ij σ(sg[z_j])        (B,)     the row's own domain i = d_x
    logit_i = log sum_j w_ij σ(z_j) - log sum_j w_ij σ(-z_j)         = logit(p_i), exactly

              ┌─ gate_i, tower_i (grouped, with gradient) ──────> z_i ──┐
    Batch ─> x ─ experts ┤                                                ├─ σ, mix by w_i(x) ─> logit(p_i)
              └─ every gate_j, tower_j (no gradient, batched) ──> z_j ──┘
              └─ relation net r_i (grouped) ──────────────────> w_i ──┘

The feature-space part is :class:`adactr.models.mmoe.MMoE` itself (its experts, per-domain gates and towers;
this class extends it). ``sg`` is the stop-gradient.

**Choices** (the paper's abstract leaves them open; ``shared/research/multidomain.md``):

* *Probability space.* The mixture is of click probabilities ``σ(z_j)``: that is the label space, and a
  mixture of calibrated probabilities is a probability. Mixing logits would be a weighted geometric pooling
  of odds, a different model. MMLRec mixes the 64-d *hidden* tower vectors and then applies domain i's
  output layer: that is a mixture in the feature space (one more MMoE-like layer), not the label space.
  The trainer needs a logit; ``logit(p_i)`` is computed in log space (``1 - p_i = sum_j w_ij σ(-z_j)``
  because the weights sum to 1), two ``logsumexp`` of ``log w_ij + log σ(±z_j)``: exact, no clamping of
  ``p_i`` near 0 or 1, and with one domain (``w_ii = 1``) it is ``z_i`` itself, so HMoE is then MMoE.
* *Task-constrained back-propagation.* A row of domain i trains domain i's gate, tower and relation net and
  the shared experts and embeddings through its own prediction ``z_i`` and through ``w_i``; the other
  domains' predictions ``z_j`` are constants for it (stop-gradient), so no domain's tower, gate or relation
  net is trained by another domain's rows (``tests/test_hmoe.py``). Since they are constants, they are
  computed without autograd: no activations kept, no backward.
* *The relation net sees* ``x``, the flattened field embeddings, as MMoE's gates (and MMLRec's task-weight
  net) do: which other domains' predictions help depends on the instance (a user whose behaviour is close
  to another domain's population), and ``x`` carries it. It is a per-domain MLP
  (``model.multidomain.relation_hidden``, :class:`adactr.nn.domain.DomainLinear` layers, grouped like
  the gates) with ``n_domains`` outputs. The reserved ids ``<missing>`` and ``<unseen>`` are masked out
  of the mixture unless they are the row's own domain (their towers are trained only by rows pooled there;
  a train domain never leans on them).
* *Initialisation.* Each domain starts with weight ``model.multidomain.relation_self_init`` (0.9) on its own
  prediction (the relation net's output bias: ``log(ρ (n - 1) / (1 - ρ))`` on its own domain, 0 elsewhere,
  for ``n`` domains in its mixture). Uniform weights would give a domain's own tower ``1/n`` of its rows'
  gradient while the others' predictions are stop-gradient: at 300 domains the towers would barely train.
* *The other domains' predictions* are evaluated as served: batch norm on its running statistics (never
  moved by this pass), no dropout, also in training. The row's own prediction is MMoE's, with training-mode
  batch norm and dropout. In evaluation both are the same function.

**Cost.** The definition needs every domain's gate and tower on every row: per row ``n_domains x`` (gate
``F D x K`` + tower) multiply-adds, forward only, so unlike the other multi-domain models the per-row cost
grows with the number of domains (the issue allows it where the model's definition requires it). It is one
batched product per tower layer over the stacked per-domain weights (``(R, c, in) @ (R, in, out)``, rows in
chunks of about 2^22 activations), never a loop over domains. The own-domain path, the relation net and the
gates are grouped by domain as in MMoE. The relation net's output layer has ``n_domains^2`` x its width
parameters. Measured in docs/multidomain.md (``benchmarks/domain_cost.py models --models hmoe,mmoe``).

The relation weights report to the adaptivity diagnostic (``relation``: across instances and ``by_domain``),
as the gates do.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adactr.data.schema import RESERVED, FieldLayout
from adactr.data.tensors import Batch
from adactr.models.config import ModelConfig
from adactr.models.mmoe import MMoE
from adactr.nn.domain import DomainGroups, DomainLinear, domain_layer_factory
from adactr.nn.mlp import MLP, LayerFactory, Linear
from adactr.nn.multidomain import Gate, MLPStyle, domain_ids, mix

# Rows per chunk of the every-domain pass: about this many activations (R x rows x width) at a time
CHUNK_ACTIVATIONS = 1 << 22


class RelationNet(nn.Module):
    """Each domain's weights over the domains' predictions: ``log w_i(x) = log_softmax(r_{d_x}(x))``,
    (B, R), with the reserved ids masked out (``-inf``) unless they are the row's own domain.
    ``r_i`` is a per-domain MLP (:class:`DomainLinear` layers, grouped by domain)."""

    def __init__(self, in_features: int, *, n_domains: int, hidden: tuple[int, ...], style: MLPStyle,
                 self_init: float) -> None:
        super().__init__()
        per_domain = domain_layer_factory(DomainLinear, n_domains)
        self.n_domains = n_domains
        self.mlp = style.mlp(in_features, hidden, layer=per_domain, output_dim=n_domains, output_layer=per_domain)
        out = self.mlp.out
        assert isinstance(out, DomainLinear)
        with torch.no_grad():  # weight self_init on the own prediction at the start (see the module docstring)
            out.bias.zero_()
            for i in range(n_domains):
                n = (n_domains - RESERVED) + (i < RESERVED)  # domains in a row of domain i's mixture
                if n > 1:
                    out.bias[i, i] = math.log(self_init * (n - 1) / (1 - self_init))

    def extra_repr(self) -> str:
        return f"n_domains={self.n_domains}"

    def forward(self, x: Tensor, cond: DomainGroups) -> Tensor:
        return self._log_weights(x, cond)  # (B, R)

    def generated(self, x: Tensor, cond: DomainGroups) -> dict[str, Tensor]:
        # forward's arithmetic without calling self (the diagnostic calls this from a hook on forward)
        return {"relation": self._log_weights(x, cond).exp()}

    def _log_weights(self, x: Tensor, cond: DomainGroups) -> Tensor:
        d = domain_ids(cond)  # (B,)
        ids = torch.arange(self.n_domains, device=x.device)  # (R,)
        keep = (ids >= RESERVED) | (ids == d.unsqueeze(1))  # (B, R)
        s = self.mlp(x, cond).masked_fill(~keep, -math.inf)  # (B, R)
        return torch.log_softmax(s, dim=-1)  # (B, R)


def _post_as_served(post: nn.Module, h: Tensor) -> Tensor:
    """A tower layer's batch norm (running statistics, not moved) and activation; h (R, c, H). (MLP keeps
    its dropout outside ``post``.)"""
    for m in post.children():
        if isinstance(m, nn.BatchNorm1d):
            flat = F.batch_norm(h.reshape(-1, h.shape[-1]), m.running_mean, m.running_var, m.weight, m.bias,
                                training=False, eps=m.eps)  # (R c, H)
            h = flat.view(h.shape)
        else:
            h = m(h)
    return h


def _per_domain(layer: nn.Module | None) -> DomainLinear:
    assert isinstance(layer, DomainLinear), f"{type(layer).__name__} where a per-domain layer belongs"
    return layer


def _stacked_layer(layer: DomainLinear, h: Tensor) -> Tensor:
    """Every domain's layer on its slice: h (R, c, in) -> (R, c, out), one batched product."""
    W, b = layer.weight.to(h.dtype), layer.bias.to(h.dtype)  # (R, out, in), (R, out)
    return torch.baddbmm(b.unsqueeze(1), h, W.transpose(1, 2))  # (R, c, in) @ (R, in, out) -> (R, c, out)


@torch.no_grad()
def every_domain_logits(gate: Gate, towers: MLP, x: Tensor, experts: Tensor) -> Tensor:
    """``z_j(x) = h^j(sum_k g^j(x)_k f_k(x))`` for every domain j on every row, without autograd: (B, R).

    gate: MMoE's per-domain :class:`Gate`; towers: its per-domain towers; x (B, F D); experts (B, K, H)."""
    gate_linear, out_layer = _per_domain(gate.linear), _per_domain(towers.out)
    layers = [_per_domain(m) for m in towers.layers]
    W_g, b_g = gate_linear.weight, gate_linear.bias  # (R, K, F D), (R, K)
    R, K, _ = W_g.shape
    widest = max([experts.shape[2], *(lin.out_features for lin in layers)])
    step = max(1, CHUNK_ACTIVATIONS // (R * widest))
    out = []
    for s in range(0, x.shape[0], step):  # chunks of rows (never of domains)
        xc, ec = x[s:s + step], experts[s:s + step]  # (c, F D), (c, K, H)
        g = torch.softmax(torch.addmm(b_g.reshape(-1), xc, W_g.reshape(R * K, -1).t()).view(-1, R, K), -1)
        h = torch.bmm(g, ec).transpose(0, 1)  # (c, R, K) @ (c, K, H) -> (c, R, H) -> (R, c, H)
        for layer, post in zip(layers, towers.post, strict=True):
            h = _post_as_served(post, _stacked_layer(layer, h))  # (R, c, h_l)
        out.append(_stacked_layer(out_layer, h).squeeze(2).t())  # (R, c, 1) -> (c, R)
    return torch.cat(out)  # (B, R)


def mix_probabilities(log_w: Tensor, z: Tensor) -> Tensor:
    """``logit(sum_j w_j σ(z_j))`` from log weights (B, R) (rows summing to 1) and logits (B, R): (B,),
    as ``log sum_j w_j σ(z_j) - log sum_j w_j σ(-z_j)``."""
    return (torch.logsumexp(log_w + F.logsigmoid(z), dim=1)
            - torch.logsumexp(log_w + F.logsigmoid(-z), dim=1))


class HMoE(MMoE):
    NAME = "hmoe"

    def __init__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = Linear) -> None:
        super().__init__(layout=layout, config=config, layer=layer)
        md = config.multidomain
        self.relation = RelationNet(layout.n_fields * config.embedding_dim, n_domains=layout.n_domains,
                                    hidden=md.relation_hidden, self_init=md.relation_self_init,
                                    style=MLPStyle(config.activation, config.dropout, config.batch_norm))

    def forward(self, batch: Batch) -> Tensor:
        groups, x, experts = self.shared_part(batch)
        z_own = self.towers(mix(self.gate(x, groups), experts), groups)  # (B, 1): MMoE, with gradient
        z_all = every_domain_logits(self.gate, self.towers, x.detach(),
                                    torch.stack(experts, 1).detach())  # (B, R), stop-gradient
        z = z_all.to(z_own.dtype).scatter(1, domain_ids(groups).unsqueeze(1), z_own)  # (B, R): own with gradient
        return mix_probabilities(self.relation(x, groups), z)  # (B,)

