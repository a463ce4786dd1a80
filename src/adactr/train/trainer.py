"""The trainer: everything about fitting a model that is not the model.

Optimiser groups (embeddings vs dense weights, each with its own optimiser and L2), early stopping with
patience counted in evaluations, reduce-on-plateau, best weights restored at the end, a progress bar with
live loss, and a checkpoint at every evaluation holding optimiser and RNG state so that ``resume`` after a
kill ends with exactly the metrics of an uninterrupted run (on the CPU).

Defaults that hold from a few thousand rows to millions: early stopping watches validation AUC, or
validation log loss when the validation split has too few positives for its AUC to mean much (the
Hanley-McNeil standard error above ``train.max_auc_se``: a 2k-row split with 40 positives knows its AUC
to ±0.046); nothing is decided before ``train.min_steps`` optimisation steps; an epoch of a small data
set is a handful of steps, so the epochs cap is 30 epochs or ``train.cap_steps`` steps, whichever is
more. On data with 50 or more steps an epoch and a validation split with enough positives these rules
change nothing (``tests/test_trainer.py::test_large_data_trains_as_before``).

Batches are index gathers on data already on the device; the epoch's permutation comes from a generator
seeded by (seed, epoch), so the data order does not depend on whether the run was resumed.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from adactr.data.tensors import Batch, DeviceSplit, SplitArrays
from adactr.errors import ConfigError, TrainingError
from adactr.models.registry import train_defaults_for
from adactr.nn.domain import per_domain_parameters, set_sparse_domain_gradients
from adactr.nn.penalty import collect_penalties
from adactr.nn.schedule import Schedule, advance_schedules, fit_schedules, schedules_of
from adactr.train import checkpoint
from adactr.train.config import (
    DomainOptimizer,
    EarlyStopping,
    FTRLConfig,
    Optimizer,
    TrainConfig,
    with_model_defaults,
    with_preset,
)
from adactr.train.cpu_memory import freed_memory_kept
from adactr.train.ftrl import FTRL, GroupFTRL
from adactr.train.graphed import CaptureBackend, CudaGraphs, GraphedStep
from adactr.train.lazy_adam import LazyAdam
from adactr.train.maml import maml_step
from adactr.train.metrics import evaluate as compute_metrics


def _make_optimizer(kind: Optimizer, params: list[nn.Parameter], *, lr: float, l2: float, ftrl: FTRLConfig,
                    capturable: bool = False) -> torch.optim.Optimizer:
    if kind is Optimizer.ADAM:
        # fused: one kernel for the whole group instead of a loop over tensors (measured ~15% faster
        # per DeepFM step on CPU); capturable: step counts on the device, safe inside a CUDA graph
        return torch.optim.Adam(params, lr=lr, weight_decay=l2, fused=True, capturable=capturable)
    if kind is Optimizer.ADAGRAD:
        return torch.optim.Adagrad(params, lr=lr, weight_decay=l2)
    if kind is Optimizer.SGD:
        return torch.optim.SGD(params, lr=lr, weight_decay=l2)
    # ftrl / gftrl: their own learning rate α and L2 (build_optimizers has refused a train.*_l2 with them)
    if kind is Optimizer.FTRL:
        return FTRL(params, lr=ftrl.alpha, beta=ftrl.beta, l1=ftrl.l1, l2=ftrl.l2)
    if kind is Optimizer.GFTRL:
        return GroupFTRL(params, lr=ftrl.alpha, beta=ftrl.beta, l1=ftrl.group_l1, l2=ftrl.group_l2)
    if l2:
        raise TrainingError("sparse_adam cannot apply embedding_l2 (set train.embedding_l2=0)")
    return torch.optim.SparseAdam(params, lr=lr)


def build_optimizers(model: nn.Module, cfg: TrainConfig, *, capturable: bool = False
                     ) -> list[torch.optim.Optimizer]:
    """One optimiser for the embedding tables, one for everything else (``capturable``: Adam's state
    kept on the device, for CUDA-graph capture), and with ``train.domain_optimizer`` lazy_adam one for the
    per-domain parameters (:func:`adactr.nn.domain.per_domain_parameters`, their gradients made sparse).
    ``train.lr`` / ``train.embedding_l2`` left unset take the model's registry defaults;
    ``train.optimizer_preset`` sets both optimisers."""
    cfg = with_model_defaults(cfg, train_defaults_for(model))
    emb = [p for p in model.embedding_parameters() if p.requires_grad]  # type: ignore[operator]
    emb_ids = {id(p) for p in emb}
    lazy = cfg.domain_optimizer is DomainOptimizer.LAZY_ADAM  # resolved by with_model_defaults
    per_domain = [p for p in per_domain_parameters(model) if p.requires_grad and id(p) not in emb_ids] if lazy else []
    set_sparse_domain_gradients(model, bool(per_domain))
    own_ids = emb_ids | {id(p) for p in per_domain}
    dense = [p for p in model.parameters() if p.requires_grad and id(p) not in own_ids]
    emb_kind = cfg.embedding_optimizer or cfg.optimizer
    if cfg.optimizer is Optimizer.SPARSE_ADAM:
        raise TrainingError("sparse_adam is for embeddings only: set train.embedding_optimizer=sparse_adam")
    if cfg.optimizer is Optimizer.GFTRL:
        raise ConfigError("gftrl is for embedding tables only (it sets whole rows to zero): set "
                          "train.embedding_optimizer=gftrl and a dense optimiser such as train.optimizer=ftrl, "
                          "or train.optimizer_preset=dynint for both")
    for kind, l2, key in ((emb_kind, cfg.embedding_l2, "embedding_l2"), (cfg.optimizer, cfg.dense_l2, "dense_l2")):
        if kind in (Optimizer.FTRL, Optimizer.GFTRL) and l2:
            own = "train.ftrl.group_l2" if kind is Optimizer.GFTRL else "train.ftrl.l2"
            raise ConfigError(f"{kind.value} has its own L2 ({own}): set train.{key}=0")
    if emb_kind in (Optimizer.SPARSE_ADAM, Optimizer.FTRL, Optimizer.GFTRL):  # sparse-aware: rows of the batch
        for m in model.modules():
            if isinstance(m, nn.Embedding) and id(m.weight) in emb_ids:  # not a table another optimiser owns
                m.sparse = True
    opts = []
    if emb:
        opts.append(_make_optimizer(emb_kind, emb, lr=cfg.lr, l2=cfg.embedding_l2, ftrl=cfg.ftrl,
                                    capturable=capturable))
    if dense:
        opts.append(_make_optimizer(cfg.optimizer, dense, lr=cfg.lr, l2=cfg.dense_l2, ftrl=cfg.ftrl,
                                    capturable=capturable))
    if per_domain:  # lr and its reductions as the others' (train.lr); L2 train.dense_l2, on the used rows only
        opts.append(LazyAdam(per_domain, lr=cfg.lr, weight_decay=cfg.dense_l2))
    return opts


def training_loss(forward: Callable[[Batch], Tensor], batch: Batch) -> Tensor:
    """The loss a training step minimises: BCE on ``forward(batch)``'s logits (mean over the batch) plus
    every term the model's parts add during that forward (the loss-term seam, :mod:`adactr.nn.penalty`:
    DynInt's orthogonal penalty, AdaSparse's sparsity regulariser)."""
    with collect_penalties() as terms:
        logits = forward(batch)  # (B,)
    loss = F.binary_cross_entropy_with_logits(logits, batch.label)
    for term in terms.values():
        loss = loss + term
    return loss


def _release_grads(opts: list[torch.optim.Optimizer]) -> None:
    """Every gradient to None: the next backward creates them afresh (inside a CUDA graph: in its pool)."""
    for o in opts:
        o.zero_grad(set_to_none=True)


def resident_budget(device: torch.device) -> int:
    """The automatic ``train.max_resident_bytes``: half of the free memory of a CUDA device, or half of
    the memory the system reports available (``MemAvailable``: free plus reclaimable page cache) for the
    CPU. Half, because training needs room beside the data (model, optimiser state, activations, and on
    the CPU the rest of the system); data above it streams in memory-mapped chunks instead of failing or
    swapping."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free) // 2
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024 // 2
    except (OSError, KeyError, ValueError):  # not Linux: physical memory, as sysconf reports it
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
        except (ValueError, OSError, AttributeError):
            return 8 * 2**30


