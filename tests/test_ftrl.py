"""FTRL-Proximal and GroupLasso-FTRL (adactr/train/ftrl.py): against an independent numpy reference, against
Adagrad, by hand, and wired into the trainer (``train.optimizer=ftrl``, ``train.embedding_optimizer=gftrl``,
``train.optimizer_preset=dynint``)."""

import inspect
import io
import json
import math

import numpy as np
import pytest
import torch

from adactr.errors import ConfigError
from adactr.train import trainer as trainer_mod
from adactr.train.config import EarlyStopping, FTRLConfig, Optimizer, OptimizerPreset, RunConfig, TrainConfig, resolve
from adactr.train.ftrl import FTRL, GroupFTRL, zero_rows

# ---- an independent reference: McMahan's Algorithm 1 written out per coordinate, in float64 ---------------


class Reference:
    """FTRL (``group=False``) or G-FTRL (``group=True``, rows of a 2-D table) one coordinate at a time.

    Lazy like adactr's: a coordinate (FTRL) or row (G-FTRL) whose gradient is zero is skipped. A change of
    α is written as the general sigma = 1/η_t - 1/η_{t-1} with 1/η = (β + sqrt(n)) / α, each coordinate
    remembering the α of its last update (adactr instead re-expresses z once when α changes).
    """

    def __init__(self, w0, *, beta, l1, l2, group):
        self.w = np.array(w0, dtype=np.float64)
        self.z = np.zeros_like(self.w)
        self.n = np.zeros_like(self.w)
        self.last_alpha = np.zeros_like(self.w)
        self.beta, self.l1, self.l2, self.group = beta, l1, l2, group

    def _accumulate(self, idx, g, alpha):
        n_old = self.n[idx]
        n_new = n_old + g * g
        before = (self.beta + math.sqrt(n_old)) / self.last_alpha[idx] if n_old > 0 else self.beta / alpha
        sigma = (self.beta + math.sqrt(n_new)) / alpha - before
        self.z[idx] += g - sigma * self.w[idx]
        self.n[idx] = n_new
        self.last_alpha[idx] = alpha

    def _den(self, idx, alpha):
        return (self.beta + math.sqrt(self.n[idx])) / alpha + self.l2

    def step(self, grad, alpha):
        grad = np.asarray(grad, dtype=np.float64)
        if not self.group:
            for idx in zip(*np.nonzero(grad), strict=True):
                self._accumulate(idx, grad[idx], alpha)
                z = self.z[idx]
                self.w[idx] = 0.0 if abs(z) <= self.l1 else -(z - np.sign(z) * self.l1) / self._den(idx, alpha)
            return
        rows, d = grad.shape
        for r in range(rows):
            if not grad[r].any():
                continue
            for c in range(d):
                self._accumulate((r, c), grad[r, c], alpha)
            norm = math.sqrt(sum(self.z[r, c] ** 2 for c in range(d)))
            threshold = self.l1 * math.sqrt(d)
            for c in range(d):
                self.w[r, c] = 0.0 if norm <= threshold else \
                    self.z[r, c] * (threshold / norm - 1) / self._den((r, c), alpha)


