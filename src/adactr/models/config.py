"""Model hyper-parameters: one frozen dataclass, defaults in code with the reason beside each."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from adactr.nn.adasparse import AdaSparseConfig
from adactr.nn.apg import APGConfig
from adactr.nn.interaction import BilinearType
from adactr.nn.mlp import Activation
from adactr.nn.multidomain import MultiDomainConfig
from adactr.nn.pin import PINConfig


class CrossStructure(str, Enum):
    STACKED = "stacked"  # DCNv2 Fig. 1(b): cross network, then the deep tower on its output
    PARALLEL = "parallel"  # DCNv2 Fig. 1(a): cross and deep side by side, outputs concatenated


class TowerLayer(str, Enum):
    """What builds the hidden layers of a model's deep tower (the layer factory, STYLE 1)."""

    LINEAR = "linear"  # the static nn.Linear
    APG = "apg"  # adactr.nn.apg.APGLinear (Yan et al., NeurIPS 2022), configured by ``apg``
    # adactr.nn.adasparse.AdaSparseLinear (Yang et al., CIKM 2022): a domain-aware pruner before every
    # hidden layer, configured by ``adasparse``; needs data prepared with --domain
    ADASPARSE = "adasparse"
    # adactr.nn.domain.StarLinear (Sheng et al., CIKM 2021, §4.2): every hidden layer of the tower in star
    # topology, W ⊙ W_p, b + b_p, for each row's own domain; needs data prepared with --domain. The tower
    # part of STAR alone, for any backbone ("DCNv2 + STAR" of AdaSparse's Table 1); the whole STAR, with
    # partitioned normalisation and the auxiliary network, is the registered model ``star``
    STAR = "star"


@dataclass(frozen=True)
class ModelConfig:
    embedding_dim: int = 10  # BARS Frappe/Criteo setting used by the baselines we compare to
    # None = the model's own (adactr.models.registry.EmbeddingInit): 1e-4, the FuxiCTR / DeepCTR value, for
    # every model but the PIN ones, which use 1/sqrt(D) (see registry.py). A run records the value it used.
    embedding_init_std: float | None = None
    hidden: tuple[int, ...] = (400, 400, 400)  # BARS DNN tower
    activation: Activation = Activation.RELU
    dropout: float = 0.0
    batch_norm: bool = False
    # DCN / DCNv2
    cross_layers: int = 3
    cross_structure: CrossStructure = CrossStructure.PARALLEL
    cross_rank: int = 0  # 0 = full-rank W (DCNv2 eq. 1); r > 0 = low-rank mixture of experts (eq. 3)
    cross_experts: int = 4  # experts in the low-rank mixture (DCNv2 paper default)
    # FiBiNET (Huang et al., RecSys 2019)
    senet_reduction: int = 3  # SENET reduction ratio r (FiBiNET paper setting; DeepCTR/FuxiCTR default)
    bilinear_type: BilinearType = BilinearType.FIELD_INTERACTION  # W_ij per pair (DeepCTR/FuxiCTR default)
    # AutoInt (Song et al., CIKM 2019) and DIFM's vector-wise part (Lu et al., IJCAI 2020)
    attention_heads: int = 2  # H: AutoInt paper / authors' Criteo script (--heads 2)
    attention_dim: int = 32  # d' per head: AutoInt paper (authors' script: 64 = 2 heads x 32)
    attention_layers: int = 3  # interacting layers: AutoInt paper (--blocks 3); DIFM always uses one
    autoint_plus: bool = False  # AutoInt+: a parallel MLP tower, logits summed (as in the authors' code)
    # DeepCrossing (Shan et al., KDD 2016): the hidden width h of each residual unit d -> h -> d. No BARS
    # Frappe/MovieLens run exists; three units of 400 match the depth and width of the BARS DNN tower
    # (``hidden``) the other baselines use (FuxiCTR's default is [64]*3, BARS Criteo_x4 [1000, 1000]).
    residual_units: tuple[int, ...] = (400, 400, 400)
    # xDeepFM (Lian et al., KDD 2018): CIN feature maps per layer H_k. BARS xDeepFM_frappe_x1 and
    # xDeepFM_avazu_x1 use one layer of 64 (the paper tunes 100-200 maps per layer per dataset).
    cin_layers: tuple[int, ...] = (64,)
    # False: every map feeds the next layer and the output (the paper's eqs. 6-7, FuxiCTR/BARS); True:
    # half to the next layer, half to the output (the authors' released code, DeepCTR). Equal for one layer.
    cin_split_half: bool = False
    # Tower layers: static, or instance-adaptive (APG: every hidden layer of the tower, as in the paper's
    # Table 2, where APG replaces the deep layers of each backbone)
    tower_layer: TowerLayer = TowerLayer.LINEAR
    apg: APGConfig = field(default_factory=APGConfig)
    # AdaSparse's pruners (tower_layer=adasparse): factor form, β, ε, the α / λ̂ schedules, the sparsity band
    # (nn/adasparse.py gives each default its reason)
    adasparse: AdaSparseConfig = field(default_factory=AdaSparseConfig)
    # xDeepInt / DynInt (Yan & Li, DLP-KDD 2022): the PIN block's depth, sub-spaces and dynamic form
    pin: PINConfig = field(default_factory=PINConfig)
    # Beyond the APG paper: build the DCN / DCNv2 cross layers' weights with the tower's layer factory too
    # (with tower_layer=apg: W_l of eq. 1 in DCNv2 / w_l of eq. 3 in DCN generated per instance).
    # DCNv2 needs the full-rank cross (cross_rank=0) for this.
    adaptive_cross: bool = False
    # Shared-Bottom, MMoE, PLE and STAR (issue 15): experts, per-domain towers, PLE levels, STAR's auxiliary
    # network (nn/multidomain.py gives each default its reason)
    multidomain: MultiDomainConfig = field(default_factory=MultiDomainConfig)
