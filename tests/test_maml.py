"""First-order MAML across domains (adactr/train/maml.py): one step against the formula by hand, inner_steps=0
as an ordinary step on the query rows, meta weights moved only by the outer optimiser, support rows kept out
of the query loss, one-line config errors, and a tiny run that resumes exactly; per-domain fine-tuning at
serving time against K SGD steps by hand, the meta weights for reserved domains, and a run saved and
loaded predicting the same."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from adactr.cli import main
from adactr.config import override, parse_sets
from adactr.data.tensors import Batch, SplitArrays
from adactr.errors import ConfigError
from adactr.nn.domain import DomainGroups
from adactr.train.config import Device, MAMLConfig, MetaLearning, RunConfig, TrainConfig
from adactr.train.maml import MAMLServed, MAMLStep, finetune_domains, maml_step, split_tasks
from adactr.train.run import evaluate_run, load_run
from adactr.train.trainer import Trainer, training_loss


class Logistic(nn.Module):
    """logit = x·w + b: the smallest model whose BCE gradients are written by hand below."""

    def __init__(self, w: list[float], b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(b, dtype=torch.float64))

    def forward(self, batch: Batch) -> Tensor:
        return batch.num @ self.w + self.b  # (B,)

    def embedding_parameters(self) -> Iterator[Tensor]:
        return iter(())


def _batch(x: list[list[float]], y: list[float], d: list[int]) -> Batch:
    B = len(y)
    return Batch(cat=torch.zeros(B, 0, dtype=torch.long), num=torch.tensor(x, dtype=torch.float64), seq=(),
                 label=torch.tensor(y, dtype=torch.float64), domain=torch.tensor(d))


# two domains, interleaved: domain 2 has rows 0, 2, 3, 5; domain 3 has rows 1, 4, 6
X = [[1.0, 0.0], [0.5, -1.0], [-1.0, 2.0], [2.0, 1.0], [0.0, 1.0], [1.5, -0.5], [-0.5, -1.5]]
Y = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
D = [2, 3, 2, 2, 3, 2, 3]


def _grad(w: Tensor, b: Tensor, rows: list[int]) -> tuple[Tensor, Tensor]:
    """∇ of the mean BCE of logistic regression over ``rows``: (X^T (σ(Xw+b) - y) / n, mean(σ(Xw+b) - y))."""
    x, y = torch.tensor([X[i] for i in rows], dtype=torch.float64), torch.tensor([Y[i] for i in rows],
                                                                                   dtype=torch.float64)
    r = torch.sigmoid(x @ w + b) - y  # (n,)
    return x.t() @ r / len(rows), r.mean()


def test_split_is_the_last_rows_of_each_domain_in_batch_order() -> None:
    tasks = split_tasks(DomainGroups.of(torch.tensor(D)), 0.5)
    # domain 2: 4 rows, 2 in the query set; domain 3: 3 rows, round(1.5) = 2 in the query set
    assert [(d, s.tolist(), q.tolist()) for d, s, q in tasks] == [(2, [0, 2], [3, 5]), (3, [1], [4, 6])]
    # a domain with a single row has no split and sits the step out; query sets are clamped to 1 .. n - 1
    tasks = split_tasks(DomainGroups.of(torch.tensor([4, 2, 2, 3, 3, 3])), 0.01)
    assert [(d, s.tolist(), q.tolist()) for d, s, q in tasks] == [(2, [1], [2]), (3, [3, 4], [5])]
    tasks = split_tasks(DomainGroups.of(torch.tensor([2, 2, 2])), 0.99)
    assert [(s.tolist(), q.tolist()) for _, s, q in tasks] == [([0], [1, 2])]


@pytest.mark.parametrize("inner_steps", [1, 2])
def test_one_step_equals_first_order_maml_by_hand(inner_steps: int) -> None:
    w0, b0 = [0.3, -0.2], 0.1
    alpha, eta = 0.5, 0.1
    model = Logistic(w0, b0)
    opt = torch.optim.SGD(model.parameters(), lr=eta)
    step = MAMLStep(model, [opt], config=MAMLConfig(inner_steps=inner_steps, inner_lr=alpha, query_fraction=0.5),
                    loss=training_loss)
    loss = step(_batch(X, Y, D))

    w, b = torch.tensor(w0, dtype=torch.float64), torch.tensor(b0, dtype=torch.float64)
    gw, gb, query_loss = torch.zeros(2, dtype=torch.float64), torch.zeros((), dtype=torch.float64), 0.0
    for support, query in (([0, 2], [3, 5]), ([1], [4, 6])):  # (domain 2), (domain 3)
        wt, bt = w.clone(), b.clone()
        for _ in range(inner_steps):  # θ' = θ' - α ∇L_S(θ')
            sw, sb = _grad(wt, bt, support)
            wt, bt = wt - alpha * sw, bt - alpha * sb
        qw, qb = _grad(wt, bt, query)  # ∇L_Q at θ', used as the gradient of θ (first order)
        gw, gb = gw + qw / 2, gb + qb / 2
        z = torch.tensor([X[i] for i in query], dtype=torch.float64) @ wt + bt
        y = torch.tensor([Y[i] for i in query], dtype=torch.float64)
        query_loss += float(torch.nn.functional.binary_cross_entropy_with_logits(z, y)) / 2
    torch.testing.assert_close(model.w.detach(), w - eta * gw, rtol=0, atol=1e-12)
    torch.testing.assert_close(model.b.detach(), b - eta * gb, rtol=0, atol=1e-12)
    assert float(loss) == pytest.approx(query_loss, abs=1e-12)  # the reported loss: the mean query loss


def _assert_meta_steps_equal_plain_steps(config: MAMLConfig, x: list[list[float]], y: list[float], d: list[int],
                                          query: list[int]) -> None:
    """Three MAML steps with ``config`` on the batch (x, y, d) move the weights exactly as three ordinary
    Adam steps on the rows ``query`` alone."""
    meta, plain = Logistic([0.3, -0.2], 0.1), Logistic([0.3, -0.2], 0.1)
    opt_meta, opt_plain = (torch.optim.Adam(m.parameters(), lr=0.01) for m in (meta, plain))
    step = MAMLStep(meta, [opt_meta], config=config, loss=training_loss)
    trainer = Trainer(config=TrainConfig(), device=torch.device("cpu"))
    for _ in range(3):
        step(_batch(x, y, d))
        trainer._step(plain, plain, [opt_plain], _batch([x[i] for i in query], [y[i] for i in query],
                                                        [d[i] for i in query]))
    for p, q in zip(meta.parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-12)


def test_inner_steps_zero_is_an_ordinary_step_on_the_query_rows() -> None:
    """With equal query sets (2 rows each) the task mean is the row mean, and Adam sees the same gradient."""
    d = [2, 3, 2, 2, 3, 2, 3, 3]
    x, y = [*X, [1.0, 1.0]], [*Y, 0.0]
    query = [3, 5, 6, 7]  # the last two rows of domain 2 (0, 2, 3, 5) and of domain 3 (1, 4, 6, 7)
    _assert_meta_steps_equal_plain_steps(MAMLConfig(inner_steps=0, query_fraction=0.5), x, y, d, query)


def test_rows_weighting_with_inner_steps_zero_is_an_ordinary_step_on_unequal_query_sets() -> None:
    """task_weight=rows: the meta gradient is the mean over all query rows, so with query sets of 2 and 3 rows
    (where equal task weights would differ) and no inner step it is an ordinary step on those rows."""
    d = [2, 3, 2, 2, 3, 2, 3, 3, 3]
    x, y = [*X, [1.0, 1.0], [0.5, 2.0]], [*Y, 0.0, 1.0]
    config = MAMLConfig(inner_steps=0, query_fraction=0.5, task_weight="rows")
    # domain 2 (rows 0, 2, 3, 5): query 3, 5; domain 3 (rows 1, 4, 6, 7, 8): round(2.5) half up = 3, query 6, 7, 8
    tasks = MAMLStep(Logistic([0.3, -0.2], 0.1), [], config=config, loss=training_loss).tasks(_batch(x, y, d))
    query = sorted(i for _, _, q, _ in tasks for i in q.tolist())
    assert query == [3, 5, 6, 7, 8]
    assert [len(q) for _, _, q, _ in tasks] == [2, 3] and [w for *_, w in tasks] == [0.4, 0.6]
    _assert_meta_steps_equal_plain_steps(config, x, y, d, query)


def test_rows_weighting_samples_tasks_in_proportion_to_their_query_rows() -> None:
    """tasks_per_step=k with task_weight=rows: k draws with replacement, P ∝ query rows, weight = share of
    the draws, so with k = 2 of 4 tasks the weights are 1/2 or 1 and, on average, each task's weight is its
    share of the query rows (an unbiased estimate of the row-weighted gradient); with k >= the number of
    tasks every task is used at its share."""
    d = [2] * 40 + [3] * 4 + [4] * 4 + [5] * 4  # query sets 32, 3, 3, 3 at share 0.8
    x, y = [[1.0, float(i)] for i in range(len(d))], [float(i % 2) for i in range(len(d))]
    step = MAMLStep(Logistic([0.0, 0.0], 0.0), [], config=MAMLConfig(tasks_per_step=2, task_weight="rows"),
                    loss=training_loss)
    torch.manual_seed(0)
    counts: dict[int, float] = {}
    for _ in range(200):
        tasks = step.tasks(_batch(x, y, d))
        weights = [w for *_, w in tasks]
        assert sum(weights) == pytest.approx(1.0), weights
        assert len(weights) <= 2 and all(w in (0.5, 1.0) for w in weights), weights
        for dom, _, _, w in tasks:
            counts[dom] = counts.get(dom, 0.0) + w / 200
    # expected weights: 32/41 for domain 2, 3/41 for each other
    assert counts[2] == pytest.approx(32 / 41, abs=0.05)
    assert all(counts[k] == pytest.approx(3 / 41, abs=0.03) for k in (3, 4, 5))
    every = MAMLStep(Logistic([0.0, 0.0], 0.0), [], config=MAMLConfig(tasks_per_step=4, task_weight="rows"),
                     loss=training_loss).tasks(_batch(x, y, d))
    assert [w for *_, w in every] == pytest.approx([32 / 41, 3 / 41, 3 / 41, 3 / 41], abs=1e-12)


def test_only_the_outer_optimiser_moves_the_meta_weights() -> None:
    model = Logistic([0.3, -0.2], 0.1)
    before = [p.detach().clone() for p in model.parameters()]
    step = MAMLStep(model, [], config=MAMLConfig(inner_steps=3, inner_lr=1.0, query_fraction=0.5),
                    loss=training_loss)
    start = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
    adapted = step.adapt(start, _batch(X, Y, D))
    assert not torch.equal(adapted["w"], before[0])  # the inner loop did move its own copy
    step(_batch(X, Y, D))  # a whole step without an optimiser: gradients, no update
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b) and p.grad is not None
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    MAMLStep(model, [opt], config=MAMLConfig(query_fraction=0.5), loss=training_loss)(_batch(X, Y, D))
    assert not torch.equal(model.w.detach(), before[0])


def test_support_rows_never_enter_their_domains_query_loss() -> None:
    seen: list[tuple[bool, set[int]]] = []  # (query?, rows) of every loss the step computes

    def spy(forward, batch: Batch) -> Tensor:
        seen.append((len(seen) % 2 == 1, {int(v) for v in batch.num[:, 0]}))  # support, query, support, ...
        return training_loss(forward, batch)

    x = [[float(i), 0.0] for i in range(len(D))]  # row i carries i in its first feature
    step = MAMLStep(Logistic([0.0, 0.0], 0.0), [], config=MAMLConfig(inner_steps=1, query_fraction=0.5), loss=spy)
    step(_batch(x, Y, D))
    assert seen == [(False, {0, 2}), (True, {3, 5}), (False, {1}), (True, {4, 6})]
    # with no inner step the support rows cannot matter at all: change them, get the same gradient
    grads = []
    for label in (0.0, 1.0):
        y = [label if i in (0, 2, 1) else Y[i] for i in range(len(Y))]
        model = Logistic([0.3, -0.2], 0.1)
        MAMLStep(model, [], config=MAMLConfig(inner_steps=0, query_fraction=0.5), loss=training_loss)(
            _batch(X, y, D))
        grads.append(torch.cat([model.w.grad, model.b.grad.reshape(1)]))
    assert torch.equal(grads[0], grads[1])


def test_tasks_per_step_draws_that_many_domains() -> None:
    seen: list[int] = []

    def spy(forward, batch: Batch) -> Tensor:
        seen.append(int(batch.domain[0]))
        return training_loss(forward, batch)

    d = [2, 3, 4, 5] * 3
    x, y = [[1.0, float(i)] for i in range(12)], [float(i % 2) for i in range(12)]
    step = MAMLStep(Logistic([0.0, 0.0], 0.0), [], config=MAMLConfig(tasks_per_step=2, inner_steps=0),
                    loss=spy)
    step(_batch(x, y, d))
    assert len(seen) == 2 and len(set(seen)) == 2


@pytest.mark.parametrize("key, value, message", [
    ("train.maml.query_fraction", "1", "strictly between 0 and 1"),
    ("train.maml.query_fraction", "0", "strictly between 0 and 1"),
    ("train.maml.inner_steps", "-1", "inner_steps must be >= 0"),
    ("train.maml.inner_lr", "-0.1", "inner_lr must be >= 0"),
    ("train.maml.tasks_per_step", "-2", "tasks_per_step must be >= 0"),
    ("train.maml.task_weight", "domains", "task_weight must be 'tasks' or 'rows'"),
    ("train.maml.finetune_steps", "-1", "finetune_steps must be >= 0"),
    ("train.maml.finetune_rows", "-5", "finetune_rows must be >= 0"),
    ("train.maml.finetune_steps", "two", "finetune_steps"),
    ("train.meta", "reptile", "train.meta"),
])
def test_config_errors_are_one_line(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        override(RunConfig(), parse_sets([f"{key}={value}"]))
    assert "\n" not in str(e.value)


def test_maml_needs_domains_and_eager_steps() -> None:
    model, cfg = Logistic([0.0, 0.0], 0.0), TrainConfig(meta=MetaLearning.MAML)
    with pytest.raises(ConfigError, match="--domain") as e:
        maml_step(model, [], cfg, has_domain=False, loss=training_loss)
    assert "\n" not in str(e.value)
    for bad in (replace(cfg, compile=True), replace(cfg, cuda_graph=True)):
        with pytest.raises(ConfigError, match="train.compile=false and train.cuda_graph=false") as e:
            maml_step(model, [], bad, has_domain=True, loss=training_loss)
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="--domain"):
        maml_step(model, [], cfg, has_domain=True, loss=training_loss)(_batch(X, Y, D)._replace(domain=None))


def test_training_without_a_domain_column_fails_in_one_line_naming_domain(world_csv, tmp_path, capsys) -> None:
    data = tmp_path / "nodomain"
    assert main(["prepare", "--train", str(world_csv["train"]), "--valid", str(world_csv["valid"]),
                 "--out", str(data), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--model", "dnn", "--out", str(tmp_path / "run"), "--quiet",
                 "--set", "train.meta=maml", "--set", "train.epochs=1"]) != 0
    err = capsys.readouterr().err.strip()
    assert "--domain" in err and len(err.splitlines()) == 1, err


PLAIN = ["--model", "dnn", "--set", "model.hidden=[16,8]", "--set", "model.dropout=0.1",
         "--set", "model.batch_norm=true", "--set", "train.epochs=2", "--set", "train.patience=5",
         "--set", "train.batch_size=500", "--quiet"]
ARGS = [*PLAIN, "--set", "train.meta=maml", "--set", "train.maml.tasks_per_step=2"]


def _metrics(run) -> tuple:
    m = json.loads((run / "metrics.json").read_text())
    return m["test"]["auc"], m["test"]["logloss"], m["valid"]["auc"], [h["train_loss"] for h in m["history"]]


def test_a_maml_run_trains_and_resumes_exactly(tmp_path, world_data, kill_after_first_epoch) -> None:
    """DNN with dropout and batch norm, two of the batch's domains drawn per step: the RNG and the running
    statistics both matter, and the resumed run ends with the uninterrupted run's metrics."""
    full = tmp_path / "full"
    assert main(["train", "--data", str(world_data), "--out", str(full), *ARGS]) == 0
    auc, _, _, losses = _metrics(full)
    assert auc > 0.55 and len(losses) == 2
    plain = tmp_path / "plain"
    assert main(["train", "--data", str(world_data), "--out", str(plain), *PLAIN]) == 0
    assert _metrics(plain) != _metrics(full)  # the strategy did change the training

    killed = tmp_path / "killed"
    restore = kill_after_first_epoch()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS]) == 130
    restore()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS, "--resume"]) == 0
    assert _metrics(killed) == _metrics(full)


