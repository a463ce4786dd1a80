"""Training hyper-parameters and the full run config (model + training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from adactr.models.config import ModelConfig


class Optimizer(str, Enum):
    ADAM = "adam"
    ADAGRAD = "adagrad"
    SGD = "sgd"
    SPARSE_ADAM = "sparse_adam"  # embeddings only: touches just the looked-up rows (huge vocabularies)


class Device(str, Enum):
    AUTO = "auto"  # cuda when available, else cpu
    CPU = "cpu"
    CUDA = "cuda"


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30  # an upper bound: early stopping usually ends runs far sooner
    batch_size: int = 4096  # BARS setting for Frappe / Criteo
    eval_batch_size: int = 65536
    lr: float = 1e-3
    optimizer: Optimizer = Optimizer.ADAM
    # Embeddings get their own optimiser group: their own L2 (the FuxiCTR "embedding_regularizer",
    # lambda/2 ||E||^2, i.e. L2 added to the gradient) and optionally a sparse optimiser.
    embedding_optimizer: Optimizer | None = None  # None = same as `optimizer`
    embedding_l2: float = 0.0
    dense_l2: float = 0.0
    patience: int = 2  # epochs without a better validation AUC before stopping (BARS: 2)
    lr_decay: float = 0.1  # reduce-on-plateau factor applied at each epoch without improvement
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