@torch.no_grad()
def predict_logits(model: nn.Module, split: DeviceSplit, batch_size: int, *, keep_freed_memory: bool = True,
                   progress: bool = False, desc: str = "predict") -> Tensor:
    """Logits of every row, in order. On the CPU the batches run inside the allocator scope the training
    steps use (see adactr/train/cpu_memory.py): same-sized buffers batch after batch. ``progress``: a bar
    over the batches when there is more than one (it goes when done)."""
    model.eval()
    if not len(split):
        return torch.zeros(0)
    n_batches = math.ceil(len(split) / batch_size)
    batches = tqdm(split.batches(batch_size), total=n_batches, desc=desc, unit="batch", leave=False,
                   disable=not progress or n_batches < 2)
    with freed_memory_kept(keep_freed_memory and split.t["label"].device.type == "cpu"):
        return torch.cat([model(b) for b in batches])


def evaluate_split(model: nn.Module, split: DeviceSplit, *, batch_size: int, domain_names: tuple[str, ...] = (),
                   keep_freed_memory: bool = True, progress: bool = False, desc: str = "evaluate"
                   ) -> dict[str, Any]:
    logits = predict_logits(model, split, batch_size, keep_freed_memory=keep_freed_memory, progress=progress,
                            desc=desc).float()
    t = split.t
    return compute_metrics(logits, t["label"], groups=t.get("group"), domains=t.get("domain"),
                           domain_names=list(domain_names) or None)