# ---- fine-tuning per domain at serving time --------------------------------------------------------------

N_DOMAINS = 5  # 0 <missing>, 1 <unseen>, 2 and 3 with train rows (X, Y, D above), 4 without any


def _train_split() -> SplitArrays:
    return SplitArrays({"cat": np.zeros((len(Y), 0), dtype=np.int64), "num": np.array(X), "label": np.array(Y),
                        "domain": np.array(D, dtype=np.int64)})


def _finetuned(model: nn.Module, **cfg) -> MAMLServed:
    return finetune_domains(model, _train_split(), config=MAMLConfig(**cfg), n_domains=N_DOMAINS,
                            loss=training_loss, seed=0, device=torch.device("cpu"))


# rows to serve: one of every domain id, ids 0, 1 and 4 having no weights of their own
SERVE = _batch([[1.0, 2.0], [-1.0, 0.5], [0.5, 0.5], [2.0, -1.0], [0.0, -2.0]], [0.0] * 5, [0, 1, 2, 3, 4])


def _by_hand(rows: list[int], k: int, alpha: float) -> tuple[Tensor, Tensor]:
    """(w, b) after k SGD steps at α on the mean BCE of ``rows`` from (0.3, -0.2), 0.1."""
    w, b = torch.tensor([0.3, -0.2], dtype=torch.float64), torch.tensor(0.1, dtype=torch.float64)
    for _ in range(k):
        gw, gb = _grad(w, b, rows)
        w, b = w - alpha * gw, b - alpha * gb
    return w, b


