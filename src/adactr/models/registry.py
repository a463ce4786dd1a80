"""The hand-written model registry: name -> class and the paper it implements (no getattr lookups)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from adactr.data.schema import FieldLayout
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import ModelConfig
from adactr.models.dcnv2 import DCNv2
from adactr.models.deepfm import DeepFM
from adactr.models.dnn import DNN
from adactr.models.fm import FM
from adactr.models.lr import LR
from adactr.models.wdl import WideDeep
from adactr.nn.mlp import LayerFactory, Linear


class ModelClass(Protocol):
    """The constructor every registered model has."""

    def __call__(self, *, layout: FieldLayout, config: ModelConfig, layer: LayerFactory = ...) -> CTRModel:
        ...


@dataclass(frozen=True)
class ModelEntry:
    name: str
    cls: ModelClass
    paper: str


MODELS: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("lr", LR, "logistic regression (baseline of Chen et al., DynInt, DLP-KDD 2022)"),
    ModelEntry("fm", FM, "Rendle, Factorization Machines, ICDM 2010"),
    ModelEntry("dnn", DNN, "plain MLP over field embeddings (baseline of DynInt / AdaSparse)"),
    ModelEntry("wdl", WideDeep, "Cheng et al., Wide & Deep Learning for Recommender Systems, DLRS 2016"),
    ModelEntry("deepfm", DeepFM, "Guo et al., DeepFM, IJCAI 2017"),
    ModelEntry("dcnv2", DCNv2, "Wang et al., DCN V2, WWW 2021"),
)}


def build_model(name: str, *, layout: FieldLayout, config: ModelConfig,
                layer: LayerFactory = Linear) -> CTRModel:
    """The registered model ``name`` for ``layout``; ``layer`` builds every hidden layer of its tower."""
    entry = MODELS.get(name)
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; valid models are: {', '.join(MODELS)}")
    return entry.cls(layout=layout, config=config, layer=layer)