def auc_standard_error(n_pos: int, n_neg: int, auc: float = 0.5) -> float:
    """The standard error of an AUC measured on ``n_pos`` positives and ``n_neg`` negatives (Hanley &
    McNeil, Radiology 1982, eq. 2); ``inf`` when either class is missing.

    >>> round(auc_standard_error(40, 1960), 4), round(auc_standard_error(19_000, 38_000), 4)
    (0.0461, 0.0026)
    """
    if n_pos < 1 or n_neg < 1:
        return math.inf
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (n_pos - 1) * (q1 - auc * auc) + (n_neg - 1) * (q2 - auc * auc)) / (n_pos * n_neg)
    return math.sqrt(var)


def _flush_denormal_on() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has a setter only): 1e-38 * 0.01 is a
    denormal, 0 when flushed."""
    return bool((torch.full((1,), 1e-38) * 0.01 == 0).item())


@contextmanager
def _denormals_flushed() -> Iterator[None]:
    """Denormals flushed to zero inside, the caller's setting restored on leaving (also on an error)."""
    before = _flush_denormal_on()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


@dataclass(frozen=True)
class _Monitor:
    """What early stopping watches: ``metric`` (auc or logloss) and the numbers that chose it."""

    metric: str
    reason: str
    valid_positives: int
    valid_negatives: int
    valid_auc_se: float

    def better(self, value: float, best: float) -> bool:
        if math.isnan(value):
            return False
        return value > best if self.metric == "auc" else value < best

    @property
    def worst(self) -> float:
        return -math.inf if self.metric == "auc" else math.inf


