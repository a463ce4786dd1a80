"""AdaSparse: a domain-aware pruner per layer (Yang et al., "AdaSparse: Learning Adaptively Sparse
Structures for Multi-Domain Click-Through Rate Prediction", CIKM 2022, Section 3).

For the l-th layer ``W^l`` (N_l inputs -> N_{l+1}), a lightweight pruner makes a weighting factor per
input neuron from the domain embedding ``e_d`` and the layer's input ``h^l`` and prunes that input::

    v      = W_p^l [e_d; h^l] + b_p^l                              (B, N_l)        eq. (3)
    π^l    = S_ε(σ-form(v))                                        (B, N_l)
    h^l(d) = h^l ⊙ π^l                                             eq. (2), then y = W^l h^l(d) + b^l

with the three weighting-factor forms of §3.1.2 (``step(x) = 1 if x > 0 else 0``, the paper's footnote 1:
0 at and below zero, never -1)::

    binarization  π = step(σ(α v) - ε)                in {0, 1}         eqs. (4)-(5)
    scaling       π = β σ(v) · step(|β σ(v)|) = β σ(v) in (0, β)          eqs. (6)-(7)
    fusion        π = β σ(α v) · step(β σ(α v) - ε)   in {0} ∪ (ε, β)   eq. (8)

and the sparsity regulariser of §3.2, added to the training loss through the loss-term seam
(:mod:`adactr.nn.penalty`)::

    r^l = 1 - ||π^l||_0 / N_l  (the share of pruned neurons, mean over the batch)
    R_s = 1/L Σ_l λ^l |r^l - r|,   r = (r_min + r_max)/2                   eq. (9)
    λ^l = 0 inside [r_min, r_max], else λ̂ |r^l - r|                         eq. (10)

``α`` and ``λ̂`` are :class:`~adactr.nn.schedule.GeometricSchedule` buffers: they advance with optimisation
steps only (the trainer's schedule seam), are saved and resumed exactly, and never move in a forward call.

Choices the paper leaves open, and why:

- **The gradient of the step.** Eq. (5) is piecewise constant, so as written Binarization has a zero
  gradient and its pruner never learns (Scenario-Wise-Rec's ``torch.sign``). Here the step is a
  *straight-through estimator with the identity* (Bengio, Léonard & Courville 2013): the forward is the
  exact step, the backward passes the gradient through unchanged, so it reaches ``v`` through the smooth
  ``σ(α v)`` as ``α σ'(α v)``. Fusion uses the same estimator for its step, so a pruned neuron still gets
  a gradient and can come back (the CDC code zeroes in place, so a pruned neuron never returns).
- **r^l with factors that are not 0/1.** The paper's ``r^l = 1 - ||π^l||_1 / N_l`` assumes binary factors.
  For Fusion (factors up to β) it is taken as the share of zero factors, ``1 - ||π^l||_0 / N_l``, with the
  same straight-through step as its gradient; for Binarization the two are the same. Scaling never prunes
  (eq. (7) has no ε), so it adds no regulariser.
- **λ^l is a weight**, not a path for gradient: it is computed from the detached ``r^l`` (so the term's
  gradient is ``λ^l`` times that of ``|r^l - r|``, as eq. (9) reads).
- **e_d** is a learned domain embedding (one row per domain of ``Batch.domain``; the schema's domain ids),
  the condition of every pruner in the model, built once per batch by :class:`AdaSparseCondition`. It gets
  gradient from the pruners by default (``domain_gradient``); the public code (CDC) detaches it.
- **Where the pruners sit**: before every hidden layer of the tower (its input: the embeddings, then each
  hidden activation but the last, which feeds the output layer). Pruning the input of a layer is what makes
  the pruned neurons skippable at serving: the layer's columns for them are never read (:meth:`collapse`).

>>> import torch
>>> cfg = AdaSparseConfig(form=FactorForm.BINARIZATION)
>>> layer = AdaSparseLinear(4, 2, config=cfg, cond_dim=3)
>>> pi = layer.factors(torch.randn(5, 4), torch.randn(5, 3))
>>> pi.shape, sorted(set(pi.flatten().tolist()) - {0.0, 1.0})
(torch.Size([5, 4]), [])
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adactr.data.schema import RESERVED
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.nn.mlp import Linear
from adactr.nn.penalty import add_penalty, penalties_active
from adactr.nn.schedule import GeometricSchedule


class FactorForm(str, Enum):
    """The weighting-factor formulation of §3.1.2."""

    BINARIZATION = "binarization"  # eqs. (4)-(5): {0, 1}
    SCALING = "scaling"  # eqs. (6)-(7): β σ(v), never zero
    FUSION = "fusion"  # eq. (8): β σ(α v), zeroed at and below ε


@dataclass(frozen=True)
class AdaSparseConfig:
    """Settings of AdaSparse's pruners (``model.adasparse.*``; ``model.tower_layer=adasparse``)."""

    # Fusion: Table 2's best form on both data sets (and what Scenario-Wise-Rec's ML-1M script runs)
    form: FactorForm = FactorForm.FUSION
    beta: float = 2.0  # β >= 1, the largest factor of Scaling and Fusion (§4.1.2: β = 2)
    epsilon: float = 0.25  # ε, the threshold of Binarization and Fusion (§4.1.2: ε = 0.25)
    # α of σ(α v): annealed upward from 0.1 to 5 (§4.1.2) so that early in training, while the model is
    # still under-fitting, no neuron is pruned by accident (σ(0.1 v) < ε = 0.25 needs v < -11)
    alpha_start: float = 0.1
    alpha_end: float = 5.0
    # λ̂ of eq. (10): "initialized by 0.01 and gradually increase over training step" (§3.2); the paper
    # gives no end or rule. 100x (to 1.0) makes the band a hard constraint by the end of the schedule
    lambda_start: float = 0.01
    lambda_end: float = 1.0
    # Optimisation steps over which α and λ̂ go from start to end (geometrically, then held). The paper
    # gives none. A geometric ramp gives every doubling of α the same number of steps; a linear one would
    # take α from 0.1 to 0.6 (6x sharper) in its first tenth. 2000 steps ~ 10 epochs of MovieLens-1M's
    # 800k training rows at batch 4096, around where early stopping ends a deep model's run
    schedule_steps: int = 2000
    # > 0: the horizon in epochs of the training data instead (the trainer converts it once it knows the
    # steps an epoch), so that it fits data of any size: 2000 steps is 0.4 epoch of a 20 M-row set and
    # 15 of a 160 k-row one (the click world's run ended before its schedule). 0 keeps schedule_steps
    schedule_epochs: float = 0.0
    # [r_min, r_max]: the sparsity band of eqs. (9)-(10) (§4.1.2: [0.15, 0.25])
    r_min: float = 0.15
    r_max: float = 0.25
    # e_d: the domain embedding's size (the paper's e_d is the domain features' embeddings: the default
    # embedding size), and whether the pruners train it (the public CDC code detaches it)
    domain_dim: int = 10
    domain_gradient: bool = True
    # what the pruner sees: "both" = [e_d; h^l] (eq. 3), so the factors vary by instance within a domain;
    # "domain" = e_d alone (an ablation, not in the paper): one factor map per domain, a purely
    # domain-aware structure, as Fig. 3a draws it
    pruner_input: str = "both"
    # not in the paper (its network has no dropout): the pruner reads h^l before the previous layer's
    # dropout (the tower's ``source``), while the factors still multiply the dropped-out h^l. A dropped-out
    # h^l moves v = W_p [e_d; h^l] and so the step of Binarization and Fusion: the factors (and the
    # sparsity) of training are not those of evaluation. Off: on the click world (Table 1's tower, batch
    # 256, Fusion, 3 seeds) it scored 0.7703 against 0.7721 (docs/multidomain.md)
    pruner_before_dropout: bool = False

    def check(self) -> None:
        if self.beta < 1:
            raise ConfigError(f"model.adasparse.beta must be >= 1 (eqs. 6, 8), got {self.beta}")
        if not 0 < self.epsilon < 1:
            raise ConfigError(f"model.adasparse.epsilon must be in (0, 1), got {self.epsilon}")
        if not 0 <= self.r_min <= self.r_max < 1:
            raise ConfigError(f"model.adasparse.r_min / r_max must satisfy 0 <= r_min <= r_max < 1, "
                              f"got {self.r_min}, {self.r_max}")
        for name, v in (("alpha_start", self.alpha_start), ("alpha_end", self.alpha_end),
                        ("lambda_start", self.lambda_start), ("lambda_end", self.lambda_end)):
            if v <= 0:
                raise ConfigError(f"model.adasparse.{name} must be > 0, got {v}")
        if self.schedule_steps < 1 or self.domain_dim < 1:
            raise ConfigError("model.adasparse.schedule_steps and domain_dim must be >= 1")
        if self.pruner_input not in ("both", "domain"):
            raise ConfigError(f"model.adasparse.pruner_input must be 'both' or 'domain', got {self.pruner_input!r}")
        if self.pruner_before_dropout and self.pruner_input == "domain":
            raise ConfigError("model.adasparse.pruner_before_dropout needs pruner_input=both: a pruner that reads "
                              "e_d alone reads no h^l")
        if not self.schedule_epochs >= 0:
            raise ConfigError(f"model.adasparse.schedule_epochs must be >= 0, got {self.schedule_epochs}")

    @property
    def r(self) -> float:
        """The band's centre, eq. (9)."""
        return (self.r_min + self.r_max) / 2


