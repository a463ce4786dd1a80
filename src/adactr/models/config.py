"""Model hyper-parameters: one frozen dataclass, defaults in code with the reason beside each."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from adactr.nn.mlp import Activation


class CrossStructure(str, Enum):
    STACKED = "stacked"  # DCNv2 Fig. 1(b): cross network, then the deep tower on its output
    PARALLEL = "parallel"  # DCNv2 Fig. 1(a): cross and deep side by side, outputs concatenated


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 10  # BARS Frappe/Criteo setting used by the baselines we compare to
    embedding_init_std: float = 1e-4  # FuxiCTR / DeepCTR initialisation; larger values train worse
    hidden: tuple[int, ...] = (400, 400, 400)  # BARS DNN tower
    activation: Activation = Activation.RELU
    dropout: float = 0.0
    batch_norm: bool = False
    # DCN / DCNv2
    cross_layers: int = 3
    cross_structure: CrossStructure = CrossStructure.PARALLEL
    cross_rank: int = 0  # 0 = full-rank W (DCNv2 eq. 1); r > 0 = low-rank mixture of experts (eq. 3)
    cross_experts: int = 4  # experts in the low-rank mixture (DCNv2 paper default)
