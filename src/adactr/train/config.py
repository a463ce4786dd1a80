"""Training hyper-parameters and the full run config (model + training)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from adactr.errors import ConfigError
from adactr.models.config import ModelConfig

if TYPE_CHECKING:
    from adactr.models.registry import TrainDefaults


class Optimizer(str, Enum):
    ADAM = "adam"
    ADAGRAD = "adagrad"
    SGD = "sgd"
    SPARSE_ADAM = "sparse_adam"  # embeddings only: touches just the looked-up rows (huge vocabularies)
    FTRL = "ftrl"  # FTRL-Proximal (McMahan 2013), learning rate train.ftrl.alpha; touches just the looked-up rows
    GFTRL = "gftrl"  # embeddings only: GroupLasso-FTRL (DynInt), whole rows set to exactly zero


class DomainOptimizer(str, Enum):
    """How the per-domain parameters (per-domain towers, gates, experts, STAR's ``W_p``) are trained."""

    LAZY_ADAM = "lazy_adam"  # Adam on the batch's domains' rows only (adactr/train/lazy_adam.py)
    DENSE = "dense"  # with the other dense weights (train.optimizer), every domain's rows every step


class OptimizerPreset(str, Enum):
    """A named optimiser strategy: sets train.optimizer and train.embedding_optimizer."""

    DYNINT = "dynint"  # the DynInt / xDeepInt paper's: gftrl for the embedding tables, ftrl for every other weight


@dataclass(frozen=True)
class FTRLConfig:
    """The constants of ``ftrl`` and ``gftrl`` (adactr/train/ftrl.py) for adactr's loss, the batch MEAN.

    The official xDeepInt code sums the loss over the batch: its β, λ1, λ2 are B times these (batch B), its
    α the same (the scale relation of adactr/train/ftrl.py).
    """

    # α, the learning rate of ftrl and gftrl groups (train.lr is for the other optimisers; reduce-on-plateau
    # scales α too). 0.02: the official value for both optimisers; α does not depend on the loss scale.
    alpha: float = 0.02
    # β: the authors' mean-loss G-FTRL value (AdaEnsemble, 2023); the official summed-loss G-FTRL's β = 1
    # at batch 4096 is 2.4e-4 here. Small, so that the first step keeps most of a weight's initial value.
    beta: float = 1e-4
    # λ1 of ftrl: the official FTRL's l1 = 0.1 on a loss summed over batches of 4096, 0.1 / 4096
    l1: float = 2.5e-5
    # λ2 of ftrl: the official l2 = 0.1 in TensorFlow's form (2·l2 = 0.2 in McMahan's), 0.2 / 4096
    l2: float = 5e-5
    # λ1 of gftrl: a row is zero while the norm of its z is at most λ1·sqrt(D). 1e-3: the authors' mean-loss
    # value (AdaEnsemble, 2023); the official summed-loss λ1 = 10 at batch 4096 is 2.4e-3 here
    group_l1: float = 1e-3
    # λ2 of gftrl (it replaces train.embedding_l2): the same sources as group_l1
    group_l2: float = 1e-3

    def __post_init__(self) -> None:
        if not self.alpha > 0:
            raise ConfigError(f"train.ftrl.alpha (α) must be positive, got {self.alpha}")
        for name in ("beta", "l1", "l2", "group_l1", "group_l2"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"train.ftrl.{name} must be >= 0, got {getattr(self, name)}")


class MetaLearning(str, Enum):
    """A training strategy that treats the domains as meta-learning tasks (adactr/train/maml.py)."""

    MAML = "maml"  # first-order MAML, each domain of a batch one task; settings train.maml.*


@dataclass(frozen=True)
class MAMLConfig:
    """The settings of ``train.meta=maml`` (adactr/train/maml.py gives the design and its reasons)."""

    # SGD steps on a task's support rows from the meta weights. 1: the smallest adaptation, one extra
    # forward and backward per task; MAML's own experiments use 1-5
    inner_steps: int = 1
    # the inner SGD learning rate on the mean BCE. 0.01: evaluation uses the meta weights, which only the
    # adapted weights' query loss trains, so the inner step must stay small. Measured, DNN on ML-1M, 2
    # epochs: 0.1 left meta weights that predict badly (valid logloss 2.39, AUC 0.745 after epoch 1, the
    # adapted ones' query loss 0.59), 0.01 stays beside ordinary training (0.545 / 0.787 against 0.543 /
    # 0.789); docs/multidomain.md. MAMDR's inner loop is Adam at 1e-3 over a whole pass of the domain
    inner_lr: float = 0.01
    # share of each task's rows (in a batch) held out as its query set, whose loss at the adapted weights
    # trains the meta weights. 0.8: MAMDR's split (config meta_split_ratio 0.2 is the share of its inner
    # meta-train set, model_zoo/maml.py ``n_train = n_data * meta_split_ratio``); most rows train the meta
    # weights, as in an ordinary step
    query_fraction: float = 0.8
    # at most this many domains (tasks) of a batch per step, drawn at random; 0 = every domain in the batch
    # with at least two rows. Every task costs (inner_steps + 1) forward-backward passes on its rows plus
    # a pass over the weights; docs/multidomain.md has the measured cost
    tasks_per_step: int = 0
    # how the meta gradient weighs the step's tasks. "tasks": equally, the MAML objective (the mean over
    # tasks of each task's mean query loss), so a domain with 2 rows in the batch counts as much as one with
    # 800; tasks_per_step draws that many domains uniformly. "rows": by query rows, so the meta gradient is
    # the gradient of the mean query loss over all the step's query rows (each at its own domain's adapted
    # weights), the objective the pooled and row-weighted metrics measure; tasks_per_step draws that many
    # tasks with replacement in proportion to their query rows and weighs each by how often it was drawn,
    # an unbiased estimate of the same gradient. Measured on ML-1M's 241 gender x age x occupation domains
    # (docs/multidomain.md): "tasks" with 32 tasks a step trains slowly and ends far below the backbone.
    # "tasks" is the default: the meta-learning literature's objective, and what earlier runs measured
    task_weight: str = "tasks"
    # which statistics batch norm normalises a task's rows with, in the inner and the query forwards and in
    # per-domain fine-tuning. "task": the task's own rows in training mode (MAML's transductive batch norm;
    # support and query sets then need two rows each). "running": the model's running statistics, which
    # evaluation uses too (they are still moved by one forward of the whole batch after each step). A task
    # is one domain's rows, so "task" statistics remove each domain's mean from every normalised layer in
    # training while evaluation normalises with the mixture's: docs/multidomain.md has the measured effect
    norm_stats: str = "task"
    # the inner loop adapts the embedding tables too (MAMDR meta_parms "all"); false adapts every other
    # weight and keeps the tables at the meta weights inside a task (MAMDR "all_hidden"): a dense copy of
    # each table per task and inner step is what it saves, the cost that grows with the vocabulary
    adapt_embeddings: bool = True
    # K: after training, SGD steps at inner_lr from the meta weights on each train domain's own rows, the
    # weights that then serve that domain's rows (MAMDR's meta_finetune_step; adactr/train/maml.py,
    # MAMLServed). None = inner_steps: serving then takes exactly the adaptation the meta objective trained
    # the meta weights for (the query loss at θ after inner_steps steps). 0 = the meta weights serve every
    # domain (the served model is the plain backbone)
    finetune_steps: int | None = None
    # the support set of a domain's fine-tuning: this many of its train rows, drawn once at random (all of
    # them when it has fewer), every step on the same rows as the inner loop does. 4096: the mean-BCE
    # gradient of any sample is an unbiased estimate of the domain's, so a support set larger than a
    # training task's (~20 % of a domain's rows in a batch) takes the same expected step with less noise,
    # while the cost stays bounded: at most K forward-backward passes of 4096 rows per domain. 0 = every
    # train row of the domain in one pass (its exact gradient; memory grows with the largest domain)
    finetune_rows: int = 4096

    @property
    def finetune_k(self) -> int:
        """K, the fine-tuning steps (``finetune_steps``, or ``inner_steps`` when that is None)."""
        return self.inner_steps if self.finetune_steps is None else self.finetune_steps

    def __post_init__(self) -> None:
        if self.finetune_steps is not None and not self.finetune_steps >= 0:
            raise ConfigError(f"train.maml.finetune_steps must be >= 0 (0 = serve the meta weights), got "
                              f"{self.finetune_steps}")
        if not self.finetune_rows >= 0:
            raise ConfigError(f"train.maml.finetune_rows must be >= 0 (0 = all of a domain's train rows), got "
                              f"{self.finetune_rows}")
        if not self.inner_steps >= 0:
            raise ConfigError(f"train.maml.inner_steps must be >= 0, got {self.inner_steps}")
        if not self.inner_lr >= 0:
            raise ConfigError(f"train.maml.inner_lr must be >= 0, got {self.inner_lr}")
        if not 0 < self.query_fraction < 1:
            raise ConfigError(f"train.maml.query_fraction must be strictly between 0 and 1 (a task needs "
                              f"support and query rows), got {self.query_fraction}")
        if self.task_weight not in ("tasks", "rows"):
            raise ConfigError(f"train.maml.task_weight must be 'tasks' or 'rows', got {self.task_weight!r}")
        if self.norm_stats not in ("task", "running"):
            raise ConfigError(f"train.maml.norm_stats must be 'task' or 'running', got {self.norm_stats!r}")
        if not self.tasks_per_step >= 0:
            raise ConfigError(f"train.maml.tasks_per_step must be >= 0 (0 = every domain of a batch), got "
                              f"{self.tasks_per_step}")


class EarlyStopping(str, Enum):
    """The validation metric that picks the kept weights, reduces the learning rate and stops the run."""

    AUTO = "auto"  # AUC, or log loss when the validation split is too small for its AUC (train.max_auc_se)
    AUC = "auc"
    LOGLOSS = "logloss"


class Device(str, Enum):
    AUTO = "auto"  # cuda when available, else cpu
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class TrainConfig:
    # An upper bound: early stopping usually ends runs far sooner. None = 30 epochs or train.cap_steps
    # optimisation steps, whichever is more: 30 epochs of a small data set are few steps (16k rows at batch
    # 4096: 4 steps an epoch, 120 in 30 epochs, where LR at lr 1e-2 needs ~500-1000 to fit).
    epochs: int | None = None
    # 1500 = 30 epochs of Frappe_x1 at batch 4096: data with 50 or more steps an epoch keeps the 30 epochs
    cap_steps: int = 1500
    batch_size: int = 4096  # BARS setting for Frappe / Criteo
    eval_batch_size: int = 65536
    # None = the model's own default (adactr.models.registry.TrainDefaults: 1e-2 for LR and FM, whose
    # Frappe_x1 runs stop early at 0.925 / 0.922 test AUC with 1e-3; 1e-3 for the deep models, as in BARS).
    # A run records the value it used in config.json.
    lr: float | None = None
    optimizer: Optimizer = Optimizer.ADAM
    # Embeddings get their own optimiser group: their own L2 (the FuxiCTR "embedding_regularizer",
    # lambda/2 ||E||^2, i.e. L2 added to the gradient) and optionally a sparse optimiser.
    embedding_optimizer: Optimizer | None = None  # None = same as `optimizer`
    # dynint: train.optimizer=ftrl and train.embedding_optimizer=gftrl, the DynInt paper's strategy (a run's
    # config.json records the optimisers it set). None = train.optimizer and train.embedding_optimizer as given.
    optimizer_preset: OptimizerPreset | None = None
    ftrl: FTRLConfig = field(default_factory=FTRLConfig)  # the constants of ftrl / gftrl groups
    # The per-domain parameters of multi-domain models (adactr.nn.domain.per_domain_parameters). None =
    # lazy_adam when train.optimizer is adam and train.clip_grad_norm is off, else dense. lazy_adam steps
    # only the batch's domains' rows: a domain's weights then change only with its own rows (dense Adam keeps
    # moving an absent domain's weights by their momentum), and an absent domain costs nothing (its rows are
    # neither zeroed, nor stepped). Identical to adam when every domain is in every batch. dense: every row
    # with train.optimizer (any optimiser), as before. Its lr and L2 are train.lr and train.dense_l2.
    domain_optimizer: DomainOptimizer | None = None
    # maml: train by first-order MAML with each domain a task (adactr/train/maml.py; needs --domain data);
    # None = ordinary steps on the mixed batch
    meta: MetaLearning | None = None
    maml: MAMLConfig = field(default_factory=MAMLConfig)  # the settings of train.meta=maml
    embedding_l2: float | None = None  # None = the model's own default (LR 0, FM 1e-4, deep models 1e-3)
    dense_l2: float = 0.0
    patience: int = 2  # evaluations without a better validation metric before stopping (BARS: 2 epochs)
    lr_decay: float = 0.1  # reduce-on-plateau factor applied at each evaluation without improvement
    # 0 = evaluate once per epoch; N = every N optimisation steps (and at the end of the last epoch), for
    # runs of a few long epochs. An interrupted run resumes from its last evaluation, mid-epoch or not.
    eval_every_steps: int = 0
    # Neither early stopping nor a learning-rate reduction before this many optimisation steps: a small
    # data set has a handful of steps an epoch, and its first evaluations say little. (Evaluations before
    # it still count for the kept weights.) 100 = two epochs of Frappe_x1 at batch 4096, so on data with
    # 50 or more steps an epoch it changes nothing: the earliest decision was at epoch 2 already.
    min_steps: int = 100
    early_stopping: EarlyStopping = EarlyStopping.AUTO
    # auto: validation AUC steers early stopping only when its standard error (Hanley & McNeil 1982, for
    # an AUC of 0.5, from the split's positives and negatives) is at most this; else validation log loss,
    # with a warning. 0.01 needs about 850 positives among many more negatives (1,700 of each when
    # balanced); Frappe_x1's validation split (19k positives) gives 0.0026, 2k rows with 40 positives 0.046.
    max_auc_se: float = 0.01
    min_lr: float = 1e-6
    clip_grad_norm: float = 0.0  # 0 = off
    seed: int = 2022
    device: Device = Device.AUTO
    threads: int = 0  # CPU threads for torch; 0 = torch's default
    # Bytes of encoded training data kept resident on the device; larger sets stream memory-mapped chunks.
    # 0 = automatic: half of the device's free memory (CUDA) or of the memory available (CPU), as found
    # when training starts; see adactr.train.trainer.resident_budget.
    max_resident_bytes: int = 0
    chunk_rows: int = 2_000_000
    compile: bool = False  # torch.compile the model (GPU: worth it for long runs)
    # CUDA only: capture the whole training step (forward, backward, Adam) in a CUDA graph and replay it
    # per batch, removing the per-operator launch cost; see adactr/train/graphed.py. Ignored on the CPU.
    cuda_graph: bool = False
    # CPU: keep freed memory in the process (glibc mallopt) so steps reuse buffers instead of
    # page-faulting fresh ones; see adactr/train/cpu_memory.py. Changes speed only, never results.
    keep_freed_memory: bool = True
    progress: bool = True


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# embedding optimisers that take no train.embedding_l2: sparse_adam cannot apply one, ftrl and gftrl have
# their own λ2 (train.ftrl.l2 / train.ftrl.group_l2)
_NO_EMBEDDING_L2 = (Optimizer.SPARSE_ADAM, Optimizer.FTRL, Optimizer.GFTRL)


def with_preset(train: TrainConfig) -> TrainConfig:
    """``train`` with ``train.optimizer_preset`` spelled out in ``train.optimizer`` and
    ``train.embedding_optimizer`` (it overrides the default adam; another choice of either is an error).

    >>> t = with_preset(TrainConfig(optimizer_preset=OptimizerPreset.DYNINT))
    >>> t.optimizer.value, t.embedding_optimizer.value
    ('ftrl', 'gftrl')
    """
    if train.optimizer_preset is None:
        return train
    dense, emb = Optimizer.FTRL, Optimizer.GFTRL  # OptimizerPreset.DYNINT, the only preset
    if train.optimizer not in (Optimizer.ADAM, dense) or train.embedding_optimizer not in (None, emb):
        raise ConfigError(f"train.optimizer_preset={train.optimizer_preset.value} sets train.optimizer={dense.value} "
                          f"and train.embedding_optimizer={emb.value}; it cannot be combined with "
                          f"train.optimizer={train.optimizer.value}, train.embedding_optimizer="
                          f"{train.embedding_optimizer.value if train.embedding_optimizer else None}")
    return replace(train, optimizer=dense, embedding_optimizer=emb)


def domain_optimizer_of(train: TrainConfig) -> DomainOptimizer:
    """``train.domain_optimizer`` resolved: unset is lazy_adam with adam and no gradient clipping (PyTorch's
    ``clip_grad_norm_`` cannot take the norm of a sparse gradient), else dense (as before it existed).

    >>> domain_optimizer_of(TrainConfig()).value, domain_optimizer_of(TrainConfig(optimizer=Optimizer.SGD)).value
    ('lazy_adam', 'dense')
    """
    kind = train.domain_optimizer
    if kind is None:
        lazy = with_preset(train).optimizer is Optimizer.ADAM and not train.clip_grad_norm > 0
        return DomainOptimizer.LAZY_ADAM if lazy else DomainOptimizer.DENSE
    if kind is DomainOptimizer.LAZY_ADAM and train.clip_grad_norm > 0:
        raise ConfigError("train.domain_optimizer=lazy_adam cannot be combined with train.clip_grad_norm (the "
                          "per-domain gradients are sparse): set train.domain_optimizer=dense or clip_grad_norm=0")
    return kind


def with_model_defaults(train: TrainConfig, defaults: TrainDefaults) -> TrainConfig:
    """``train`` with its optimiser preset spelled out (:func:`with_preset`), its domain optimiser resolved
    (:func:`domain_optimizer_of`) and the settings it leaves unset (None) taken from a model's ``defaults``
    (no default embedding L2 with sparse_adam, ftrl or gftrl embeddings: the first cannot apply one, the
    others have their own)."""
    train = replace(with_preset(train), domain_optimizer=domain_optimizer_of(train))
    l2 = train.embedding_l2
    if l2 is None:
        emb_kind = train.embedding_optimizer or train.optimizer
        l2 = 0.0 if emb_kind in _NO_EMBEDDING_L2 else defaults.embedding_l2
    return replace(train, lr=defaults.lr if train.lr is None else train.lr, embedding_l2=l2)


def resolve(config: RunConfig, model_name: str) -> RunConfig:
    """``config`` as a run of ``model_name`` uses it, to be recorded in the run's config.json: ``train.lr``
    and ``train.embedding_l2`` from the model's registry entry where they were not set. (Settings that
    depend on the data, such as the epochs cap, are resolved by the trainer and reported in metrics.json.)

    >>> t = resolve(RunConfig(), "lr").train, resolve(RunConfig(), "deepfm").train
    >>> [(x.lr, x.embedding_l2) for x in t]
    [(0.01, 0.0), (0.001, 0.001)]
    """
    from adactr.models.registry import resolve_model_config, train_defaults

    return replace(config, model=resolve_model_config(model_name, config.model),
                   train=with_model_defaults(config.train, train_defaults(model_name)))