class _StraightThroughStep(torch.autograd.Function):
    """``step(x) = 1 if x > 0 else 0`` forward (exactly: 0 at and below zero, never -1); the identity
    backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        return g


def step(x: Tensor) -> Tensor:
    """The paper's ``sign`` (footnote 1), with a straight-through gradient."""
    return _StraightThroughStep.apply(x)


class AdaSparseCondition(nn.Module):
    """The pruners' condition: ``e_d`` (B, ``dim``), a learned embedding of each row's domain, once per batch."""

    def __init__(self, *, n_domains: int, dim: int, gradient: bool = True) -> None:
        super().__init__()
        if n_domains <= RESERVED:
            raise ConfigError("model.tower_layer=adasparse needs each row's domain: prepare the data with "
                              "--domain COLUMN (this dataset has no domain column)")
        self.table = nn.Embedding(n_domains, dim)
        nn.init.normal_(self.table.weight)  # unit scale: of the order of the hidden activations it sits beside
        self.dim, self.gradient = dim, gradient

    def extra_repr(self) -> str:
        return f"gradient={self.gradient}"

    def forward(self, batch: Batch, emb: Tensor) -> Tensor:
        if batch.domain is None:
            raise ConfigError("model.tower_layer=adasparse needs each row's domain: prepare the data with --domain")
        e_d = self.table(batch.domain)  # (B, dim)
        return e_d if self.gradient else e_d.detach()


