"""The hand-written model registry: name -> class and the paper it implements (no getattr lookups)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum
from typing import Protocol

from torch import nn

from adactr.data.schema import FieldLayout
from adactr.errors import ConfigError
from adactr.models.autoint import AutoInt
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.dcn import DCN
from adactr.models.dcnv2 import DCNv2
from adactr.models.deepcrossing import DeepCrossing
from adactr.models.deepfm import DeepFM
from adactr.models.difm import DIFM
from adactr.models.dnn import DNN
from adactr.models.fibinet import FiBiNET
from adactr.models.fm import FM
from adactr.models.hmoe import HMoE
from adactr.models.lr import LR
from adactr.models.mmoe import MMoE
from adactr.models.ple import PLE
from adactr.models.pnn import IPNN, OPNN, PNNStar
from adactr.models.shared_bottom import SharedBottom
from adactr.models.star import STAR
from adactr.models.wdl import WideDeep
from adactr.models.xdeepfm import XDeepFM
from adactr.models.xdeepint import DynIntDA, DynIntDGP, DynIntDWP, XDeepInt
from adactr.nn.adasparse import AdaSparseCondition, AdaSparseLayerFactory
from adactr.nn.apg import APGCondition, APGLinear, apg_layer_factory
from adactr.nn.domain import StarLinear, domain_layer_factory
from adactr.nn.mlp import LayerFactory, Linear
from adactr.nn.multidomain import DomainCondition


class ModelClass(Protocol):
    """The constructor every registered model has."""

    def __call__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = ...) -> CTRModel:
        ...


@dataclass(frozen=True)
class TrainDefaults:
    """A model's own values for the training settings a run leaves unset (``train.lr``,
    ``train.embedding_l2``); :func:`adactr.train.config.resolve` applies them."""

    # Adam's learning rate: BARS' setting for every deep model on Frappe / Criteo
    lr: float = 1e-3
    # L2 on the embedding tables (Adam weight decay). Without it a deep model overfits a small data set
    # within ~50 steps; with too much it stalls on a large one. Test AUC at 0 / 1e-3 / 0.01, DNN on
    # 100k-row subsets with 2 % positives, mean of 3 seeds (docs/small-data.md): Frappe_x1 0.8672 / 0.8753
    # / 0.8780, MovieLens-1M 0.6393 / 0.6572 / 0.6601 (L2-tuned logistic regression: 0.8724, 0.6595);
    # DeepFM on all of Frappe_x1, seed 1, no batch norm or dropout: 0.9655 / 0.9748 / 0.9433. (BARS tunes
    # it beside batch norm and dropout: 0.1 for Frappe_x1, 0.01 for MovieLens-1M.)
    embedding_l2: float = 1e-3


DEEP = TrainDefaults()
# LR and FM: with no tower, every weight is one embedding row that moves at most ~lr per Adam step, from 0
# (LR) or 1e-4 (FM). At 1e-3 they stop early on Frappe_x1 at 0.925 / 0.922 test AUC, at 1e-2 they reach
# 0.9350 / 0.9659 (README). Their embedding L2 acts on the first-order weights too, where 0.01 (or even
# 1e-3 for FM) flattens them: LR needs none (early stopping on validation log loss does its work), FM
# takes the 1e-4 of its README row.
LR_DEFAULTS = TrainDefaults(lr=1e-2, embedding_l2=0.0)
FM_DEFAULTS = TrainDefaults(lr=1e-2, embedding_l2=1e-4)
# xDeepInt / DynInt: like FM, every interaction is a product of embeddings, which move at most ~lr per Adam
# step. Frappe_x1, xDeepInt, embedding 10 at std 1e-4, seed 1, test AUC: lr 1e-3 0.9244 (stopped at epoch
# 4 while still near LR), 1e-2 0.9810; at 1e-2 with embedding L2 1e-4: 0.9785 (`adactr train --data
# prepared/frappe --model xdeepint --set train.seed=1 --set train.lr=...`; docs/dynint.md). The paper trains
# its PIN layers with FTRL at lr 1e-2..1e-1 (§4.1.4).
PIN_DEFAULTS = TrainDefaults(lr=1e-2, embedding_l2=1e-3)


class EmbeddingInit(str, Enum):
    """A model's default for ``model.embedding_init_std`` (the standard deviation of its embedding rows)."""

    # FuxiCTR / DeepCTR: every model whose interactions pass through a tower or an FM-style sum
    SMALL = "1e-4"
    # 1/sqrt(D): TF's embedding_column default, which the official xDeepInt code uses. A PIN model is a
    # polynomial in the embeddings, so at 1e-4 every interaction starts at ~1e-8: Frappe_x1 training then
    # sits at logistic-regression loss for ~250 steps before the interactions move, and DynInt-DA's gates
    # saturate at 0 or 2 in that time (seed 1, test AUC: DA 0.9410 at 1e-4, 0.9810 at 0.3;
    # xDeepInt 0.9810 / 0.9802).
    INV_SQRT_DIM = "1/sqrt(D)"

    def std(self, dim: int) -> float:
        return 1e-4 if self is EmbeddingInit.SMALL else 1.0 / math.sqrt(dim)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: ModelClass
    paper: str
    train: TrainDefaults = DEEP  # its defaults for train.lr and train.embedding_l2 (a run's own values win)
    embedding_init: EmbeddingInit = EmbeddingInit.SMALL  # its default for model.embedding_init_std