@pytest.mark.parametrize("k", [1, 3])
def test_each_domain_is_served_by_the_meta_weights_after_k_sgd_steps_on_its_own_rows(k: int) -> None:
    model = Logistic([0.3, -0.2], 0.1)
    served = _finetuned(model, inner_lr=0.5, finetune_steps=k, finetune_rows=0)  # 0: all of a domain's rows
    z = served(SERVE).detach()
    for row, rows in ((2, [0, 2, 3, 5]), (3, [1, 4, 6])):  # domain 2's train rows, domain 3's
        w, b = _by_hand(rows, k, 0.5)
        assert float(z[row]) == pytest.approx(float(SERVE.num[row] @ w + b), abs=1e-12)
    assert model.w.tolist() == [0.3, -0.2] and model.b.item() == 0.1  # the meta weights stay as they were
    assert served.domain_adapted.tolist() == [False, False, True, True, False]


def test_reserved_domains_and_domains_without_train_rows_get_the_meta_weights() -> None:
    model = Logistic([0.3, -0.2], 0.1)
    served = _finetuned(model, inner_lr=0.5, finetune_rows=0)
    z, meta = served(SERVE), model(SERVE)
    assert torch.equal(z[[0, 1, 4]], meta[[0, 1, 4]])  # <missing>, <unseen>, no train rows
    assert not torch.isclose(z[2], meta[2]) and not torch.isclose(z[3], meta[3])  # the others did adapt
    alone = SERVE._replace(domain=torch.tensor([1, 1, 4, 0, 1]))  # no adapted domain at all: the model itself
    assert torch.equal(served(alone), model(alone))