class AdaSparseLinear(nn.Module):
    """A tower layer with its pruner: ``forward(h (B, N_l), e_d (B, cond_dim)) -> W (h ⊙ π) + b``.

    :meth:`generated` reports π (the adaptivity diagnostic: its sparsity and how the domains' maps differ);
    :meth:`collapse` is the served form that skips the pruned inputs.
    """

    def __init__(self, in_features: int, out_features: int, *, config: AdaSparseConfig, cond_dim: int,
                 share: float = 1.0) -> None:
        super().__init__()
        config.check()
        self.config, self.form, self.cond_dim = config, config.form, cond_dim
        # W_p^l, b_p^l of eq. (3)
        self.pruner = nn.Linear(cond_dim + (in_features if self.sees_input else 0), in_features)
        self.linear = Linear(in_features, out_features)  # W^l, b^l
        horizon = ("model.adasparse.schedule_epochs" if config.schedule_epochs else
                   "model.adasparse.schedule_steps (or schedule_epochs)")
        steps, epochs = config.schedule_steps, config.schedule_epochs
        self.alpha = GeometricSchedule(start=config.alpha_start, end=config.alpha_end, steps=steps, epochs=epochs,
                                       setting=horizon)
        self.lambda_hat = GeometricSchedule(start=config.lambda_start, end=config.lambda_end, steps=steps,
                                            epochs=epochs, setting=horizon)
        # 1/L of eq. (9): set by the factory once the model has all its pruners
        self.share = share

    @property
    def sees_input(self) -> bool:
        """Whether the pruner reads [e_d; h^l] (eq. 3) or e_d alone (``pruner_input=domain``)."""
        return self.config.pruner_input == "both"

    def extra_repr(self) -> str:
        return f"form={self.form.value}, cond_dim={self.cond_dim}"

    @property
    def reads_undropped_input(self) -> bool:
        """Whether a tower hands this layer its input before dropout as ``source`` (see :class:`MLP`)."""
        return self.sees_input and self.config.pruner_before_dropout

    def _v(self, x: Tensor, cond: Tensor | None) -> Tensor:
        if cond is None:
            raise ConfigError("an AdaSparse layer needs the domain embedding as its condition "
                              "(is model.condition an AdaSparseCondition?)")
        if not self.sees_input:
            return self.pruner(cond)  # W_p e_d + b_p, (B, N_l): pruner_input=domain
        return self.pruner(torch.cat([cond, x], dim=1))  # W_p [e_d; h^l] + b_p, (B, N_l)

    def factors(self, x: Tensor, cond: Tensor | None) -> Tensor:
        """π^l (B, N_l), eqs. (3)-(8); ``x`` is the h^l the pruner reads."""
        v = self._v(x, cond)  # (B, N_l)
        c = self.config
        if self.form is FactorForm.SCALING:
            return c.beta * torch.sigmoid(v)  # eqs. (6)-(7): step(|β σ(v)|) = 1
        s = torch.sigmoid(self.alpha.value * v)  # σ(α v), (B, N_l)
        if self.form is FactorForm.BINARIZATION:
            return step(s - c.epsilon)  # eqs. (4)-(5), |σ| = σ
        v_out = c.beta * s  # eq. (8)
        return v_out * step(v_out - c.epsilon)

    def generated(self, x: Tensor, cond: Tensor | None = None, source: Tensor | None = None
                  ) -> dict[str, Tensor]:
        return {"factor": self.factors(x if source is None else source, cond)}

    def pruning_factors(self) -> tuple[str, ...]:
        """For the adaptivity diagnostic: π's zeros are pruned inputs (it reports sparsity and overlap)."""
        return ("factor",)

    def sparsity_penalty(self, pi: Tensor) -> Tensor:
        """This layer's ``λ^l |r^l - r| / L`` of eqs. (9)-(10) for factors ``pi`` (B, N_l)."""
        c = self.config
        kept = pi if self.form is FactorForm.BINARIZATION else step(pi)  # 1 where kept, straight-through
        r_l = 1 - kept.mean()  # the actual sparsity ratio, ()
        gap = (r_l - c.r).abs()  # |r^l - r|
        r_d = r_l.detach()
        inside = (r_d >= c.r_min) & (r_d <= c.r_max)  # on the device: no host sync
        # λ^l = 0 inside the band, λ̂ |r^l - r| outside: a weight (detached)
        lam = torch.where(inside, torch.zeros_like(r_d), self.lambda_hat.value * gap.detach())
        return self.share * lam * gap

    def forward(self, x: Tensor, cond: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        # source: h^l before dropout, given by the tower when reads_undropped_input
        pi = self.factors(x if source is None else source, cond)  # (B, N_l)
        if self.form is not FactorForm.SCALING and penalties_active():
            add_penalty("adasparse_sparsity", self.sparsity_penalty(pi))
        return self.linear(x * pi, cond)  # W^l (h^l ⊙ π^l) + b^l, (B, N_{l+1})

    def collapse(self) -> nn.Module:
        """The served form: a layer that reads only the columns of ``W^l`` whose inputs some row keeps."""
        return self if self.form is FactorForm.SCALING else PrunedLinear(self)


class PrunedLinear(AdaSparseLinear):
    """AdaSparse as served: the pruner first, then ``W^l`` over the kept inputs only.

    For a batch the kept inputs are those with a non-zero factor in at least one row (a single request:
    its own); the columns of ``W^l`` for the others are never read. Outputs equal the training form's up to
    float rounding (the products sum over fewer terms, the dropped ones being exactly zero). The same
    parameters, schedules and state_dict keys as the layer it serves.
    """

    def __init__(self, layer: AdaSparseLinear) -> None:
        nn.Module.__init__(self)
        self.config, self.form, self.cond_dim, self.share = layer.config, layer.form, layer.cond_dim, layer.share
        self.pruner, self.linear = layer.pruner, layer.linear
        self.alpha, self.lambda_hat = layer.alpha, layer.lambda_hat

    def forward(self, x: Tensor, cond: Tensor | None = None, source: Tensor | None = None) -> Tensor:
        pi = self.factors(x if source is None else source, cond)  # (B, N_l); served: no dropout, source is x
        keep = (pi != 0).any(0).nonzero().squeeze(1)  # (K,) the inputs some row keeps (one host sync)
        if keep.numel() == pi.shape[1]:  # nothing to skip (a large batch, usually): no gather
            return self.linear(x * pi, cond)
        W = self.linear.weight.index_select(1, keep)  # (N_{l+1}, K): the kept columns only
        h = (x * pi).index_select(1, keep)  # (B, K)
        return F.linear(h, W, self.linear.bias)  # (B, N_{l+1})

    def collapse(self) -> nn.Module:
        return self


class AdaSparseLayerFactory:
    """A :data:`~adactr.nn.mlp.LayerFactory` making :class:`AdaSparseLinear` layers; :meth:`finish` gives
    each the ``1/L`` of eq. (9) once the model has all of them."""

    def __init__(self, config: AdaSparseConfig, cond_dim: int) -> None:
        config.check()
        self.config, self.cond_dim = config, cond_dim
        self.built: list[AdaSparseLinear] = []

    def __call__(self, in_features: int, out_features: int) -> nn.Module:
        layer = AdaSparseLinear(in_features, out_features, config=self.config, cond_dim=self.cond_dim)
        self.built.append(layer)
        return layer

    def finish(self) -> None:
        for layer in self.built:
            layer.share = 1.0 / len(self.built)