def _pin_model(name: str, cls: ModelClass, paper: str) -> ModelEntry:
    """A model built on the PIN block: its learning rate and embedding initialisation (see above)."""
    return ModelEntry(name, cls, paper, train=PIN_DEFAULTS, embedding_init=EmbeddingInit.INV_SQRT_DIM)


MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("lr", LR, "logistic regression (baseline of Yan & Li, DynInt, DLP-KDD 2022)",
               train=LR_DEFAULTS),
    ModelEntry("fm", FM, "Rendle, Factorization Machines, ICDM 2010", train=FM_DEFAULTS),
    ModelEntry("dnn", DNN, "plain MLP over field embeddings (baseline of DynInt / AdaSparse)"),
    ModelEntry("wdl", WideDeep, "Cheng et al., Wide & Deep Learning for Recommender Systems, DLRS 2016"),
    ModelEntry("deepfm", DeepFM, "Guo et al., DeepFM, IJCAI 2017"),
    ModelEntry("dcnv2", DCNv2, "Wang et al., DCN V2, WWW 2021"),
    ModelEntry("ipnn", IPNN, "Qu et al., Product-based Neural Networks for User Response Prediction (IPNN), "
                             "ICDM 2016"),
    ModelEntry("opnn", OPNN, "Qu et al., Product-based Neural Networks for User Response Prediction (OPNN), "
                             "ICDM 2016"),
    # PNN* with the ICDM'16 sum-pooled outer product f_Σ f_Σ^T, not the TOIS kernel product (which the
    # DynInt authors' LightCTR freezes at the identity, making it the inner product again): models/pnn.py
    ModelEntry("pnn", PNNStar, "Qu et al., Product-based Neural Networks for User Response Prediction (PNN*: "
                               "inner and sum-pooled outer products), ICDM 2016"),
    ModelEntry("fibinet", FiBiNET, "Huang et al., FiBiNET: Combining Feature Importance and Bilinear feature "
                                   "Interaction for Click-Through Rate Prediction, RecSys 2019"),
    ModelEntry("difm", DIFM, "Lu et al., A Dual Input-aware Factorization Machine for CTR Prediction, "
                             "IJCAI 2020"),
    ModelEntry("dcn", DCN, "Wang et al., Deep & Cross Network for Ad Click Predictions, ADKDD 2017"),
    _pin_model("xdeepint", XDeepInt, "Yan & Li, xDeepInt: a Hybrid Architecture for Modeling the Vector-wise "
                                      "and Bit-wise Feature Interactions, 2020 (arXiv 2301.01089)"),
    _pin_model("dynint_da", DynIntDA, "Yan & Li, DynInt: Dynamic Interaction Modeling for Large-scale "
                                      "Click-Through Rate Prediction, DLP-KDD 2022 (dynamic activation, eq. 4)"),
    _pin_model("dynint_dgp", DynIntDGP, "Yan & Li, DynInt, DLP-KDD 2022 (dynamic generated parameters, "
                                        "eqs. 5, 7, 8)"),
    _pin_model("dynint_dwp", DynIntDWP, "Yan & Li, DynInt, DLP-KDD 2022 (dynamic weighted parameters, "
                                        "eqs. 6, 9, 10)"),
    ModelEntry("autoint", AutoInt, "Song et al., AutoInt: Automatic Feature Interaction Learning via "
                                   "Self-Attentive Neural Networks, CIKM 2019 (AutoInt+: autoint_plus)"),
    ModelEntry("deepcrossing", DeepCrossing, "Shan et al., Deep Crossing: Web-Scale Modeling without Manually "
                                             "Crafted Combinatorial Features, KDD 2016"),
    ModelEntry("xdeepfm", XDeepFM, "Lian et al., xDeepFM: Combining Explicit and Implicit Feature Interactions "
                                   "for Recommender Systems, KDD 2018 (CIN direct or cin_split_half)"),
    # multi-domain (need data prepared with --domain): every per-domain part computed for a row's own domain
    ModelEntry("shared_bottom", SharedBottom, "Caruana, Multitask Learning, Machine Learning 1997 (Shared-Bottom: "
                                              "a shared bottom, one tower per domain)"),
    ModelEntry("mmoe", MMoE, "Ma et al., Modeling Task Relationships in Multi-task Learning with Multi-gate "
                             "Mixture-of-Experts, KDD 2018 (a gate and a tower per domain)"),
    ModelEntry("hmoe", HMoE, "Li et al., Improving Multi-Scenario Learning to Rank in E-commerce by Exploiting Task "
                             "Relationships in the Label Space, CIKM 2020 (HMoE: MMoE plus each domain's mixture "
                             "of every domain's prediction)"),
    ModelEntry("ple", PLE, "Tang et al., Progressive Layered Extraction (PLE): A Novel Multi-Task Learning (MTL) "
                           "Model for Personalized Recommendations, RecSys 2020 (per-domain specific experts)"),
    ModelEntry("star", STAR, "Sheng et al., One Model to Serve All: Star Topology Adaptive Recommender for "
                             "Multi-Domain CTR Prediction, CIKM 2021"),
)}