def _gradients(shape, steps, *, seed, zero_rows_p=0.0, zero_p=0.0):
    """Random gradients with some exactly-zero entries (coordinates) and rows, float64."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        g = rng.normal(0, 1, shape)
        g[rng.random(shape) < zero_p] = 0.0
        if len(shape) == 2:
            g[rng.random(shape[0]) < zero_rows_p] = 0.0
        out.append(g)
    return out


def _run(opt_cls, w0, grads, alphas, **h):
    """adactr's optimiser on dense gradients, α per step (the parameter group's lr); the final weights."""
    w = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = opt_cls([w], lr=alphas[0], **h)
    for g, a in zip(grads, alphas, strict=True):
        opt.param_groups[0]["lr"] = a
        w.grad = torch.tensor(g)
        opt.step()
    return w.detach().numpy(), opt


ALPHAS = [0.3] * 5 + [0.03] * 5  # α cut by 10 after 5 steps, as reduce-on-plateau does


def test_ftrl_matches_the_reference():
    rng = np.random.default_rng(1)
    w0 = rng.normal(0, 0.1, (6, 4))
    grads = _gradients((6, 4), 10, seed=2, zero_p=0.3)
    h = {"beta": 0.5, "l1": 1.2, "l2": 0.1}
    ref = Reference(w0, group=False, **h)
    for g, a in zip(grads, ALPHAS, strict=True):
        ref.step(g, a)
    w, _ = _run(FTRL, w0, grads, ALPHAS, **h)
    np.testing.assert_allclose(w, ref.w, rtol=1e-10, atol=1e-12)
    assert (w == 0).sum() >= 3 and (w != 0).sum() >= 3, "the test needs coordinates on both sides of λ1"


def test_group_ftrl_matches_the_reference():
    rng = np.random.default_rng(3)
    w0 = rng.normal(0, 0.1, (10, 4))
    grads = _gradients((10, 4), 10, seed=4, zero_rows_p=0.3, zero_p=0.1)
    h = {"beta": 0.5, "l1": 2.0, "l2": 0.1}
    ref = Reference(w0, group=True, **h)
    for g, a in zip(grads, ALPHAS, strict=True):
        ref.step(g, a)
    w, _ = _run(GroupFTRL, w0, grads, ALPHAS, **h)
    np.testing.assert_allclose(w, ref.w, rtol=1e-10, atol=1e-12)
    zero = (w == 0).all(1)
    assert zero.sum() >= 2 and (~zero).sum() >= 2, "the test needs rows on both sides of λ1·sqrt(D)"
    assert ((w == 0).any(1) == zero).all(), "a row is all zero or has no zero from the threshold"


def test_ftrl_without_regularisation_is_adagrad_step_for_step():
    """λ1 = λ2 = 0 and a zero initial weight: w_{t+1} = w_t - α g_t / (β + sqrt(n_t)), torch's Adagrad with
    lr=α, eps=β, no initial accumulator; also across a change of α (both take the new one)."""
    alpha, beta = 0.1, 0.3
    w = torch.nn.Parameter(torch.zeros(5, 3, dtype=torch.float64))
    a = torch.nn.Parameter(torch.zeros(5, 3, dtype=torch.float64))
    ftrl = FTRL([w], lr=alpha, beta=beta, l1=0.0, l2=0.0)
    adagrad = torch.optim.Adagrad([a], lr=alpha, eps=beta, initial_accumulator_value=0.0)
    for t, g in enumerate(_gradients((5, 3), 12, seed=5)):
        if t == 6:
            for opt in (ftrl, adagrad):
                opt.param_groups[0]["lr"] = alpha / 10
        w.grad, a.grad = torch.tensor(g), torch.tensor(g)
        ftrl.step()
        adagrad.step()
        torch.testing.assert_close(w, a, rtol=1e-12, atol=1e-14)
    # by hand, first step from zero: z = g, n = g², w = -α g / (β + |g|)
    w1 = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    w1.grad = torch.tensor([2.0], dtype=torch.float64)
    FTRL([w1], lr=alpha, beta=beta, l1=0.0, l2=0.0).step()
    assert w1.item() == pytest.approx(-0.1 * 2 / (0.3 + 2))


def test_group_ftrl_with_one_column_is_ftrl():
    rng = np.random.default_rng(6)
    w0 = rng.normal(0, 0.1, (12, 1))
    grads = _gradients((12, 1), 8, seed=7, zero_p=0.2)
    h = {"beta": 0.2, "l1": 1.0, "l2": 0.05}
    g_w, _ = _run(GroupFTRL, w0, grads, ALPHAS[:8], **h)
    f_w, _ = _run(FTRL, w0, grads, ALPHAS[:8], **h)
    np.testing.assert_allclose(g_w, f_w, rtol=1e-12, atol=1e-15)
    assert (f_w == 0).any() and (f_w != 0).any()


def test_rows_under_the_threshold_are_exactly_zero_by_hand():
    """α = 1, β = λ2 = 0, λ1 = 0.5, D = 4: the threshold is λ1·sqrt(4) = 1; one step from zero has z = g and
    sqrt(n) = |g|. Row norms 2 (kept: z (1/2 - 1) / 1 = -0.5), 1 (at the threshold: zero), 0.6 (over λ1 but
    under λ1·sqrt(D): zero) and 4 with unequal coordinates."""
    E = torch.nn.Parameter(torch.zeros(4, 4))
    E.grad = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.3, 0.3, 0.3, 0.3], [4.0, 0, 0, 0]])
    GroupFTRL([E], lr=1.0, beta=0.0, l1=0.5, l2=0.0).step()
    assert E[0].tolist() == [-0.5] * 4
    assert E[1].tolist() == [0.0] * 4 and E[2].tolist() == [0.0] * 4
    # row 3: z = (4, 0, 0, 0), ||z|| = 4: w = 4 (1/4 - 1) / sqrt(16) = -0.75; its other coordinates 0 / 0 -> 0
    assert E[3].tolist() == [-0.75, 0.0, 0.0, 0.0]


def test_lambda1_zero_gives_no_nan():
    """λ1 = β = λ2 = 0 divides 0 by 0: a row whose z is 0 (w0 = α sgn(g) makes z = g - (|g|/α) w0 = 0), and
    coordinates never given a gradient (n = 0) in a row that is kept."""
    E = torch.nn.Parameter(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    E.grad = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    GroupFTRL([E], lr=1.0, beta=0.0, l1=0.0, l2=0.0).step()
    assert torch.isfinite(E).all()
    assert E.tolist() == [[0.0, 0.0, 0.0], [-1.0, 0.0, 0.0]]
    w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    w.grad = torch.tensor([1.0, 2.0])
    FTRL([w], lr=1.0, beta=0.0, l1=0.0, l2=0.0).step()
    assert w.tolist() == [0.0, -1.0]


def _sparse(rows, values, shape):
    """A sparse COO gradient of a (V, D) table, uncoalesced as nn.Embedding(sparse=True) makes it."""
    return torch.sparse_coo_tensor(torch.tensor([rows]), torch.tensor(values, dtype=torch.float32), shape,
                                   check_invariants=True)


@pytest.mark.parametrize("opt_cls", [GroupFTRL, FTRL])
def test_untouched_rows_do_not_change(opt_cls):
    """Rows without a gradient keep their value bit for bit: never-seen rows their initial value (lazy),
    seen ones their last update; with sparse and with dense gradients."""
    for sparse in (True, False):
        torch.manual_seed(0)
        E = torch.nn.Parameter(torch.randn(6, 3))
        init = E.detach().clone()
        opt = opt_cls([E], lr=0.5, beta=0.1, l1=0.01, l2=0.01)
        for rows in ([1, 3], [3, 5]):
            g = _sparse(rows, torch.randn(2, 3).tolist(), (6, 3))
            E.grad = g if sparse else g.to_dense()
            before = E.detach().clone()
            opt.step()
            others = [r for r in range(6) if r not in rows]
            assert torch.equal(E[others], before[others]), (sparse, rows)
            assert not torch.equal(E[rows], before[rows])
        assert torch.equal(E[[0, 2, 4]], init[[0, 2, 4]])


@pytest.mark.parametrize("opt_cls", [GroupFTRL, FTRL])
def test_a_duplicated_id_equals_one_id_with_the_summed_gradient(opt_cls):
    torch.manual_seed(0)
    init = torch.randn(6, 3)
    c = torch.randn(3, 3)
    emb = torch.nn.Embedding(6, 3, sparse=True)
    emb.weight.data.copy_(init)
    opt = opt_cls(emb.parameters(), lr=0.5, beta=0.1, l1=0.01, l2=0.01)
    (emb(torch.tensor([2, 2, 5])) * c).sum().backward()  # row 2 twice: an uncoalesced gradient
    assert not emb.weight.grad.is_coalesced()
    opt.step()
    E = torch.nn.Parameter(init.clone())
    E.grad = _sparse([2, 5], [(c[0] + c[1]).tolist(), c[2].tolist()], (6, 3))
    opt_cls([E], lr=0.5, beta=0.1, l1=0.01, l2=0.01).step()
    torch.testing.assert_close(emb.weight.detach(), E.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("opt_cls", [GroupFTRL, FTRL])
def test_sparse_and_dense_gradients_give_the_same_tables(opt_cls):
    """nn.Embedding(sparse=True) and a dense one, same init and batches (duplicate ids, rows 10-19 never
    looked up): the same table after 8 steps, untouched rows exactly their initial value."""
    torch.manual_seed(0)
    tables = [torch.nn.Embedding(20, 4, sparse=s) for s in (True, False)]
    tables[1].weight.data.copy_(tables[0].weight.data)
    init = tables[0].weight.detach().clone()
    opts = [opt_cls(t.parameters(), lr=0.2, beta=0.01, l1=0.05, l2=0.01) for t in tables]
    v = torch.randn(4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(8):
        ids = torch.randint(0, 10, (16,), generator=gen)
        target = torch.randn(16, generator=gen)
        for t, o in zip(tables, opts, strict=True):
            o.zero_grad()
            ((t(ids) @ v).tanh() - target).square().sum().backward()
            o.step()
    assert tables[0].weight.grad.is_sparse and not tables[1].weight.grad.is_sparse
    torch.testing.assert_close(tables[0].weight, tables[1].weight, rtol=1e-6, atol=1e-7)
    assert torch.equal(tables[0].weight[10:], init[10:]) and torch.equal(tables[1].weight[10:], init[10:])


@pytest.mark.parametrize("opt_cls", [GroupFTRL, FTRL])
def test_summed_loss_with_scaled_constants_gives_the_same_weights(opt_cls):
    """The scale relation: gradients times c (a loss summed over a batch of c rows instead of averaged)
    with β, λ1, λ2 times c and the same α give the same weights; z is c times, n c² times. With the
    constants left unscaled the weights differ."""
    c = 4096.0
    rng = np.random.default_rng(8)
    w0 = rng.normal(0, 0.1, (8, 4))
    grads = _gradients((8, 4), 8, seed=9, zero_rows_p=0.2)
    h = {"beta": 1e-4, "l1": 2e-2, "l2": 1e-3}
    grads = [g * 1e-2 for g in grads]  # mean-loss sized
    mean_w, mean_opt = _run(opt_cls, w0, grads, ALPHAS[:8], **h)
    sum_w, sum_opt = _run(opt_cls, w0, [g * c for g in grads], ALPHAS[:8], **{k: v * c for k, v in h.items()})
    np.testing.assert_allclose(sum_w, mean_w, rtol=1e-9, atol=1e-12)
    (p,), (q,) = mean_opt.state, sum_opt.state
    torch.testing.assert_close(sum_opt.state[q]["z"], c * mean_opt.state[p]["z"])
    torch.testing.assert_close(sum_opt.state[q]["n"], c * c * mean_opt.state[p]["n"])
    assert (mean_w == 0).any() and (mean_w != 0).any()
    unscaled, _ = _run(opt_cls, w0, [g * c for g in grads], ALPHAS[:8], **h)
    assert not np.allclose(unscaled, mean_w, rtol=1e-3)


def test_resume_from_a_state_dict_continues_exactly():
    """Optimiser state saved mid-way (through torch.save / weights_only load, as last.pt is) and restored
    into fresh optimisers continues bit for bit like the uninterrupted run, α changes on both sides."""
    torch.manual_seed(0)
    init = {"E": torch.randn(10, 4), "W": torch.randn(3, 4)}
    gen = torch.Generator().manual_seed(2)
    grads = [(torch.randn(10, 4, generator=gen) * (torch.rand(10, 1, generator=gen) < 0.5),
              torch.randn(3, 4, generator=gen)) for _ in range(10)]

    def fresh():
        E, W = (torch.nn.Parameter(init[k].clone()) for k in ("E", "W"))
        return (E, W), [GroupFTRL([E], lr=0.2, beta=0.1, l1=0.1, l2=0.01), FTRL([W], lr=0.2, beta=0.1, l1=0.05)]

    def steps(params, opts, ts):
        for t in ts:
            if t in (3, 7):
                for o in opts:
                    o.param_groups[0]["lr"] *= 0.1
            for p, g in zip(params, grads[t], strict=True):
                p.grad = g.clone()
            for o in opts:
                o.step()

    params, opts = fresh()
    steps(params, opts, range(10))
    half, half_opts = fresh()
    steps(half, half_opts, range(5))
    buf = io.BytesIO()
    torch.save({"w": [p.detach() for p in half], "opt": [o.state_dict() for o in half_opts]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed, resumed_opts = fresh()
    with torch.no_grad():
        for p, w in zip(resumed, saved["w"], strict=True):
            p.copy_(w)
    for o, s in zip(resumed_opts, saved["opt"], strict=True):
        o.load_state_dict(s)
    steps(resumed, resumed_opts, range(5, 10))
    for a, b in zip(params, resumed, strict=True):
        assert torch.equal(a, b)


def test_a_change_of_alpha_keeps_the_weights():
    """Reduce-on-plateau cuts α: the weights stay where they were (a step with a tiny gradient moves them
    by about that little), where TensorFlow's FTRL would shrink them about tenfold."""
    for opt_cls in (FTRL, GroupFTRL):
        torch.manual_seed(0)
        E = torch.nn.Parameter(torch.zeros(4, 3))
        opt = opt_cls([E], lr=0.5, beta=0.1, l1=0.0, l2=0.0)
        for _ in range(3):
            E.grad = torch.randn(4, 3)
            opt.step()
        before = E.detach().clone()
        opt.param_groups[0]["lr"] = 0.05
        E.grad = torch.full((4, 3), 1e-6)
        opt.step()
        torch.testing.assert_close(E.detach(), before, rtol=0, atol=1e-6)


