"""Tests for the registered CTR models: shapes, gradients, determinism, the layer-factory and condition
seams, the DCN-V2 structures, the parameter split and the registry's error message.

Every model runs on a tiny hand-built layout: 3 categorical fields, 2 numerical, 1 mean-pooled sequence.
"""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from adactr.data.schema import FieldLayout, Pooling
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models.base import CTRModel
from adactr.models.config import CrossStructure, ModelConfig
from adactr.models.dcnv2 import DCNv2
from adactr.models.registry import MODELS, build_model
from adactr.nn.mlp import Linear

# Five domain ids (the two reserved ones and three domains): the multi-domain models need them, the
# others ignore Batch.domain.
LAYOUT = FieldLayout(names=("a", "b", "c", "x", "y", "s"), cat_sizes=(5, 7, 4), n_num=2, seq_sizes=(6,),
                     seq_pooling=(Pooling.MEAN,), n_domains=5)
# Larger init than the default 1e-4 so that a gradient through the embeddings is clearly non-zero.
CONFIG = ModelConfig(embedding_dim=4, embedding_init_std=0.1, hidden=(8, 4), cross_layers=2)
D_IN = LAYOUT.n_fields * CONFIG.embedding_dim  # 6 fields x 4 = 24
TOWER_MODELS = ("dnn", "wdl", "deepfm", "dcnv2")
FLAT_MODELS = ("lr", "fm")


def _batch(B: int, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, n, (B,), generator=g) for n in LAYOUT.cat_sizes], dim=1)
    seq = torch.randint(0, 6, (B, 3), generator=g)  # 0 = padding
    return Batch(cat=cat, num=torch.randn(B, 2, generator=g), seq=(seq,),
                 label=torch.randint(0, 2, (B,), generator=g).float(),
                 domain=torch.randint(0, LAYOUT.n_domains, (B,), generator=g))


def test_registry_names() -> None:
    assert list(MODELS)[:6] == ["lr", "fm", "dnn", "wdl", "deepfm", "dcnv2"]
    assert {"ipnn", "opnn", "fibinet", "difm", "dcn", "autoint"} <= set(MODELS)
    assert all(e.name == k and e.paper for k, e in MODELS.items())


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("B", [1, 8])
def test_forward_shape_and_finite(name: str, B: int) -> None:
    model = build_model(name, layout=LAYOUT, config=CONFIG)
    out = model(_batch(B))
    assert out.shape == (B,) and torch.isfinite(out).all()
    p = model.predict_proba(_batch(B))
    assert ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("name", list(MODELS))
def test_gradients_reach_embedding_and_dense(name: str) -> None:
    torch.manual_seed(0)  # an (8, 4) tower on 8 rows can have every ReLU dead for an unlucky draw
    model = build_model(name, layout=LAYOUT, config=CONFIG)
    batch = _batch(8)
    nn.functional.binary_cross_entropy_with_logits(model(batch), batch.label).backward()
    emb = list(model.embedding_parameters())
    dense = list(model.dense_parameters())
    assert emb and dense
    assert {id(p) for p in emb}.isdisjoint(id(p) for p in dense)
    assert len(emb) + len(dense) == len(list(model.parameters()))
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in emb)  # every table is used
    if name in TOWER_MODELS:
        assert model.tower.layers[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list(MODELS))
def test_embedding_tables_can_take_a_sparse_optimiser(name: str) -> None:
    # The numerical fields' vectors have a dense gradient, so they must not be among the tables.
    model = build_model(name, layout=LAYOUT, config=CONFIG)
    # the D-dim table, and the first-order table of the models with a linear part
    n_tables = 2 if name in ("fm", "wdl", "deepfm", "fibinet", "difm", "xdeepfm") else 1
    tables = list(model.embedding_parameters())
    assert len(tables) == n_tables and all(p.shape[0] == sum(LAYOUT.cat_sizes) + 6 for p in tables)
    for m in model.modules():
        if isinstance(m, nn.Embedding):
            m.sparse = True
    opt = torch.optim.SparseAdam(tables)
    model(_batch(4)).sum().backward()
    before = [p.detach().clone() for p in tables]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, tables, strict=True))


@pytest.mark.parametrize("name", list(MODELS))
def test_deterministic_with_seed(name: str) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        outs.append(build_model(name, layout=LAYOUT, config=CONFIG)(_batch(4)))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("name", TOWER_MODELS)
def test_layer_factory_builds_every_hidden_layer(name: str, counting_layer) -> None:
    factory, calls, conds = counting_layer
    model = build_model(name, layout=LAYOUT, config=CONFIG, layer=factory)
    assert calls == [(D_IN, 8), (8, 4)]
    model(_batch(2))
    assert len(conds) == 2 and conds == [None, None]  # no condition builder -> cond is None


@pytest.mark.parametrize("name", TOWER_MODELS)
def test_condition_builder_reaches_the_tower(name: str) -> None:
    seen: list[Tensor | None] = []

    class Recording(Linear):
        def forward(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
            seen.append(cond)
            return super().forward(x)

    class FirstField(nn.Module):  # a stand-in for a group-wise condition: the first field's embedding
        def forward(self, batch: Batch, emb: Tensor) -> Tensor:
            return emb[:, 0]  # (B, D)

    model = build_model(name, layout=LAYOUT, config=CONFIG, layer=Recording)
    model.condition = FirstField()
    assert "condition" in dict(model.named_children())  # registered: saved and moved with the model
    model(_batch(3))
    assert len(seen) == 2 and all(c is not None and c.shape == (3, CONFIG.embedding_dim) for c in seen)


@pytest.mark.parametrize("name", FLAT_MODELS)
def test_models_without_tower_reject_a_layer_factory(name: str) -> None:
    with pytest.raises(ConfigError, match=f"'{name}' has no MLP tower"):
        build_model(name, layout=LAYOUT, config=CONFIG, layer=lambda i, o: Linear(i, o))


@pytest.mark.parametrize("rank", [0, 3])
def test_dcnv2_stacked_and_parallel(rank: int) -> None:
    batch = _batch(5)
    for structure in CrossStructure:
        cfg = ModelConfig(embedding_dim=4, hidden=(8, 4), cross_layers=2, cross_rank=rank, cross_experts=2,
                          cross_structure=structure)
        model = DCNv2(layout=LAYOUT, config=cfg)
        assert model(batch).shape == (5,)
        assert model.cross(torch.randn(5, D_IN)).shape == (5, D_IN)
        if structure is CrossStructure.STACKED:
            # cross (B, 24) -> tower 24 -> 8 -> 4 -> logit
            assert model.fc is None and model.tower.out is not None
        else:
            # concat(cross (B, 24), deep (B, 4)) -> Linear(28, 1)
            assert model.tower.out is None and model.fc.in_features == D_IN + 4


def test_unknown_model_error_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as e:
        build_model("deepfm2", layout=LAYOUT, config=CONFIG)
    assert str(e.value) == f"unknown model 'deepfm2'; valid models are: {', '.join(MODELS)}"
    assert "deepfm" in str(e.value)


def test_base_class_is_abstract() -> None:
    with pytest.raises(TypeError):
        CTRModel()  # type: ignore[abstract]