def choose_monitor(cfg: TrainConfig, labels: Tensor) -> _Monitor:
    """The early-stopping metric for a validation split with ``labels``: ``train.early_stopping``, where
    ``auto`` is AUC unless the split has so few positives (or negatives) that the standard error of its
    AUC exceeds ``train.max_auc_se``; then log loss, which every row informs, and a warning that says how
    noisy the AUC would have been."""
    n_pos = int(labels.sum())
    n_neg = int(labels.numel()) - n_pos
    se = auc_standard_error(n_pos, n_neg)
    counts = f"{n_pos} positives and {n_neg} negatives"
    if cfg.early_stopping is EarlyStopping.AUC:
        return _Monitor("auc", "train.early_stopping=auc", n_pos, n_neg, se)
    if cfg.early_stopping is EarlyStopping.LOGLOSS:
        return _Monitor("logloss", "train.early_stopping=logloss", n_pos, n_neg, se)
    if se <= cfg.max_auc_se:
        return _Monitor("auc", f"validation AUC standard error {se:.4f} <= train.max_auc_se", n_pos, n_neg, se)
    reason = (f"validation AUC standard error {se:.4f} > train.max_auc_se {cfg.max_auc_se:g} "
              f"({counts})")
    warnings.warn(f"the validation split has {counts}: its AUC is only known to about ±{se:.3f} (one standard "
                  f"error, Hanley-McNeil), too noisy to steer early stopping, so validation log loss does "
                  f"(set train.early_stopping=auc to use the AUC anyway)", RuntimeWarning, stacklevel=4)
    return _Monitor("logloss", reason, n_pos, n_neg, se)


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: float = -1  # the epoch of the kept weights (fractional when evaluated inside an epoch)
    best_auc: float = -math.inf  # validation AUC of the kept weights
    best_logloss: float = math.inf  # validation log loss of the kept weights
    best_step: int = 0
    epochs: int = 0
    steps: int = 0  # optimisation steps taken
    train_seconds: float = 0.0
    train_samples: int = 0
    stopped_early: bool = False
    # how the run was steered: the early-stopping metric and why, the validation split's class counts and
    # AUC standard error, and the schedule the data resolved (steps an epoch, epochs cap, evaluation period,
    # minimum steps, learning rate); for metrics.json
    early_stopping: dict[str, Any] = field(default_factory=dict)
    # with train.cuda_graph: how the steps ran (replays, eager_steps, captures, failed); else None
    cuda_graph: dict[str, Any] | None = None

    @property
    def samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else 0.0


def _warn_unfinished(model: nn.Module, schedules: list[Schedule], steps: int) -> None:
    """Warn when a schedule (AdaSparse's α, λ̂) had not reached its end value in the kept weights: the model
    then evaluates and serves with a value training was still moving (e.g. AdaSparse's α at 0.4 of 5 leaves
    every fusion factor above ε, so nothing is pruned), a horizon longer than the run."""
    names = {id(m): n for n, m in model.named_modules()}
    late = [s for s in schedules if not math.isclose(float(s.value), s.at(2**62), rel_tol=1e-5)]
    if late:
        s = late[0]
        fix = f"set {s.setting}" if s.setting else "shorten its horizon"
        warnings.warn(f"{len(late)} schedule(s) had not reached their end in the kept weights (after {steps} steps "
                      f"in all), e.g. {names.get(id(s), '?')} at {float(s.value):.3g} of {s.at(2**62):g}: the model "
                      f"serves with those values; {fix} to fit in the steps before the best epoch", stacklevel=3)