def test_defaults_are_the_configs():
    cfg = FTRLConfig()
    for cls, keys in ((FTRL, ("alpha", "beta", "l1", "l2")), (GroupFTRL, ("alpha", "beta", "group_l1", "group_l2"))):
        sig = inspect.signature(cls).parameters
        assert [sig[k].default for k in ("lr", "beta", "l1", "l2")] == [getattr(cfg, k) for k in keys], cls


def test_zero_rows_counts_rows_of_every_table():
    out = zero_rows([torch.zeros(3, 4), torch.tensor([[0.0, 1.0], [0.0, 0.0]])])
    assert out == {"rows": 5, "zero_rows": 4, "fraction": 0.8, "parameter_fraction": round(14 / 16, 4)}


# ---- the trainer ------------------------------------------------------------------------------------------


def _tiny_data(n_train=3000, n_valid=1000, seed=0):
    """Two fields whose values set the label (sizes 12, 30) and one of pure noise (200 values)."""
    from adactr.data.schema import FieldLayout
    from adactr.data.tensors import SplitArrays

    sizes = (12, 30, 200)
    rng = np.random.default_rng(seed)
    w = [rng.normal(0, 1.5, s) for s in sizes[:2]]

    def split(n):
        cat = np.stack([rng.integers(2, s, n) for s in sizes], 1).astype(np.int32)
        logit = w[0][cat[:, 0]] + w[1][cat[:, 1]]
        label = (rng.random(n) < 1 / (1 + np.exp(-(logit - np.median(logit))))).astype(np.float32)
        return SplitArrays({"cat": cat, "num": np.zeros((n, 0), np.float32), "label": label})

    layout = FieldLayout(names=("a", "b", "noise"), cat_sizes=sizes, n_num=0, seq_sizes=(), seq_pooling=())
    return layout, split(n_train), split(n_valid).to_tensors(torch.device("cpu"))


