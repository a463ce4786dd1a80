"""Training hyper-parameters and the full run config (model + training)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import TYPE_CHECKING

from adactr.models.config import ModelConfig

if TYPE_CHECKING:
    from adactr.models.registry import TrainDefaults


class Optimizer(str, Enum):
    ADAM = "adam"
    ADAGRAD = "adagrad"
    SGD = "sgd"
    SPARSE_ADAM = "sparse_adam"  # embeddings only: touches just the looked-up rows (huge vocabularies)


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


def with_model_defaults(train: TrainConfig, defaults: TrainDefaults) -> TrainConfig:
    """``train`` with the settings it leaves unset (None) taken from a model's ``defaults`` (no default
    embedding L2 with sparse_adam embeddings, which cannot apply one)."""
    l2 = train.embedding_l2
    if l2 is None:
        l2 = 0.0 if train.embedding_optimizer is Optimizer.SPARSE_ADAM else defaults.embedding_l2
    return replace(train, lr=defaults.lr if train.lr is None else train.lr, embedding_l2=l2)


def resolve(config: RunConfig, model_name: str) -> RunConfig:
    """``config`` as a run of ``model_name`` uses it, to be recorded in the run's config.json: ``train.lr``
    and ``train.embedding_l2`` from the model's registry entry where they were not set. (Settings that
    depend on the data, such as the epochs cap, are resolved by the trainer and reported in metrics.json.)

    >>> t = resolve(RunConfig(), "lr").train, resolve(RunConfig(), "deepfm").train
    >>> [(x.lr, x.embedding_l2) for x in t]
    [(0.01, 0.0), (0.001, 0.001)]
    """
    from adactr.models.registry import train_defaults

    return replace(config, train=with_model_defaults(config.train, train_defaults(model_name)))
