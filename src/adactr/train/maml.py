"""First-order MAML across domains: every domain of a batch is a meta-learning task (``train.meta=maml``).

The multi-domain baseline "MAML" of AdaSparse (Yang et al., CIKM 2022, §4.1.2, after Yu et al. 2020,
arXiv 2012.11842), run on any backbone (``--model dnn``, ``dcnv2``, ...): a training strategy, not a model.
One optimisation step on a mixed batch of ``B`` rows::

    tasks      T = the domains of the batch with >= 2 rows (at most train.maml.tasks_per_step, drawn at random)
    for t in T:   S_t, Q_t = the domain's rows split into support / query (query_fraction of them in Q_t)
                  θ'_t = θ;  K times: θ'_t = θ'_t - α ∇L(θ'_t; S_t)          (inner SGD, α = inner_lr)
                  g_t  = ∇_{θ'} L(θ'_t; Q_t)                                 (first order: no ∂θ'_t/∂θ)
    θ.grad = (1/|T|) Σ_t g_t;  then the run's optimisers step (Adam for dense weights, the embedding
    optimiser for the tables, train.lr, L2 and clipping as in an ordinary step)

``L`` is :func:`adactr.train.trainer.training_loss`, so a model's penalties (PIN's orthogonal term,
AdaSparse's sparsity term) enter every inner and query loss. The reported training loss of a step is the
mean over tasks of the query loss at the adapted weights (the meta objective). The meta weights θ are read,
never written, by the inner loop: each task runs ``torch.func.functional_call`` on a dict of tensors
(θ detached, then new tensors θ - αg), and only the optimisers move θ.

Choices and why (reference: MAMDR's ``model_zoo/maml.py``, ``shared/research/multidomain.md``)

* **Tasks are the domains of one batch.** MAMDR runs, per epoch, a whole pass over each domain's
  meta-train set, then its meta-val set, one meta update per domain. Here the step stays the trainer's
  step: same batches, same epochs, early stopping, checkpoints and resume. A step's tasks are the domains
  present in the batch; the batch order is a random permutation, so a domain's rows in the batch are a
  random sample of it.
* **Support / query split.** In each domain's rows in batch order (a random order), the last
  ``round(query_fraction * n)`` rows (clamped to 1 .. n - 1) are the query set, the others the support set,
  so no random draw is needed and a row is never in both. A row is support in one epoch and query in
  another, where MAMDR fixes the split once. A domain with one row in a batch has no split and sits this
  step out. ``query_fraction`` 0.8 follows MAMDR's code (``meta_split_ratio`` 0.2 is the share of its
  inner set), so most rows train θ.
* **Tasks weigh equally** (the MAML objective averages over tasks), not by rows: a small domain's query
  loss counts as much as a large one's. MAMDR sums instead of averaging (``average_meta_grad`` "none"),
  which Adam's scale invariance makes nearly the same.
* **Inner optimiser: plain SGD at ``inner_lr``** (the MAML algorithm), without L2; MAMDR's inner loop uses
  the model's own Adam. ``adapt_embeddings=false`` adapts every weight but the embedding tables (MAMDR's
  ``all_hidden``); the tables still get their outer gradient from the query loss.
* **Sampling tasks.** ``tasks_per_step`` 0 (every domain) is the default: a few domains (ML-1M's 3 age
  groups) cost little, and a sample drops the other domains' rows from the step. With hundreds of
  domains per batch each task is a separate small forward/backward; docs/multidomain.md has the
  measured cost. The draw uses torch's global generator, which checkpoints save and restore.
* **Running statistics (BatchNorm, STAR's partitioned norm, ADL's centres) are not moved by the task
  forwards**: each task runs on a private copy of the model's buffers (in training mode a BatchNorm layer
  normalises with the task's own batch statistics, as in MAML, and updates only that copy). After the
  outer update one forward of the whole batch at the new θ, in training mode and without gradients,
  moves the real running statistics, exactly as an ordinary step would: the statistics evaluation uses
  belong to the weights it evaluates. That extra forward runs only for models with floating-point
  buffers. Dropout is active in every inner and query forward, as in ordinary training.
* **Evaluation uses the meta weights for every domain** (MAMDR ``meta_finetune_step`` 0, its Taobao
  setting). Per-domain fine-tuning before evaluation is **not implemented**: it would need the train
  rows at evaluation time and a served model holding one weight set per domain.
* **Resume.** The step keeps no state of its own: the optimisers' state and the global RNG (dropout,
  task draws), both in the checkpoint, are all it depends on, so ``--resume`` continues exactly.
* Not with ``train.compile`` or ``train.cuda_graph``: the step groups rows on the host (one sync per
  batch) and calls the model once per task and inner step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call

from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.nn.domain import DomainGroups
from adactr.train.config import MAMLConfig, TrainConfig

Weights = dict[str, Tensor]
# adactr.train.trainer.training_loss: (forward, batch) -> the loss a step minimises, penalties included
TrainingLoss = Callable[[Callable[[Batch], Tensor], Batch], Tensor]


def rows(batch: Batch, idx: Tensor) -> Batch:
    """The rows ``idx`` of ``batch``."""
    return Batch(cat=batch.cat[idx], num=batch.num[idx], seq=tuple(s[idx] for s in batch.seq),
                 label=batch.label[idx], domain=None if batch.domain is None else batch.domain[idx],
                 group=None if batch.group is None else batch.group[idx])


def split_tasks(groups: DomainGroups, query_fraction: float) -> list[tuple[int, Tensor, Tensor]]:
    """(domain, support rows, query rows) of every domain with at least two rows; rows are indices into the
    batch, each domain's in batch order, the query set its last ``round(query_fraction * n)`` rows
    (at least one, at most n - 1).

    >>> g = DomainGroups.of(torch.tensor([3, 2, 3, 3, 2, 5, 3, 3]))
    >>> [(d, s.tolist(), q.tolist()) for d, s, q in split_tasks(g, 0.4)]
    [(2, [1], [4]), (3, [0, 2, 3], [6, 7])]
    """
    tasks, start = [], 0
    for d, n in zip(groups.present, groups.counts, strict=True):
        if n >= 2:
            n_query = min(n - 1, max(1, math.floor(query_fraction * n + 0.5)))
            seg = groups.order[start:start + n]  # (n,) this domain's rows, batch order
            tasks.append((d, seg[:n - n_query], seg[n - n_query:]))
        start += n
    return tasks


class MAMLStep:
    """One first-order MAML optimisation step per call (see the module docstring); returns the mean query
    loss over the step's tasks, on the device."""

    def __init__(self, model: nn.Module, opts: list[torch.optim.Optimizer], *, config: MAMLConfig,
                 loss: TrainingLoss, clip_grad_norm: float = 0.0) -> None:
        """``loss``: the trainer's ``training_loss`` (passed in: the trainer imports this module)."""
        self.model, self.opts, self.cfg, self.clip = model, opts, config, clip_grad_norm
        self._training_loss = loss
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        tables = {id(p) for p in model.embedding_parameters()}  # type: ignore[operator]
        params = dict(model.named_parameters())
        # the weights the inner loop adapts (all but the tables with adapt_embeddings=false)
        self.adapted = [n for n in self.names if config.adapt_embeddings or id(params[n]) not in tables]
        # running statistics to move after the outer update (see the module docstring)
        self.has_stats = any(b.is_floating_point() for b in model.buffers())

    def _loss(self, weights: Weights, batch: Batch) -> Tensor:
        """``training_loss`` of ``batch`` with the model's parameters replaced by ``weights`` and its
        buffers by a private copy (the real running statistics stay as they are)."""
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        forward = partial(functional_call, self.model, {**weights, **buffers})
        return self._training_loss(lambda b: forward((b,)), batch)

    def adapt(self, start: Weights, support: Batch) -> Weights:
        """θ' after ``inner_steps`` SGD steps on ``support`` from ``start`` (new tensors; ``start`` unchanged)."""
        fast = dict(start)
        for _ in range(self.cfg.inner_steps):
            loss = self._loss(fast, support)
            grads = torch.autograd.grad(loss, [fast[n] for n in self.adapted], allow_unused=True)
            for n, g in zip(self.adapted, grads, strict=True):
                if g is not None:
                    fast[n] = torch.sub(fast[n].detach(), g, alpha=self.cfg.inner_lr).requires_grad_()
        return fast

    def tasks(self, batch: Batch) -> list[tuple[int, Tensor, Tensor]]:
        if batch.domain is None:
            raise ConfigError("train.meta=maml needs domains: prepare the data with --domain")
        tasks = split_tasks(DomainGroups.of(batch.domain), self.cfg.query_fraction)
        k = self.cfg.tasks_per_step
        if k and len(tasks) > k:
            pick = torch.randperm(len(tasks))[:k].sort().values.tolist()  # the global generator: checkpointed
            tasks = [tasks[i] for i in pick]
        return tasks

    def __call__(self, batch: Batch) -> Tensor:
        model = self.model
        params = dict(model.named_parameters())
        start = {n: params[n].detach().requires_grad_() for n in self.names}  # θ, shared storage, read only
        tasks = self.tasks(batch)
        if not tasks:  # no domain with two rows (a tiny last batch): nothing to learn from, no step
            with torch.no_grad():
                return self._loss(start, batch).detach()
        acc: list[Tensor | None] = [None] * len(self.names)
        total = torch.zeros((), device=batch.label.device)
        for _domain, support, query in tasks:
            fast = self.adapt(start, rows(batch, support))
            at = fast  # first-order MAML: the query loss at the adapted weights θ'
            loss = self._loss(at, rows(batch, query))
            grads = torch.autograd.grad(loss, [at[n] for n in self.names], allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    part = g / len(tasks)
                    prev = acc[i]
                    acc[i] = part if prev is None else prev + part  # sparse + sparse for sparse tables
            total = total + loss.detach()
        for o in self.opts:
            o.zero_grad(set_to_none=True)
        for n, mean_grad in zip(self.names, acc, strict=True):
            params[n].grad = mean_grad
        if self.clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.clip)
        for o in self.opts:
            o.step()
        if self.has_stats:
            with torch.no_grad():
                model(batch)  # the running statistics, at the new meta weights, on the whole batch
        return total / len(tasks)


def maml_step(model: nn.Module, opts: list[torch.optim.Optimizer], cfg: TrainConfig, *, has_domain: bool,
              loss: TrainingLoss) -> MAMLStep:
    """The step of ``train.meta=maml`` (``has_domain``: the train split has a domain column), after the
    checks that fit in one line each."""
    if not has_domain:
        raise ConfigError("train.meta=maml treats each domain as a task: prepare the data with --domain")
    if cfg.compile or cfg.cuda_graph:
        raise ConfigError("train.meta=maml calls the model once per domain and inner step, with a host sync per "
                          "batch: set train.compile=false and train.cuda_graph=false")
    return MAMLStep(model, opts, config=cfg.maml, loss=loss, clip_grad_norm=cfg.clip_grad_norm)


__all__ = ["MAMLStep", "maml_step", "rows", "split_tasks"]
