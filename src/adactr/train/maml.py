"""First-order MAML across domains: every domain of a batch is a meta-learning task (``train.meta=maml``).

The multi-domain baseline "MAML" of AdaSparse (Yang et al., CIKM 2022, §4.1.2, after Yu et al. 2020,
arXiv 2012.11842), run on any backbone (``--model dnn``, ``dcnv2``, ...): a training strategy, not a model.
One optimisation step on a mixed batch of ``B`` rows::

    tasks      T = the domains of the batch with >= 2 rows, >= 4 with batch norm (at most
                   train.maml.tasks_per_step, drawn at random), task t weighted w_t (Σ w_t = 1)
    for t in T:   S_t, Q_t = the domain's rows split into support / query (query_fraction of them in Q_t)
                  θ'_t = θ;  K times: θ'_t = θ'_t - α ∇L(θ'_t; S_t)          (inner SGD, α = inner_lr)
                  g_t  = ∇_{θ'} L(θ'_t; Q_t)                                 (first order: no ∂θ'_t/∂θ)
    θ.grad = Σ_t w_t g_t;  then the run's optimisers step (Adam for dense weights, the embedding
    optimiser for the tables, train.lr, L2 and clipping as in an ordinary step)

``L`` is :func:`adactr.train.trainer.training_loss`, so a model's penalties (PIN's orthogonal term,
AdaSparse's sparsity term) enter every inner and query loss. The reported training loss of a step is the
weighted mean over tasks (w_t) of the query loss at the adapted weights (the meta objective). The meta
weights θ are read, never written, by the inner loop: each task runs ``torch.func.functional_call`` on a
dict of tensors (θ detached, then new tensors θ - αg), and only the optimisers move θ.

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
  step out. A model with batch norm needs two rows in each set (the batch statistics of one row are
  undefined): its tasks are the domains with four rows or more, each set clamped to 2 .. n - 2, and a
  domain with a single train row is served with the meta weights. ``query_fraction`` 0.8 follows MAMDR's
  code (``meta_split_ratio`` 0.2 is the share of its inner set), so most rows train θ.
* **Task weights** (``task_weight``). ``"tasks"`` (default): equal, w_t = 1/|T|, the MAML objective, so a
  small domain's query loss counts as much as a large one's (MAMDR sums instead of averaging,
  ``average_meta_grad`` "none", which Adam's scale invariance makes nearly the same). ``"rows"``: w_t
  ∝ |Q_t|, so the meta gradient is that of the mean query loss over all the step's query rows, each at
  its domain's adapted weights; with ``inner_steps`` 0 it is exactly an ordinary step on the query rows.
  With hundreds of long-tailed domains equal weights make the tail's 2-row query sets dominate the
  gradient; docs/multidomain.md has the measured difference.
* **Inner optimiser: plain SGD at ``inner_lr``** (the MAML algorithm), without L2; MAMDR's inner loop uses
  the model's own Adam. ``adapt_embeddings=false`` adapts every weight but the embedding tables (MAMDR's
  ``all_hidden``); the tables still get their outer gradient from the query loss.
* **Sampling tasks.** ``tasks_per_step`` 0 (every domain) is the default: a few domains (ML-1M's 3 age
  groups) cost little, and a sample drops the other domains' rows from the step. With ``"tasks"`` the
  sample is uniform over the batch's tasks; with ``"rows"`` k draws with replacement, P(t) ∝ |Q_t|, and
  w_t = (draws of t) / k, an unbiased estimate of the row-weighted gradient that keeps the large domains
  in nearly every step. With hundreds of domains per batch each task is a separate small
  forward/backward; docs/multidomain.md has the measured cost. The draw uses torch's global generator,
  which checkpoints save and restore.
* **Running statistics (BatchNorm, STAR's partitioned norm, ADL's centres) are not moved by the task
  forwards**: each task runs on a private copy of the model's buffers (in training mode a BatchNorm layer
  normalises with the task's own batch statistics, as in MAML, and updates only that copy). After the
  outer update one forward of the whole batch at the new θ, in training mode and without gradients,
  moves the real running statistics, exactly as an ordinary step would: the statistics evaluation uses
  belong to the weights it evaluates. That extra forward runs only for models with floating-point
  buffers. Dropout is active in every inner and query forward, as in ordinary training.
* **Serving fine-tunes per domain** (MAMDR's ``meta_finetune_step``; AdaSparse §4.1.2 "quickly learns
  domain-specific parameters from a small amount of domain data"). After training, with the best meta
  weights restored, :func:`finetune_domains` takes ``finetune_k`` SGD steps at ``inner_lr`` from θ on
  each train domain's rows and :class:`MAMLServed`, which computes every row with its own domain's
  weights, is the run's model: ``model.safetensors``, the final valid and the test metrics, ``adactr
  predict`` and ``evaluate``. Choices:

  - K defaults to ``inner_steps`` (``finetune_steps`` None): the meta objective trained θ for exactly
    that adaptation, so serving takes it; more steps go where the objective never looked, none throws
    away what it trained for. 0 serves θ for every domain (the model is then the plain backbone, as
    before fine-tuning existed; MAMDR's Taobao setting).
  - The update is :meth:`MAMLStep.adapt`, the training's inner loop: plain SGD on the mean training
    loss, every step on one support set, in training mode (dropout on, batch norm on the support rows'
    statistics, the running statistics untouched), as the inner steps the query loss was trained
    through. The support set is ``finetune_rows`` (4096) of the domain's train rows drawn at random
    (seeded with ``train.seed``, the global RNG forked, so a run fine-tunes the same way every time):
    any sample's gradient estimates the domain's without bias, and more rows than a training task's
    (about a fifth of the domain's rows in a batch: 1 or 2 rows for the median ML-1M-fine domain)
    take the same expected step with less noise, at a bounded cost.
  - ``<missing>``, ``<unseen>`` and domains without train rows are served by θ: nothing to adapt on,
    and ``<unseen>`` at serving time also holds domains that train never had, for which θ is the
    weights trained to be a good start for any domain.
  - Only the parameters the inner loop adapts are stored per domain: all trainable ones, the tables
    only with ``adapt_embeddings``, and of a table only the rows fine-tuning changed (the rows the
    support set looks up; without L2 in the inner step no other row moves). A dense table per domain
    would be D times the tables. docs/multidomain.md has the measured sizes.
  - Early stopping, the kept weights and the learning-rate schedule see the meta weights only (the
    trainer's validation runs at θ, as during training); only the final metrics see the served model.
    ``metrics.json`` ``maml_finetune`` reports the meta weights' valid and test metrics beside it, so
    what fine-tuning changed is visible, and its seconds and bytes. The adaptivity diagnostic reads
    the meta model (its hooks see whole batches; the served model splits them by domain).
  - A model with collapsible parts (``Collapsible``: APG, STAR, AdaSparse layers) is served uncollapsed:
    the adapted weights are those of the training form.
* **Resume.** The step keeps no state of its own: the optimisers' state and the global RNG (dropout,
  task draws), both in the checkpoint, are all it depends on, so ``--resume`` continues exactly.
* Not with ``train.compile`` or ``train.cuda_graph``: the step groups rows on the host (one sync per
  batch) and calls the model once per task and inner step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call

from adactr.data.schema import RESERVED
from adactr.data.tensors import Batch, SplitArrays
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


def split_tasks(groups: DomainGroups, query_fraction: float, min_rows: int = 1
                ) -> list[tuple[int, Tensor, Tensor]]:
    """(domain, support rows, query rows) of every domain with at least ``2 min_rows`` rows; rows are indices
    into the batch, each domain's in batch order, the query set its last ``round(query_fraction * n)`` rows
    (at least ``min_rows``, at most ``n - min_rows``). ``min_rows`` is 2 for a model with batch norm, whose
    training-mode statistics need two rows (:func:`min_task_rows`).

    >>> g = DomainGroups.of(torch.tensor([3, 2, 3, 3, 2, 5, 3, 3]))
    >>> [(d, s.tolist(), q.tolist()) for d, s, q in split_tasks(g, 0.4)]
    [(2, [1], [4]), (3, [0, 2, 3], [6, 7])]
    >>> [(d, s.tolist(), q.tolist()) for d, s, q in split_tasks(g, 0.8, min_rows=2)]
    [(3, [0, 2], [3, 6, 7])]
    """
    tasks, start = [], 0
    for d, n in zip(groups.present, groups.counts, strict=True):
        if n >= 2 * min_rows:
            n_query = min(n - min_rows, max(min_rows, math.floor(query_fraction * n + 0.5)))
            seg = groups.order[start:start + n]  # (n,) this domain's rows, batch order
            tasks.append((d, seg[:n - n_query], seg[n - n_query:]))
        start += n
    return tasks


def min_task_rows(model: nn.Module) -> int:
    """The fewest rows a support or query set may have: 2 when ``model`` has batch norm (its training-mode
    statistics of one row are undefined, and torch refuses them), else 1."""
    return 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1


def table_names(model: nn.Module) -> frozenset[str]:
    """The names of ``model``'s embedding tables (``embedding_parameters()``) among its parameters."""
    tables = {id(p) for p in model.embedding_parameters()}  # type: ignore[operator]
    return frozenset(n for n, p in model.named_parameters() if id(p) in tables)