def train_defaults(name: str) -> TrainDefaults:
    """The training defaults of the registered model ``name``."""
    entry = MODELS.get(name)
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; valid models are: {', '.join(MODELS)}")
    return entry.train


def train_defaults_for(model: nn.Module) -> TrainDefaults:
    """The training defaults of a built model: its registry entry's (by class), else the deep models'.
    For code that hands the trainer a model without a name (a run resolves by name, see
    :func:`adactr.train.config.resolve`)."""
    for entry in MODELS.values():
        if type(model) is entry.cls:
            return entry.train
    return DEEP


def resolve_model_config(name: str, config: ModelConfig) -> ModelConfig:
    """``config`` with the settings it leaves unset (None) taken from the registered model ``name``
    (``model.embedding_init_std``)."""
    entry = MODELS.get(name)
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; valid models are: {', '.join(MODELS)}")
    if config.embedding_init_std is None:
        config = replace(config, embedding_init_std=entry.embedding_init.std(config.embedding_dim))
    return config


def _with_adasparse(name: str, entry: ModelEntry, *, layout: FieldLayout, config: ModelConfig) -> CTRModel:
    """AdaSparse (Yang et al., CIKM 2022) by composition, as APG: the domain embedding goes into the model's
    condition seam and the pruned-layer factory builds the tower; no AdaSparse-specific model class."""
    which = "model.tower_layer=adasparse"
    cfg = config.adasparse
    cfg.check()
    condition = AdaSparseCondition(n_domains=layout.n_domains, dim=cfg.domain_dim, gradient=cfg.domain_gradient)
    factory = AdaSparseLayerFactory(cfg, cond_dim=cfg.domain_dim)
    model = entry.cls(layout=layout, config=config, layer=factory)
    if model.condition is not None:
        raise ConfigError(f"model {name!r} has its own condition (the domain), so {which} cannot be applied")
    if not factory.built:
        raise ConfigError(f"model {name!r} has no deep tower for {which}")
    factory.finish()
    model.condition = condition
    return model


def _with_star(name: str, entry: ModelEntry, *, layout: FieldLayout, config: ModelConfig) -> CTRModel:
    """STAR's star-topology layers (Sheng et al., CIKM 2021, §4.2) in any model's tower, by composition: the
    domain grouping goes into the condition seam and every hidden layer is a :class:`StarLinear`."""
    which = "model.tower_layer=star"
    condition = DomainCondition(n_domains=layout.n_domains, model=name)
    model = entry.cls(layout=layout, config=config, layer=domain_layer_factory(StarLinear, layout.n_domains))
    if model.condition is not None:
        raise ConfigError(f"model {name!r} has its own condition (the domain), so {which} cannot be applied")
    if not any(isinstance(m, StarLinear) for m in model.modules()):
        raise ConfigError(f"model {name!r} has no deep tower for {which}")
    model.condition = condition
    return model


def build_model(name: str, *, layout: FieldLayout, config: ModelConfig,
                layer: LayerFactory = Linear) -> CTRModel:
    """The registered model ``name`` for ``layout``; ``layer`` builds every hidden layer of its tower."""
    config = resolve_model_config(name, config)
    entry = MODELS[name]
    if config.tower_layer is TowerLayer.LINEAR:
        return entry.cls(layout=layout, config=config, layer=layer)
    # APG (Yan et al., NeurIPS 2022) by composition: the condition builder goes into the model's condition
    # seam and the APG layer factory builds the tower; no APG-specific model class.
    which = f"model.tower_layer={config.tower_layer.value}"
    if layer is not Linear:
        raise ConfigError(f"{which} and a custom layer factory were both given; use one")
    if config.tower_layer is TowerLayer.ADASPARSE:
        return _with_adasparse(name, entry, layout=layout, config=config)
    if config.tower_layer is TowerLayer.STAR:
        return _with_star(name, entry, layout=layout, config=config)
    condition = APGCondition(layout=layout, config=config.apg, embedding_dim=config.embedding_dim)
    factory = apg_layer_factory(config.apg, condition.dim, n_conditions=condition.n_conditions)
    model = entry.cls(layout=layout, config=config, layer=factory)
    if model.condition is not None:  # a multi-domain model: its condition is the domain
        raise ConfigError(f"model {name!r} has its own condition (the domain), so {which} cannot be applied")
    if not any(isinstance(m, APGLinear) for m in model.modules()):
        raise ConfigError(f"model {name!r} has no deep tower for {which}")
    factory.check_built()
    model.condition = condition
    return model