def test_the_support_set_is_finetune_rows_of_the_domains_own_rows() -> None:
    """With 2 support rows, domain 2 (rows 0, 2, 3, 5) is served by one step on two of them."""
    served = _finetuned(Logistic([0.3, -0.2], 0.1), inner_lr=0.5, finetune_rows=2)
    z = float(served(SERVE).detach()[2])
    pairs = [[a, b] for a in (0, 2, 3, 5) for b in (0, 2, 3, 5) if a < b]
    hand = [float(SERVE.num[2] @ w + b) for w, b in (_by_hand(p, 1, 0.5) for p in pairs)]
    assert min(abs(z - h) for h in hand) < 1e-12
    assert len({round(h, 9) for h in hand}) == len(pairs)  # the pairs are told apart


def test_finetune_steps_defaults_to_inner_steps() -> None:
    assert MAMLConfig().finetune_k == 1 and MAMLConfig(inner_steps=3).finetune_k == 3
    assert MAMLConfig(inner_steps=3, finetune_steps=0).finetune_k == 0


def test_a_served_model_loads_into_a_fresh_structure() -> None:
    served = _finetuned(Logistic([0.3, -0.2], 0.1), inner_lr=0.5)
    fresh = MAMLServed(Logistic([0.0, 0.0], 0.0), n_domains=N_DOMAINS, adapt_embeddings=True)
    fresh.load_state_dict(served.state_dict())
    assert torch.equal(fresh(SERVE), served(SERVE))