@dataclass
class _Progress:
    """Where training stands between evaluations (what a checkpoint must hold to resume exactly)."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # its batches already trained
    bad_evals: int = 0  # evaluations since the best one, counted from train.min_steps on
    stopped: bool = False


class Trainer:
    """Fits a model on a train split, monitoring a validation split (AUC, or log loss when it is small)."""

    def __init__(self, *, config: TrainConfig, device: torch.device, run_dir: Path | None = None,
                 domain_names: tuple[str, ...] = (), capture_backend: CaptureBackend | None = None) -> None:
        """``capture_backend`` replaces CUDA graphs under ``train.cuda_graph`` (tests use
        :class:`adactr.train.graphed.EagerReplay` to run the capture schedule on the CPU)."""
        self.cfg, self.device, self.run_dir = config, device, run_dir
        self.domain_names = domain_names
        self.capture_backend = capture_backend

    def _graph_backend(self) -> CaptureBackend | None:
        cfg = self.cfg
        if not cfg.cuda_graph:
            return None
        if cfg.compile:
            raise ConfigError("train.cuda_graph and train.compile cannot both be on (torch.compile has its own "
                              "CUDA-graph mode); set one of them to false")
        chosen = with_preset(cfg)  # the optimisers a preset sets
        kinds = {chosen.optimizer, chosen.embedding_optimizer or chosen.optimizer}
        if kinds != {Optimizer.ADAM}:
            preset = f" (train.optimizer_preset={cfg.optimizer_preset.value})" if cfg.optimizer_preset else ""
            raise ConfigError(f"train.cuda_graph supports the adam optimiser only, not "
                              f"{', '.join(sorted(k.value for k in kinds))}{preset}")
        if self.capture_backend is not None:
            return self.capture_backend
        if self.device.type == "cuda":
            return CudaGraphs(self.device)
        warnings.warn(f"train.cuda_graph needs a CUDA device: training eagerly on {self.device.type}",
                      RuntimeWarning, stacklevel=3)
        return None

    # ---- data ------------------------------------------------------------------------------------
    def _epoch_batches(self, train: SplitArrays, resident: DeviceSplit | None, epoch: int
                       ) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.cfg.seed * 10_007 + epoch)
        if resident is not None:
            yield from resident.batches(self.cfg.batch_size, shuffle=True, generator=gen)
            return
        # bigger than the device budget: chunks in a shuffled order, rows shuffled within each chunk
        n_chunks = math.ceil(len(train) / self.cfg.chunk_rows)
        order = np.random.default_rng(self.cfg.seed * 10_007 + epoch).permutation(n_chunks)
        for chunk in train.chunks(self.cfg.chunk_rows, self.device, order):
            yield from chunk.batches(self.cfg.batch_size, shuffle=True, generator=gen)

    # ---- fit -------------------------------------------------------------------------------------
    def fit(self, model: nn.Module, train: SplitArrays, valid: DeviceSplit, *, resume: bool = False
            ) -> FitResult:
        # Adam's second moments of rarely-seen embedding rows decay into denormal floats, which the CPU
        # handles ~100x slower; flushing them to zero changes nothing measurable in accuracy. Only while
        # fitting: the setting is the process's, and the caller's is restored.
        with _denormals_flushed():
            return self._fit(model, train, valid, resume=resume)

    def _fit(self, model: nn.Module, train: SplitArrays, valid: DeviceSplit, *, resume: bool) -> FitResult:
        # a model handed over without a run's resolved config: its registry defaults for what is unset
        cfg = with_model_defaults(self.cfg, train_defaults_for(model))
        model.to(self.device)
        graphs = self._graph_backend()
        opts = build_optimizers(model, cfg, capturable=isinstance(graphs, CudaGraphs))
        streamed = train.nbytes > (cfg.max_resident_bytes or resident_budget(self.device))
        result = FitResult()
        best_state: dict[str, Tensor] | None = None
        at = _Progress()
        monitor: _Monitor | None = None
        if resume and self.run_dir is not None:
            st = checkpoint.load_state(self.run_dir / "last.pt")
            if "monitor" not in st:  # written before the trainer counted steps and chose its metric
                raise TrainingError(f"{self.run_dir / 'last.pt'}: written by an older adactr, which cannot be "
                                    f"resumed exactly; train again without --resume")
            model.load_state_dict(st["model"])
            if len(st["optimizers"]) != len(opts):
                raise TrainingError(f"{self.run_dir / 'last.pt'} holds {len(st['optimizers'])} optimisers, this run "
                                    f"builds {len(opts)}: a run saved before train.domain_optimizer existed resumes "
                                    f"with \"domain_optimizer\": \"dense\" in the train section of its config.json")
            for o, s in zip(opts, st["optimizers"], strict=True):
                o.load_state_dict(s)
            torch.set_rng_state(st["rng"])
            if torch.cuda.is_available() and "cuda_rng" in st:
                torch.cuda.set_rng_state(st["cuda_rng"])
            best_state = st["best_model"] or None
            result = FitResult(history=list(st["history"]), best_epoch=st["best_epoch"],
                               best_auc=float(st["best_auc"]), best_logloss=float(st["best_logloss"]),
                               best_step=int(st["best_step"]), epochs=int(st["epochs_done"]),
                               steps=int(st["steps"]), train_seconds=float(st["train_seconds"]),
                               train_samples=int(st["train_samples"]), stopped_early=bool(st["stopped"]))
            at = _Progress(epoch=int(st["epoch"]), step_in_epoch=int(st["step_in_epoch"]),
                           bad_evals=int(st["bad_evals"]), stopped=bool(st["stopped"]))
            # the interrupted run's choices, whatever this machine has free now (the batch order depends on
            # streaming: chunks or one permutation) and whatever a warning would say again
            streamed = bool(st["streamed"])
            m = st["monitor"]
            monitor = _Monitor(m["metric"], m["reason"], int(m["valid_positives"]), int(m["valid_negatives"]),
                               float(m["valid_auc_se"]))
        if monitor is None:
            monitor = choose_monitor(cfg, valid.t["label"])
        self._streamed, self._monitor = streamed, monitor
        resident = None if streamed else train.to_tensors(self.device, load=True)
        n_steps = self._steps_per_epoch(len(train), streamed=resident is None)
        max_epochs = cfg.epochs if cfg.epochs is not None else max(30, math.ceil(cfg.cap_steps / max(n_steps, 1)))
        result.early_stopping = {
            "metric": monitor.metric, "reason": monitor.reason, "valid_positives": monitor.valid_positives,
            "valid_negatives": monitor.valid_negatives, "valid_auc_se": round(monitor.valid_auc_se, 6),
            "patience": cfg.patience, "min_steps": cfg.min_steps, "steps_per_epoch": n_steps,
            "eval_every_steps": cfg.eval_every_steps or n_steps, "max_epochs": max_epochs, "lr": cfg.lr,
            "embedding_l2": cfg.embedding_l2}
        step_fn = torch.compile(model) if cfg.compile else model
        run_step: Callable[[Batch], Tensor] = partial(self._step, step_fn, model, opts)
        if cfg.meta is not None:  # train.meta=maml, the only strategy: domains as meta-learning tasks
            run_step = maml_step(model, opts, cfg, has_domain="domain" in train.arrays, loss=training_loss)
        if graphs is not None:
            run_step = GraphedStep(run_step, backend=graphs, release_grads=partial(_release_grads, opts),
                                   learning_rates=lambda: tuple(g["lr"] for o in opts for g in o.param_groups))
        every = cfg.eval_every_steps
        # the schedule seam (adactr.nn.schedule): advanced after every optimisation step, never by a forward
        schedules = schedules_of(model)
        fit_schedules(schedules, n_steps)  # horizons given in epochs (model.adasparse.schedule_epochs)
        # the evaluation period so far: steps, training seconds, and the loss sum of its earlier epochs (a
        # device tensor, added to once an epoch: no host sync and no extra work per step)
        period_steps, period_seconds, carried_loss = 0, 0.0, torch.zeros((), device=self.device)
        t0 = 0.0
        losses = torch.zeros(0, device=self.device)
        period_start = 0  # where the period begins in this epoch's loss buffer

        def timed() -> None:
            """The training time since ``t0`` into the run's and the evaluation period's totals."""
            nonlocal period_seconds
            self._sync()
            seconds = time.perf_counter() - t0
            result.train_seconds += seconds
            period_seconds += seconds

        def evaluate(epoch: int, step: int) -> bool:
            """Validate, keep the best weights, reduce the learning rate or stop; True = stop."""
            nonlocal best_state, period_steps, period_seconds, carried_loss, period_start
            timed()
            seconds, result.epochs = period_seconds, epoch + 1
            if period_steps == step - period_start:  # the period lies in this epoch (always, per epoch)
                train_loss = float(losses[period_start:step].mean())
            else:
                train_loss = float((carried_loss + losses[period_start:step].sum()) / period_steps)
            metrics = evaluate_split(model, valid, batch_size=cfg.eval_batch_size, domain_names=self.domain_names,
                                     keep_freed_memory=cfg.keep_freed_memory, progress=cfg.progress,
                                     desc="validate")
            value = metrics[monitor.metric]
            best = result.best_auc if monitor.metric == "auc" else result.best_logloss
            improved = monitor.better(value, best) or best_state is None
            where = epoch + 1 if step == n_steps else round(epoch + step / n_steps, 4)
            record = {"epoch": where, "step": result.steps,
                      "train_loss": train_loss, "valid_auc": metrics["auc"],
                      "valid_logloss": metrics["logloss"], "seconds": round(seconds, 3),
                      "lr": opts[-1].param_groups[0]["lr"]}
            result.history.append(record)
            if cfg.progress:
                tqdm.write(f"epoch {where}: train loss {record['train_loss']:.5f}  valid AUC {metrics['auc']:.5f}  "
                           f"logloss {metrics['logloss']:.5f}  ({seconds:.1f}s){'  *' if improved else ''}")
            if improved:
                result.best_auc, result.best_logloss = metrics["auc"], metrics["logloss"]
                result.best_epoch, result.best_step, at.bad_evals = where, result.steps, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            elif result.steps >= cfg.min_steps:
                at.bad_evals += 1
                for o in opts:
                    for g in o.param_groups:
                        g["lr"] = max(g["lr"] * cfg.lr_decay, cfg.min_lr)
            at.stopped = at.bad_evals >= cfg.patience
            period_steps, period_seconds, carried_loss = 0, 0.0, torch.zeros((), device=self.device)
            period_start = step
            # the next evaluation's position: after this one (the end of an epoch moves to the next)
            at.epoch, at.step_in_epoch = (epoch + 1, 0) if step == n_steps else (epoch, step)
            if self.run_dir is not None:
                self._save(model, opts, best_state, result, at)
            return at.stopped

        start_epoch, skip = at.epoch, at.step_in_epoch
        if at.stopped:
            start_epoch = max_epochs
            result.stopped_early = True
        for epoch in range(start_epoch, max_epochs):
            model.train()
            losses = torch.zeros(n_steps, device=self.device)
            bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{max_epochs}", disable=not cfg.progress,
                       unit="batch", leave=False)
            step = period_start = skip if epoch == start_epoch else 0
            bar.update(step)
            self._sync()
            t0 = time.perf_counter()
            stop = False
            # the training steps reuse the same buffers: keep them in the process (CPU) for the epoch
            keep = self.device.type == "cpu" and cfg.keep_freed_memory
            with freed_memory_kept(keep):
                batches = self._epoch_batches(train, resident, epoch)
                for _ in range(step):  # resuming inside an epoch: the same order, the trained batches passed
                    next(batches)
                for batch in batches:
                    losses[step] = run_step(batch)
                    step += 1
                    period_steps += 1
                    result.steps += 1
                    advance_schedules(schedules, result.steps)
                    result.train_samples += batch.size
                    if cfg.progress and (step % 50 == 0 or step == n_steps):
                        # the only host sync between evaluations, and only with a progress bar: without one
                        # the loss buffer is checked at the next evaluation (it still names the first bad step)
                        self._check_finite(losses, step, epoch)
                        bar.set_postfix(loss=f"{losses[max(0, step - 50):step].mean().item():.4f}", refresh=False)
                        bar.update(step - bar.n)
                    if every and result.steps % every == 0 and step < n_steps:
                        self._check_finite(losses, step, epoch)
                        stop = evaluate(epoch, step)
                        if stop:
                            break
                        model.train()
                        t0 = time.perf_counter()
            bar.close()
            if stop:
                result.stopped_early = True
                break
            self._check_finite(losses, step, epoch)
            if not every or result.steps % every == 0 or epoch + 1 == max_epochs:
                if evaluate(epoch, step):
                    result.stopped_early = True
                    break
            else:  # no evaluation at this epoch's end: its losses and time go into the period's totals
                timed()
                result.epochs = epoch + 1
                carried_loss = carried_loss + losses[period_start:step].sum()

        if isinstance(run_step, GraphedStep):
            result.cuda_graph = {"replays": run_step.replays, "eager_steps": run_step.eager_steps,
                                 "captures": run_step.backend.captures, "failed": run_step.failed}
        if best_state is not None:
            model.load_state_dict(best_state)
        _warn_unfinished(model, schedules, result.steps)
        return result

    # ---- helpers ---------------------------------------------------------------------------------
    def _step(self, step_fn: Any, model: nn.Module, opts: list[torch.optim.Optimizer], batch: Batch) -> Tensor:
        """One optimisation step; returns the batch's loss (still on the device)."""
        loss = training_loss(step_fn, batch)
        _release_grads(opts)
        loss.backward()
        if self.cfg.clip_grad_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), self.cfg.clip_grad_norm)
        for o in opts:
            o.step()
        return loss.detach()

    def _steps_per_epoch(self, n: int, *, streamed: bool) -> int:
        bs = self.cfg.batch_size
        if not streamed:
            return math.ceil(n / bs)
        rows = self.cfg.chunk_rows
        return sum(math.ceil(min(rows, n - s) / bs) for s in range(0, n, rows))

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @staticmethod
    def _check_finite(losses: Tensor, step: int, epoch: int) -> None:
        bad = ~torch.isfinite(losses[:step])
        if bool(bad.any()):
            first = int(bad.nonzero()[0])
            raise TrainingError(f"loss became {float(losses[first])} at epoch {epoch + 1}, step {first + 1} "
                                f"(try a lower train.lr or train.clip_grad_norm)")

    def _save(self, model: nn.Module, opts: list[torch.optim.Optimizer], best_state: dict[str, Tensor] | None,
              result: FitResult, at: _Progress) -> None:
        """The trainer's state after an evaluation: everything ``resume`` needs to continue exactly."""
        assert self.run_dir is not None
        m = self._monitor
        state = {
            "model": model.state_dict(),
            "optimizers": [o.state_dict() for o in opts],
            "rng": torch.get_rng_state(),
            "best_model": best_state or {},
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_auc": result.best_auc,
            "best_logloss": result.best_logloss,
            "best_step": result.best_step,
            "epochs_done": result.epochs,
            "steps": result.steps,
            "epoch": at.epoch,
            "step_in_epoch": at.step_in_epoch,
            "bad_evals": at.bad_evals,
            "stopped": at.stopped,
            "streamed": self._streamed,
            "monitor": {"metric": m.metric, "reason": m.reason, "valid_positives": m.valid_positives,
                        "valid_negatives": m.valid_negatives, "valid_auc_se": m.valid_auc_se},
            "train_seconds": result.train_seconds,
            "train_samples": result.train_samples,
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        checkpoint.save_state(self.run_dir / "last.pt", state)
