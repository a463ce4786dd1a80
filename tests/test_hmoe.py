"""HMoE (Li et al., CIKM 2020): MMoE plus each domain's mixture of every domain's prediction in the label
space, with task-constrained back-propagation. A float64 reference written with plain torch ops (every
domain's gate and tower row by row, the mixture as ``log(p / (1 - p))``), the stop-gradient, one domain =
MMoE, hand-checked relation weights and mixture, the batched every-domain pass against MMoE's grouped one,
the configuration errors and the adaptivity report. The list-of-floats reference is in test_formulas.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from adactr.data.schema import FieldLayout
from adactr.data.tensors import Batch
from adactr.errors import ConfigError
from adactr.models import hmoe as hmoe_module
from adactr.models.config import ModelConfig
from adactr.models.hmoe import every_domain_logits, mix_probabilities
from adactr.models.registry import build_model
from adactr.nn.adaptivity import measure_adaptivity
from adactr.nn.domain import DomainLinear
from adactr.nn.multidomain import MultiDomainConfig

# ids 0 <missing>, 1 <unseen>, then domains 2..5
LAYOUT = FieldLayout(names=("a", "b", "x"), cat_sizes=(5, 4), n_num=1, seq_sizes=(), seq_pooling=(), n_domains=6)
MD = MultiDomainConfig(experts=2, expert_hidden=(5, 4), tower_hidden=(3,), relation_hidden=(4,))
CONFIG = ModelConfig(embedding_dim=3, embedding_init_std=0.3, multidomain=MD)


def _batch(domain: list[int], seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    B = len(domain)
    cat = torch.stack([torch.randint(0, n, (B,), generator=g) for n in LAYOUT.cat_sizes], dim=1)
    return Batch(cat=cat, num=torch.randn(B, 1, generator=g, dtype=torch.float64), seq=(),
                 label=torch.randint(0, 2, (B,), generator=g).double(),
                 domain=torch.tensor(domain, dtype=torch.int32))


def _model(layout: FieldLayout = LAYOUT, config: ModelConfig = CONFIG, seed: int = 1) -> nn.Module:
    """HMoE in float64, every parameter redrawn (so that the domains differ), evaluation mode."""
    torch.manual_seed(seed)
    model = build_model("hmoe", layout=layout, config=config).double().eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.7)
    return model


# ---- the reference: plain torch ops, one row and one domain at a time ---------------------------------

def _dense(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return W @ x + b


def _tower(towers: nn.Module, h: torch.Tensor, j: int) -> torch.Tensor:
    """Domain j's tower (its DomainLinear rows j), relu between layers."""
    for lin in towers.layers:
        h = torch.relu(_dense(h, lin.weight[j], lin.bias[j]))
    return _dense(h, towers.out.weight[j], towers.out.bias[j])


def reference(model: nn.Module, batch: Batch) -> torch.Tensor:
    emb = model.embedding.table.weight  # (rows, D): categorical rows, the numerical field's vector separately
    out = []
    for b in range(batch.cat.shape[0]):
        i = int(batch.domain[b])
        e = [emb[int(batch.cat[b, 0])], emb[5 + int(batch.cat[b, 1])], batch.num[b, 0] * model.embedding.num_weight[0]]
        x = torch.cat(e)  # (F D,)
        experts = []
        for f in model.experts:
            h = x
            for lin in f.layers:
                h = torch.relu(_dense(h, lin.weight, lin.bias))
            experts.append(h)
        mixed = []  # (z_j, s_j) for the domains in row b's mixture: the train domains and its own
        r = _tower(model.relation.mlp, x, i)  # domain i's relation scores over all ids, (R,)
        for j in range(LAYOUT.n_domains):
            if j < 2 and j != i:
                continue
            g = torch.softmax(_dense(x, model.gate.linear.weight[j], model.gate.linear.bias[j]), 0)
            z_j = _tower(model.towers, sum(g[k] * experts[k] for k in range(len(experts))), j)[0]
            mixed.append((z_j, r[j]))
        w = torch.softmax(torch.stack([s for _, s in mixed]), 0)
        p = sum(w[n] * torch.sigmoid(z) for n, (z, _) in enumerate(mixed))
        out.append(torch.log(p / (1 - p)))
    return torch.stack(out)