FT = [*PLAIN, "--set", "train.meta=maml", "--set", "train.maml.inner_lr=0.1"]


def test_a_finetuned_run_serves_what_it_saved_and_k0_is_the_meta_weights(tmp_path, world_data) -> None:
    k0, k1 = tmp_path / "k0", tmp_path / "k1"
    assert main(["train", "--data", str(world_data), "--out", str(k0), *FT,
                 "--set", "train.maml.finetune_steps=0"]) == 0
    assert main(["train", "--data", str(world_data), "--out", str(k1), *FT]) == 0
    m0, m1 = (json.loads((r / "metrics.json").read_text()) for r in (k0, k1))
    # the same training; K = 0 serves the meta weights as before fine-tuning existed, K = 1 other weights
    def history(m: dict) -> list:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in m["history"]]

    assert history(m0) == history(m1) and "maml_finetune" not in m0
    assert m1["maml_finetune"]["meta_test"]["auc"] == m0["test"]["auc"]
    assert m1["maml_finetune"]["meta_test"]["logloss"] == m0["test"]["logloss"]
    assert m1["test"]["logloss"] != m0["test"]["logloss"]
    assert m1["maml_finetune"]["domains"] > 0 and m1["maml_finetune"]["steps"] == 1
    assert not isinstance(load_run(k0)[0], MAMLServed) and isinstance(load_run(k1)[0], MAMLServed)
    for run, m in ((k0, m0), (k1, m1)):  # what model.safetensors holds is what the metrics measured
        again = evaluate_run(run=run, data=world_data, device=Device.CPU)
        assert (again["auc"], again["logloss"]) == (m["test"]["auc"], m["test"]["logloss"])