def test_trainer_fits_with_ftrl_and_group_ftrl():
    """Short fits of DeepFM with train.optimizer=ftrl and train.embedding_optimizer=gftrl: both learn, the
    tables take sparse gradients, rows never looked up (each field's missing and OOV rows) keep their
    initial values, and λ1 is what sets rows to zero: none of the rows seen with λ1 = 0; with 1e-3 (the
    default) on this additive click world every one, and the first-order weights carry the model."""
    from dataclasses import replace

    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model

    layout, train, valid = _tiny_data()
    cfg = TrainConfig(optimizer=Optimizer.FTRL, embedding_optimizer=Optimizer.GFTRL, batch_size=100, epochs=3,
                      seed=1, progress=False, early_stopping=EarlyStopping.LOGLOSS)
    unseen = torch.tensor([0, 1, 12, 13, 42, 43])  # rows 0 and 1 of each field: the data starts at 2
    zero_fraction = []
    for group_l1 in (0.0, 1e-3):
        torch.manual_seed(0)
        model = build_model("deepfm", layout=layout, config=ModelConfig(hidden=(16,)))
        init = model.embedding.table.weight.detach().clone()
        run = replace(cfg, ftrl=FTRLConfig(group_l1=group_l1))
        opts = trainer_mod.build_optimizers(model, run)
        assert [type(o) for o in opts] == [GroupFTRL, FTRL]
        assert all(m.sparse for m in model.modules() if isinstance(m, torch.nn.Embedding))
        fit = trainer_mod.Trainer(config=run, device=torch.device("cpu")).fit(model, train, valid)
        assert fit.best_logloss < 0.65 and fit.history[0]["lr"] == 0.02  # α, the dense group's learning rate
        table = model.embedding.table.weight.detach()  # (12 + 30 + 200, D)
        assert torch.equal(table[unseen], init[unseen])
        seen = torch.ones(len(table), dtype=torch.bool).index_fill_(0, unseen, False)
        zero_fraction.append(float((table[seen] == 0).all(1).float().mean()))
    assert zero_fraction[0] == 0.0 and zero_fraction[1] > 0.5, zero_fraction