class MAMLStep:
    """One first-order MAML optimisation step per call (see the module docstring); returns the mean query
    loss over the step's tasks, on the device."""

    def __init__(self, model: nn.Module, opts: list[torch.optim.Optimizer], *, config: MAMLConfig,
                 loss: TrainingLoss, clip_grad_norm: float = 0.0) -> None:
        """``loss``: the trainer's ``training_loss`` (passed in: the trainer imports this module)."""
        self.model, self.opts, self.cfg, self.clip = model, opts, config, clip_grad_norm
        self._training_loss = loss
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        # the weights the inner loop adapts (all but the tables with adapt_embeddings=false)
        self.adapted = [n for n in self.names if config.adapt_embeddings or n not in table_names(model)]
        # running statistics to move after the outer update (see the module docstring)
        self.has_stats = any(b.is_floating_point() for b in model.buffers())
        # batch norm layers that normalise a task with the running statistics (norm_stats=running)
        self.frozen_norms = ([m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
                             if config.norm_stats == "running" else [])
        self.min_rows = 1 if self.frozen_norms else min_task_rows(model)  # per support / query set

    def _loss(self, weights: Weights, batch: Batch) -> Tensor:
        """``training_loss`` of ``batch`` with the model's parameters replaced by ``weights`` and its
        buffers by a private copy (the real running statistics stay as they are); with norm_stats=running the
        batch norm layers run in evaluation mode, on the running statistics, for this forward."""
        buffers = {n: b.clone() for n, b in self.model.named_buffers()}
        forward = partial(functional_call, self.model, {**weights, **buffers})
        modes = [m.training for m in self.frozen_norms]
        for m in self.frozen_norms:
            m.eval()
        try:
            return self._training_loss(lambda b: forward((b,)), batch)
        finally:
            for m, mode in zip(self.frozen_norms, modes, strict=True):
                m.train(mode)

    def adapt(self, start: Weights, support: Batch, steps: int | None = None) -> Weights:
        """θ' after ``steps`` (default ``inner_steps``) SGD steps on ``support`` from ``start`` (new tensors;
        ``start`` unchanged)."""
        fast = dict(start)
        for _ in range(self.cfg.inner_steps if steps is None else steps):
            loss = self._loss(fast, support)
            grads = torch.autograd.grad(loss, [fast[n] for n in self.adapted], allow_unused=True)
            for n, g in zip(self.adapted, grads, strict=True):
                if g is not None:
                    fast[n] = torch.sub(fast[n].detach(), g, alpha=self.cfg.inner_lr).requires_grad_()
        return fast

    def tasks(self, batch: Batch) -> list[tuple[int, Tensor, Tensor, float]]:
        """(domain, support rows, query rows, weight) of the step's tasks; the weights sum to 1
        (``task_weight``, ``tasks_per_step``: see MAMLConfig)."""
        if batch.domain is None:
            raise ConfigError("train.meta=maml needs domains: prepare the data with --domain")
        tasks = split_tasks(DomainGroups.of(batch.domain), self.cfg.query_fraction, self.min_rows)
        if not tasks:
            return []
        k = self.cfg.tasks_per_step
        if self.cfg.task_weight == "rows":
            n_query = torch.tensor([float(len(q)) for _, _, q in tasks], dtype=torch.float64)
            if k and len(tasks) > k:
                # k draws with replacement, P(task) ∝ its query rows; weight = share of the draws: unbiased
                # for the row-weighted gradient. The global generator: checkpointed
                draws = torch.multinomial(n_query, k, replacement=True)
                weight = torch.bincount(draws, minlength=len(tasks)).double() / k
            else:
                weight = n_query / n_query.sum()
            return [(*t, float(w)) for t, w in zip(tasks, weight.tolist(), strict=True) if w > 0]
        if k and len(tasks) > k:
            pick = torch.randperm(len(tasks))[:k].sort().values.tolist()  # the global generator: checkpointed
            tasks = [tasks[i] for i in pick]
        return [(*t, 1.0 / len(tasks)) for t in tasks]

    def __call__(self, batch: Batch) -> Tensor:
        model = self.model
        params = dict(model.named_parameters())
        start = {n: params[n].detach().requires_grad_() for n in self.names}  # θ, shared storage, read only
        tasks = self.tasks(batch)
        if not tasks:  # no domain with enough rows (a tiny last batch): nothing to learn from, no step
            with torch.no_grad():
                return self._loss(start, batch).detach()
        acc: list[Tensor | None] = [None] * len(self.names)
        total = torch.zeros((), device=batch.label.device)
        for _domain, support, query, weight in tasks:
            fast = self.adapt(start, rows(batch, support))
            at = fast  # first-order MAML: the query loss at the adapted weights θ'
            loss = self._loss(at, rows(batch, query))
            grads = torch.autograd.grad(loss, [at[n] for n in self.names], allow_unused=True)
            for i, g in enumerate(grads):
                if g is not None:
                    part = g * weight
                    prev = acc[i]
                    acc[i] = part if prev is None else prev + part  # sparse + sparse for sparse tables
            total = total + weight * loss.detach()
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
        return total


def _key(kind: str, name: str) -> str:
    """The buffer holding ``kind`` of parameter ``name`` (a buffer name may not contain dots)."""
    return f"{kind}__{name.replace('.', '__')}"


class MAMLServed(nn.Module):
    """The served model of ``train.meta=maml`` with fine-tuning: every row is computed with its own domain's
    adapted weights (:func:`finetune_domains` fills them), a row of a domain without them (``<missing>``,
    ``<unseen>``, a domain with no train rows) with the meta weights of ``model``.

    Holds ``model`` (the meta weights and buffers) and, per adapted parameter ``n`` (every trainable one,
    the embedding tables only with ``adapt_embeddings``):

    * a dense parameter: ``w__n`` (D, *shape), each domain's adapted tensor (zeros for a domain without one);
    * a table: only the rows fine-tuning changed (those the domain's support rows look up), ``rows__n``
      (R,) row indices and ``vals__n`` (R, dim) their adapted values, sorted by domain, domain ``d``'s
      entries at ``offsets__n[d]:offsets__n[d + 1]`` (D + 1,). A dense copy per domain would be D times
      each table; this is at most the support rows' distinct ids per domain.

    ``domain_adapted`` (D,) bool says which domains have weights of their own. A forward groups the batch
    by domain (one sort, one host sync), runs ``torch.func.functional_call`` once per present adapted domain
    on its rows (a table with changed rows is copied with them put in: one copy per table and domain in
    the batch), and the meta model once on all other rows. Its structure follows from ``model``,
    ``n_domains`` and ``adapt_embeddings`` alone; the ragged table buffers take the shapes of the weights
    loaded into them, so ``load_run`` rebuilds it from config.json and the safetensors file.
    """

    domain_adapted: Tensor  # (D,) bool

    def __init__(self, model: nn.Module, *, n_domains: int, adapt_embeddings: bool) -> None:
        super().__init__()
        self.model, self.n_domains = model, n_domains
        tables = table_names(model)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.dense_names = [n for n, _ in trainable if n not in tables]
        self.table_names = [n for n, _ in trainable if n in tables and adapt_embeddings]
        self.register_buffer("domain_adapted", torch.zeros(n_domains, dtype=torch.bool))
        params = dict(trainable)
        for n in self.dense_names:
            self.register_buffer(_key("w", n), params[n].detach().new_zeros((n_domains, *params[n].shape)))
        for n in self.table_names:
            t = params[n].detach()
            self.register_buffer(_key("rows", n), torch.zeros(0, dtype=torch.long, device=t.device))
            self.register_buffer(_key("vals", n), t.new_zeros((0, *t.shape[1:])))
            self.register_buffer(_key("offsets", n), torch.zeros(n_domains + 1, dtype=torch.long, device=t.device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        for n in self.table_names:  # ragged: take the saved run's sizes
            for kind in ("rows", "vals"):
                saved = state_dict.get(prefix + _key(kind, n))
                if saved is not None:
                    mine = getattr(self, _key(kind, n))
                    setattr(self, _key(kind, n), mine.new_empty(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_domain(self, d: int, start: Weights, adapted: Weights) -> None:
        """Store domain ``d``'s ``adapted`` weights (fine-tuned from ``start``). Tables: only their changed
        rows, appended after the domains stored before, so domains must come in increasing order."""
        if self.domain_adapted[d:].any():
            raise ValueError(f"domain {d}: domains must be stored in increasing order, once each")
        self.domain_adapted[d] = True
        for n in self.dense_names:
            getattr(self, _key("w", n))[d] = adapted[n]
        for n in self.table_names:
            changed = (adapted[n] != start[n]).flatten(1).any(dim=1).nonzero().squeeze(1)  # (r,)
            rows_, vals = getattr(self, _key("rows", n)), getattr(self, _key("vals", n))
            setattr(self, _key("rows", n), torch.cat([rows_, changed]))
            setattr(self, _key("vals", n), torch.cat([vals, adapted[n][changed].to(vals.dtype)]))
            offsets = getattr(self, _key("offsets", n))
            offsets[d + 1:] = offsets[d] + changed.numel()

    def _weights(self, d: int, offsets: dict[str, list[int]]) -> Weights:
        """Domain ``d``'s adapted parameters, by name (``offsets``: the table offsets, on the host)."""
        w = {n: getattr(self, _key("w", n))[d] for n in self.dense_names}
        for n in self.table_names:
            lo, hi = offsets[n][d], offsets[n][d + 1]
            if hi > lo:
                rows_ = getattr(self, _key("rows", n))[lo:hi]  # (r,)
                w[n] = self.model.get_parameter(n).index_put((rows_,), getattr(self, _key("vals", n))[lo:hi])
        return w

    def forward(self, batch: Batch) -> Tensor:
        """Logits (B,), each row's from its domain's weights."""
        if batch.domain is None:
            raise ValueError("a model fine-tuned per domain (train.meta=maml) needs the domain column")
        groups = DomainGroups.of(batch.domain)
        if groups.max_id() >= self.n_domains:
            raise ValueError(f"domain id {groups.max_id()} is outside n_domains = {self.n_domains}")
        own = self.domain_adapted[groups.present_index].tolist()  # (U,) on the host
        if not any(own):
            return self.model(batch)
        offsets = {n: getattr(self, _key("offsets", n)).tolist() for n in self.table_names}
        pieces: list[tuple[Tensor, Tensor]] = []  # (rows of the batch, their logits)
        meta: list[Tensor] = []
        start = 0
        for d, n, mine in zip(groups.present, groups.counts, own, strict=True):
            idx = groups.order[start:start + n]  # (n,) this domain's rows
            start += n
            if mine:
                pieces.append((idx, functional_call(self.model, self._weights(d, offsets), (rows(batch, idx),))))
            else:
                meta.append(idx)
        if meta:
            idx = torch.cat(meta)
            pieces.append((idx, self.model(rows(batch, idx))))
        out = pieces[0][1].new_empty(batch.size)  # (B,)
        for idx, z in pieces:
            out[idx] = z
        return out

    def adapted_bytes(self) -> int:
        """Memory of the per-domain weights (beyond the meta model's)."""
        return sum(b.numel() * b.element_size() for b in self.buffers(recurse=False))


def finetune_domains(model: nn.Module, train: SplitArrays, *, config: MAMLConfig, n_domains: int,
                     loss: TrainingLoss, seed: int, device: torch.device) -> MAMLServed:
    """The served model: for every train domain (ids from ``RESERVED`` on with train rows), ``finetune_k``
    SGD steps at ``inner_lr`` from ``model``'s meta weights on ``finetune_rows`` of its train rows, drawn at
    random (seeded with ``seed``): :meth:`MAMLStep.adapt`, the inner update of training, dropout and batch
    statistics included. The global RNG is left as it was and ``model``'s weights are not changed; the served
    model comes back in evaluation mode (``model`` with it)."""
    served = MAMLServed(model, n_domains=n_domains, adapt_embeddings=config.adapt_embeddings)
    k = config.finetune_k
    domain = np.asarray(train.arrays["domain"])
    order = np.argsort(domain, kind="stable")  # train rows by domain
    counts = np.bincount(domain, minlength=n_domains)
    ends = np.cumsum(counts)
    gen = torch.Generator().manual_seed(seed)
    inner = MAMLStep(model, [], config=config, loss=loss)
    model.train()  # the inner update of training: dropout on, batch statistics of the support rows
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for d in range(RESERVED, n_domains):
            n = int(counts[d])
            if n < inner.min_rows:  # no train rows, or one row and batch norm: the meta weights serve it
                continue
            mine = order[ends[d] - n:ends[d]]  # (n,) domain d's train rows
            if config.finetune_rows and n > config.finetune_rows:
                mine = np.sort(mine[torch.randperm(n, generator=gen)[:config.finetune_rows].numpy()])
            support = SplitArrays({key: a[mine] for key, a in train.arrays.items()}).to_tensors(device).all()
            start = {name: p.detach().requires_grad_() for name, p in model.named_parameters()
                     if p.requires_grad}
            served.set_domain(d, start, inner.adapt(start, support, steps=k))
    return served.eval()


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


__all__ = ["MAMLServed", "MAMLStep", "finetune_domains", "maml_step", "min_task_rows", "rows", "split_tasks",
           "table_names"]