class Lookup(nn.Module):
    """logit = e[id]·v + b with a lookup table e: fine-tuning moves only the rows a domain's ids use."""

    def __init__(self) -> None:
        super().__init__()
        self.e = nn.Embedding(6, 2, dtype=torch.float64)
        nn.init.normal_(self.e.weight, generator=torch.Generator().manual_seed(0))
        self.v = nn.Parameter(torch.tensor([0.5, -0.3], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor(0.1, dtype=torch.float64))

    def forward(self, batch: Batch) -> Tensor:
        return self.e(batch.cat[:, 0]) @ self.v + self.b  # (B,)

    def embedding_parameters(self) -> Iterator[Tensor]:
        return iter((self.e.weight,))


@pytest.mark.parametrize("adapt_embeddings", [True, False])
def test_tables_keep_only_the_changed_rows_and_serve_the_adapted_table(adapt_embeddings: bool) -> None:
    ids = [2, 3, 2, 4, 5, 3, 5]  # domain 2 (rows 0, 2, 3, 5) uses ids 2, 4, 3; domain 3 (rows 1, 4, 6) 3, 5
    split = SplitArrays({"cat": np.array(ids).reshape(-1, 1), "num": np.zeros((7, 0)), "label": np.array(Y),
                         "domain": np.array(D, dtype=np.int64)})
    model = Lookup()
    cfg = MAMLConfig(inner_lr=0.5, finetune_steps=2, finetune_rows=0, adapt_embeddings=adapt_embeddings)
    served = finetune_domains(model, split, config=cfg, n_domains=N_DOMAINS, loss=training_loss, seed=0,
                              device=torch.device("cpu"))
    serve = _batch([[]] * 6, [0.0] * 6, [2, 2, 3, 3, 1, 4])._replace(cat=torch.tensor([[2], [5], [3], [4], [2], [5]]))
    z = served(serve).detach()
    step = MAMLStep(model, [], config=cfg, loss=training_loss)
    for rows_d, serve_rows in (([0, 2, 3, 5], [0, 1]), ([1, 4, 6], [2, 3])):  # domain 2, domain 3
        start = {n: p.detach().requires_grad_() for n, p in model.named_parameters()}
        fast = step.adapt(start, split.to_tensors(torch.device("cpu")).take(torch.tensor(rows_d)), steps=2)
        want = torch.func.functional_call(model, fast, (serve._replace(cat=serve.cat[serve_rows]),)).detach()
        torch.testing.assert_close(z[serve_rows], want, rtol=0, atol=1e-12)
    assert torch.equal(z[4:], model(serve._replace(cat=serve.cat[4:])).detach())  # <unseen>, no train rows
    if adapt_embeddings:  # per domain, the rows its ids looked up; nothing of the other rows
        assert served.rows__e__weight.tolist() == [2, 3, 4, 3, 5]
        assert served.offsets__e__weight.tolist() == [0, 0, 0, 3, 5, 5]
    else:
        assert served.table_names == [] and not hasattr(served, "rows__e__weight")


def test_batch_norm_models_get_two_rows_per_set_and_one_row_domains_keep_the_meta_weights(tmp_path):
    """A DNN with batch norm under MAML on data whose domains have 1-3 rows in a batch: training-mode batch
    norm of one row is refused by torch, so such tasks sit the step out (support and query >= 2 rows) and
    a domain with one train row is served with the meta weights. Without batch norm the 2-row tasks stay."""
    from adactr.train.maml import min_task_rows, split_tasks

    bn, plain = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Sequential(nn.Linear(2, 2))
    assert (min_task_rows(bn), min_task_rows(plain)) == (2, 1)
    g = DomainGroups.of(torch.tensor([3, 3, 3, 4, 4, 4, 4, 5, 5]))
    assert [(d, len(s), len(q)) for d, s, q in split_tasks(g, 0.8, min_rows=2)] == [(4, 2, 2)]
    assert [(d, len(s), len(q)) for d, s, q in split_tasks(g, 0.8)] == [(3, 1, 2), (4, 1, 3), (5, 1, 1)]



class NormedLogistic(Logistic):
    """Logistic regression on batch-normalised inputs: a model whose training mode needs two rows."""

    def __init__(self) -> None:
        super().__init__([0.3, -0.2], 0.1)
        self.norm = nn.BatchNorm1d(2, dtype=torch.float64)

    def forward(self, batch: Batch) -> Tensor:
        return self.norm(batch.num) @ self.w + self.b  # (B,)


def test_a_maml_step_on_a_batch_norm_model_skips_tasks_with_a_one_row_set(monkeypatch) -> None:
    """D has a 4-row and a 3-row domain: at query share 0.8 the 3-row one had a 1-row support set, which
    training-mode batch norm refuses (the ML-1M run with 241 domains failed there). The 4-row domain is the
    step's only task now, split 2 / 2."""
    import adactr.train.maml as maml_mod

    model = NormedLogistic().train()
    step = MAMLStep(model, [], config=MAMLConfig(query_fraction=0.8), loss=training_loss)
    assert [(d, s.tolist(), q.tolist(), w) for d, s, q, w in step.tasks(_batch(X, Y, D))] == [(2, [0, 2], [3, 5], 1.0)]
    assert torch.isfinite(step(_batch(X, Y, D)))
    monkeypatch.setattr(maml_mod, "min_task_rows", lambda model: 1)  # the split before the fix
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        MAMLStep(model, [], config=MAMLConfig(query_fraction=0.8), loss=training_loss)(_batch(X, Y, D))


def test_a_batch_norm_models_one_row_domain_is_served_with_the_meta_weights() -> None:
    """Fine-tuning on a domain's single train row would need batch statistics of one row: with batch norm
    that domain keeps the meta weights; the others adapt."""
    model = NormedLogistic()
    split = SplitArrays({"cat": np.zeros((len(Y), 0), dtype=np.int64), "num": np.array(X), "label": np.array(Y),
                         "domain": np.array([2, 3, 2, 2, 3, 2, 4], dtype=np.int64)})  # domain 4: one row
    served = finetune_domains(model, split, config=MAMLConfig(inner_lr=0.5, finetune_rows=0), n_domains=N_DOMAINS,
                              loss=training_loss, seed=0, device=torch.device("cpu"))
    assert served.domain_adapted.tolist() == [False, False, True, True, False]


def test_norm_stats_running_normalises_every_task_with_the_running_statistics() -> None:
    """norm_stats=running: each task's forward is the model in evaluation mode for batch norm (its running
    statistics), so one-row sets are allowed again, the step's loss with no inner step is the task-weighted
    mean of the eval-mode query losses, the module is left in training mode, and the running statistics
    still move only with the whole-batch forward after the step (tests above)."""
    model = NormedLogistic().train()
    with torch.no_grad():
        model.norm.running_mean.copy_(torch.tensor([0.5, -0.25], dtype=torch.float64))
        model.norm.running_var.copy_(torch.tensor([2.0, 0.5], dtype=torch.float64))
    cfg = MAMLConfig(query_fraction=0.8, inner_steps=0, norm_stats="running", task_weight="rows")
    step = MAMLStep(model, [], config=cfg, loss=training_loss)
    tasks = step.tasks(_batch(X, Y, D))
    assert [(d, s.tolist(), q.tolist()) for d, s, q, _ in tasks] == [(2, [0], [2, 3, 5]), (3, [1], [4, 6])]
    mean, var = model.norm.running_mean.clone(), model.norm.running_var.clone()
    x = torch.tensor(X, dtype=torch.float64)
    logits = (x - mean) / torch.sqrt(var + model.norm.eps) @ model.w.detach() + model.b.detach()  # (7,) eval mode
    query = [2, 3, 5, 4, 6]
    y = torch.tensor(Y, dtype=torch.float64)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits[query], y[query])
    loss = step(_batch(X, Y, D))  # rows-weighted: 3/5 and 2/5 of the two query means = the mean of all 5
    assert float(loss) == pytest.approx(float(expected), abs=1e-12)
    assert model.training and model.norm.training
    with pytest.raises(ConfigError, match="norm_stats must be 'task' or 'running'"):
        MAMLConfig(norm_stats="batch")