def test_forward_equals_the_plain_reference() -> None:
    model = _model()
    batch = _batch([2, 5, 0, 3, 1, 2, 4, 5, 3])
    with torch.no_grad():
        got, want = model(batch), reference(model, batch)
    assert want.std() > 0.1  # the rows differ
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_the_batched_every_domain_pass_is_mmoe_for_each_domain_and_chunking_changes_nothing(monkeypatch) -> None:
    model = _model()
    batch = _batch([2, 5, 0, 3, 1, 2, 4])
    with torch.no_grad():
        _, x, experts = model.shared_part(batch)
        z_all = every_domain_logits(model.gate, model.towers, x, torch.stack(experts, 1))  # (B, R)
        for j in range(LAYOUT.n_domains):  # every row relabelled to domain j, through MMoE's grouped forward
            relabelled = batch._replace(domain=torch.full_like(batch.domain, j))
            mmoe = super(type(model), model).forward(relabelled)
            torch.testing.assert_close(z_all[:, j], mmoe, rtol=1e-12, atol=1e-12)
        monkeypatch.setattr(hmoe_module, "CHUNK_ACTIVATIONS", 1)  # one row per chunk
        torch.testing.assert_close(every_domain_logits(model.gate, model.towers, x, torch.stack(experts, 1)), z_all,
                                   rtol=1e-12, atol=1e-12)


def _per_domain_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    """name -> the gradient of every DomainLinear parameter (row d = domain d)."""
    return {f"{n}.{k}": getattr(m, k).grad for n, m in model.named_modules() if isinstance(m, DomainLinear)
            for k in ("weight", "bias")}


def test_a_rows_loss_trains_only_its_own_domains_tower_gate_and_relation_net() -> None:
    # task-constrained back-propagation: the other domains' predictions are constants for a row
    model = _model()
    batch = _batch([3, 2, 5, 4, 3, 0])
    out = model(batch)
    out[0].backward()  # row 0, domain 3, only
    grads = _per_domain_grads(model)
    assert {n.split(".")[0] for n in grads} == {"gate", "towers", "relation"}
    for name, g in grads.items():
        assert g[3].abs().sum() > 0, name  # its own domain's tower, gate and relation net learn
        others = torch.cat([g[:3].flatten(), g[4:].flatten()])
        assert others.abs().sum() == 0, name  # domains 2, 4, 5 (in its mixture) and the reserved ids: nothing
    # and yet the other domains' predictions are in row 0's output: move domain 5's tower, the output moves
    with torch.no_grad():
        before = model(batch)[0].item()
        model.towers.out.bias[5] += 1.0
        assert abs(model(batch)[0].item() - before) > 1e-6


def test_one_domain_is_mmoe_with_that_domains_tower() -> None:
    layout = replace(LAYOUT, n_domains=3)  # one train domain: id 2
    batch = _batch([2] * 7)
    torch.manual_seed(4)
    mmoe = build_model("mmoe", layout=layout, config=CONFIG).double().eval()
    torch.manual_seed(4)  # HMoE builds MMoE's parts first: the same draws
    hmoe = build_model("hmoe", layout=layout, config=CONFIG).double().eval()
    with torch.no_grad():
        for p in hmoe.relation.parameters():
            p.add_(torch.randn_like(p))  # whatever the relation net says, one domain has weight 1
        torch.testing.assert_close(hmoe(batch), mmoe(batch), rtol=1e-12, atol=1e-12)
        _, x, _ = hmoe.shared_part(batch)
        assert torch.equal(hmoe.relation(x, hmoe.make_condition(batch, None)).exp()[:, 2], torch.ones(7))


def _relation_by_bias(bias: list[list[float]], self_init: float = 0.9) -> nn.Module:
    """HMoE whose relation net is one DomainLinear with zero weights: the scores are its bias rows."""
    md = replace(MD, relation_hidden=(), relation_self_init=self_init)
    model = build_model("hmoe", layout=replace(LAYOUT, n_domains=5), config=replace(CONFIG, multidomain=md))
    if bias:
        with torch.no_grad():
            model.relation.mlp.out.weight.zero_()
            model.relation.mlp.out.bias.copy_(torch.tensor(bias))
    return model


def test_relation_weights_by_hand() -> None:
    # scores of domain 2: [5, 5, 0, ln 2, 0]; the reserved ids are masked out -> softmax(0, ln 2, 0) = 1/4, 1/2, 1/4
    # scores of <unseen> (id 1): [5, 0, 0, 0, ln 3]; its own id stays -> softmax(0, 0, 0, ln 3) = 1/6, 1/6, 1/6, 1/2
    bias = [[0.0] * 5, [5.0, 0.0, 0.0, 0.0, math.log(3)], [5.0, 5.0, 0.0, math.log(2), 0.0], [0.0] * 5, [0.0] * 5]
    model = _relation_by_bias(bias)
    groups_of = model.condition.forward
    batch = _batch([2, 1, 2])
    w = model.relation(torch.randn(3, 9), groups_of(batch, None)).exp()  # (B, R)
    torch.testing.assert_close(w, torch.tensor([[0, 0, 0.25, 0.5, 0.25], [0, 1 / 6, 1 / 6, 1 / 6, 0.5],
                                                [0, 0, 0.25, 0.5, 0.25]]))
    torch.testing.assert_close(w.sum(1), torch.ones(3))