def test_configuration_errors_name_the_key():
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model

    layout, _, _ = _tiny_data(10, 10)
    model = build_model("fm", layout=layout, config=ModelConfig())
    with pytest.raises(ConfigError, match="gftrl is for embedding tables only"):
        trainer_mod.build_optimizers(model, TrainConfig(optimizer=Optimizer.GFTRL))
    with pytest.raises(ConfigError, match=r"gftrl has its own L2 \(train.ftrl.group_l2\): set train.embedding_l2=0"):
        trainer_mod.build_optimizers(model, TrainConfig(embedding_optimizer=Optimizer.GFTRL, embedding_l2=0.01))
    with pytest.raises(ConfigError, match=r"ftrl has its own L2 \(train.ftrl.l2\): set train.dense_l2=0"):
        trainer_mod.build_optimizers(model, TrainConfig(optimizer=Optimizer.FTRL, dense_l2=0.01))
    with pytest.raises(ConfigError, match="optimizer_preset=dynint sets train.optimizer=ftrl .* cannot be combined "
                                          "with train.optimizer=sgd"):
        trainer_mod.build_optimizers(model, TrainConfig(optimizer=Optimizer.SGD,
                                                        optimizer_preset=OptimizerPreset.DYNINT))
    graphed = TrainConfig(cuda_graph=True, optimizer_preset=OptimizerPreset.DYNINT)
    with pytest.raises(ConfigError, match=r"supports the adam optimiser only, not ftrl, gftrl "
                                          r"\(train.optimizer_preset=dynint\)"):
        trainer_mod.Trainer(config=graphed, device=torch.device("cpu"))._graph_backend()
    with pytest.raises(ConfigError, match="train.ftrl.alpha .* must be positive"):
        FTRLConfig(alpha=0.0)
    # an embedding L2 is not defaulted onto ftrl / gftrl embeddings (they have their own λ2)
    for kind in (Optimizer.FTRL, Optimizer.GFTRL):
        assert resolve(RunConfig(train=TrainConfig(embedding_optimizer=kind)), "deepfm").train.embedding_l2 == 0.0
    assert resolve(RunConfig(train=TrainConfig(optimizer=Optimizer.FTRL)), "deepfm").train.embedding_l2 == 0.0