def test_relation_weights_sum_to_one_and_start_at_self_init() -> None:
    model = _relation_by_bias([])
    with torch.no_grad():
        model.relation.mlp.out.weight.zero_()  # the scores are the initial bias: ln(0.9 * 2 / 0.1) on the own domain
    batch = _batch([2, 3, 4, 1, 0])
    w = model.relation(torch.randn(5, 9), model.condition(batch, None)).exp()
    torch.testing.assert_close(w[:3, 2:], torch.tensor([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]))
    # <unseen> and <missing> rows: their own id and the 3 train domains, 0.9 on their own
    torch.testing.assert_close(w[3], torch.tensor([0, 0.9, 0.1 / 3, 0.1 / 3, 0.1 / 3]))
    torch.testing.assert_close(w[4], torch.tensor([0.9, 0, 0.1 / 3, 0.1 / 3, 0.1 / 3]))
    trained = _model()  # random relation nets: still a distribution over each row's mixture
    w = trained.relation(torch.randn(6, 9, dtype=torch.float64), trained.condition(_batch([2, 3, 4, 5, 1, 0]), None))
    torch.testing.assert_close(w.exp().sum(1), torch.ones(6, dtype=torch.float64))


def test_the_mixture_is_of_probabilities_by_hand() -> None:
    # w = 1/4, 1/2, 1/4 on σ = 1/2, 3/4, 1/4: p = 1/8 + 3/8 + 1/16 = 9/16, logit = ln(9/7)
    log_w = torch.tensor([[0.25, 0.5, 0.25]], dtype=torch.float64).log()
    z = torch.tensor([[0.0, math.log(3), -math.log(3)]], dtype=torch.float64)
    torch.testing.assert_close(mix_probabilities(log_w, z), torch.tensor([math.log(9 / 7)], dtype=torch.float64))
    # one domain: the logit itself, also far in the tails (no clamping)
    z = torch.tensor([[-40.0], [0.3], [40.0]])
    torch.testing.assert_close(mix_probabilities(torch.zeros(3, 1), z), z.squeeze(1))
    # a masked (-inf) weight contributes nothing and its gradient is zero, not nan
    log_w = torch.tensor([[-math.inf, 0.0]], requires_grad=True)
    z = torch.tensor([[3.0, 0.5]], requires_grad=True)
    out = mix_probabilities(log_w, z)
    out.backward()
    torch.testing.assert_close(out, torch.tensor([0.5]))
    assert torch.isfinite(z.grad).all() and z.grad[0, 0] == 0 and torch.isfinite(log_w.grad).all()


def test_training_batch_norm_statistics_move_only_with_the_rows_own_domain() -> None:
    # the other domains' predictions use the running statistics and never move them: the towers' batch norm
    # moves exactly as in MMoE on the same rows
    cfg = replace(CONFIG, batch_norm=True)
    batch = _batch([2, 3, 4, 5, 2, 3, 2, 2])
    torch.manual_seed(5)
    mmoe = build_model("mmoe", layout=LAYOUT, config=cfg).double().train()
    torch.manual_seed(5)
    hmoe = build_model("hmoe", layout=LAYOUT, config=cfg).double().train()
    mmoe(batch), hmoe(batch)
    for (name, a), (_, b) in zip(mmoe.towers.named_buffers(), hmoe.towers.named_buffers(), strict=True):
        torch.testing.assert_close(b, a, msg=name)
    assert not torch.equal(hmoe.towers.post[0][0].running_mean, torch.zeros(3))  # they did move


@pytest.mark.parametrize(("change", "message"), [
    ({"relation_self_init": 1.0}, "relation_self_init must be in \\(0, 1\\)"),
    ({"relation_self_init": 0.0}, "relation_self_init must be in \\(0, 1\\)"),
    ({"relation_hidden": (4, 0)}, "relation_hidden sizes must be positive"),
])
def test_config_errors_are_one_line(change: dict, message: str) -> None:
    cfg = replace(CONFIG, multidomain=replace(MD, **change))
    with pytest.raises(ConfigError, match=message) as e:
        build_model("hmoe", layout=LAYOUT, config=cfg)
    assert "\n" not in str(e.value)


def test_without_domains_the_error_names_hmoe_and_domain() -> None:
    with pytest.raises(ConfigError, match="model 'hmoe' needs each row's domain.*--domain") as e:
        build_model("hmoe", layout=replace(LAYOUT, n_domains=0), config=CONFIG)
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="model 'hmoe'.*--domain"):
        _model()(_batch([2, 3])._replace(domain=None))


def test_relation_weights_report_to_the_adaptivity_diagnostic() -> None:
    model = _model()
    report = measure_adaptivity(model, [_batch([2, 3, 4, 5] * 16)])
    assert report["relation"]["relation"]["by_domain"] > 0.05, report
    assert report["relation"]["relation"]["adaptivity"] > 0.0
    assert "by_domain" in report["gate"]["gate"]