def test_dynint_preset_from_the_cli_is_recorded_resolved_and_resumes(tmp_path, world_data, kill_after_first_epoch):
    """`adactr train --set train.optimizer_preset=dynint`: config.json holds the optimisers it set,
    metrics.json the zero rows; a run killed after its first epoch resumes to the same metrics."""
    from adactr.cli import main

    args = ["--model", "deepfm", "--set", "model.hidden=[32,16]", "--set", "train.epochs=3", "--set",
            "train.batch_size=500", "--set", "train.optimizer_preset=dynint", "--set", "train.ftrl.group_l1=3e-3",
            "--quiet"]
    full = tmp_path / "full"
    assert main(["train", "--data", str(world_data), "--out", str(full), *args]) == 0
    train = json.loads((full / "config.json").read_text())["config"]["train"]
    assert (train["optimizer"], train["embedding_optimizer"], train["optimizer_preset"]) == ("ftrl", "gftrl", "dynint")
    assert train["embedding_l2"] == 0.0 and train["ftrl"]["group_l1"] == 3e-3
    m = json.loads((full / "metrics.json").read_text())
    assert m["test"]["auc"] > 0.55 and 0 < m["embedding_zero_rows"]["zero_rows"] < m["embedding_zero_rows"]["rows"]

    restore = kill_after_first_epoch()
    killed = tmp_path / "killed"
    assert main(["train", "--data", str(world_data), "--out", str(killed), *args]) == 130
    restore()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *args, "--resume"]) == 0
    a, b = (json.loads((r / "metrics.json").read_text()) for r in (full, killed))
    assert (a["test"], a["embedding_zero_rows"]) == (b["test"], b["embedding_zero_rows"])
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]


def test_benchmark_prints_adam_beside_the_preset(world_data, capsys):
    """benchmarks/ftrl.py on the click world at a tiny size: one row per optimiser choice."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "ftrl.py"
    spec = importlib.util.spec_from_file_location("ftrl_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny = ["train.epochs=1", "model.hidden=[8]", "model.embedding_dim=4", "train.batch_size=512", "train.threads=1"]
    assert bench.main(["--data", str(world_data), "--model", "deepfm", "--group-l1", "0",
                       *[x for s in tiny for x in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    rows = [line.split(" | ")[0] for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert rows == ["| optimisers", "| adam", "| dynint", "| dynint λ1=0"]
    assert bench.main(["--data", str(world_data), "--model", "deepfm", "--step-timing", "--rounds", "1",
                       *[x for s in tiny for x in ("--set", s)]]) == 0
    out = capsys.readouterr().out
    assert "| 1 | adam |" in out and "| 1 | dynint |" in out
