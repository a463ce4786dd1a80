"""Trainer: reproducible from a seed, resume after an interruption ends with identical metrics."""

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
import torch

from adactr.cli import main
from adactr.train import trainer as trainer_mod

ARGS = ["--model", "deepfm", "--set", "model.hidden=[32,16]", "--set", "model.dropout=0.1",
        "--set", "train.epochs=3", "--set", "train.patience=5", "--set", "train.batch_size=500", "--quiet"]


def metrics(run):
    m = json.loads((run / "metrics.json").read_text())
    return m["test"]["auc"], m["test"]["logloss"], m["valid"]["auc"], [h["train_loss"] for h in m["history"]]


def test_same_seed_same_metrics(tmp_path, world_data):
    for name in ("a", "b"):
        assert main(["train", "--data", str(world_data), "--out", str(tmp_path / name), *ARGS]) == 0
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "c"), *ARGS, "--seed", "7"]) == 0
    assert metrics(tmp_path / "c") != metrics(tmp_path / "a")


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, world_data, kill_after_first_epoch):
    full = tmp_path / "full"
    assert main(["train", "--data", str(world_data), "--out", str(full), *ARGS]) == 0

    killed = tmp_path / "killed"
    restore = kill_after_first_epoch()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS]) == 130
    assert (killed / "last.pt").exists() and not (killed / "metrics.json").exists()
    restore()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS, "--resume"]) == 0
    assert metrics(killed) == metrics(full)


def test_resume_keeps_the_interrupted_runs_streaming_choice(tmp_path, world_data, monkeypatch,
                                                           kill_after_first_epoch):
    """Streamed chunks and one resident permutation order the batches differently: a run interrupted while
    streaming (too little memory free) resumes streaming even when the data would fit now."""
    monkeypatch.setattr(trainer_mod, "resident_budget", lambda device: 1000)
    full = tmp_path / "full"
    chunks = ["--set", "train.chunk_rows=1000"]
    assert main(["train", "--data", str(world_data), "--out", str(full), *ARGS, *chunks]) == 0
    killed = tmp_path / "killed"
    restore = kill_after_first_epoch()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS, *chunks]) == 130
    restore()
    monkeypatch.setattr(trainer_mod, "resident_budget", lambda device: 2**40)  # plenty of memory now
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS, *chunks, "--resume"]) == 0
    assert metrics(killed) == metrics(full)
    resident = tmp_path / "resident"
    assert main(["train", "--data", str(world_data), "--out", str(resident), *ARGS, *chunks]) == 0
    assert metrics(resident) != metrics(full)  # the choice matters, so keeping it is what made them equal


def test_resume_needs_a_run(tmp_path, world_data, capsys):
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "none"), *ARGS, "--resume"]) != 0
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize("emb_opt", ["adam", "sparse_adam", "adagrad"])
def test_embedding_optimiser_groups(tmp_path, world_data, emb_opt):
    extra = ["--set", f"train.embedding_optimizer={emb_opt}"]
    if emb_opt == "adam":
        extra += ["--set", "train.embedding_l2=0.01"]
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / emb_opt), *ARGS, *extra]) == 0
    assert json.loads((tmp_path / emb_opt / "metrics.json").read_text())["test"]["auc"] > 0.5


def test_streamed_chunks_when_data_exceeds_the_device_budget(tmp_path, world_data):
    """Training data bigger than train.max_resident_bytes streams memory-mapped chunks and still learns."""
    extra = ["--set", "train.max_resident_bytes=1", "--set", "train.chunk_rows=1000"]
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "s"), *ARGS, *extra]) == 0
    m = json.loads((tmp_path / "s" / "metrics.json").read_text())
    assert m["test"]["auc"] > 0.55 and len(m["history"]) == 3


def test_automatic_resident_budget(tmp_path, world_data, monkeypatch):
    """train.max_resident_bytes=0 (the default) asks the machine: half of what is available."""
    total_kb = int(dict(line.split(":", 1) for line in open("/proc/meminfo"))["MemTotal"].split()[0])
    assert 0 < trainer_mod.resident_budget(torch.device("cpu")) <= total_kb * 1024 // 2
    chunked = []
    original = trainer_mod.SplitArrays.chunks

    def counting(self, *a, **k):
        chunked.append(len(self))
        return original(self, *a, **k)

    monkeypatch.setattr(trainer_mod.SplitArrays, "chunks", counting)
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "a"), *ARGS]) == 0
    assert chunked == []  # the click world fits
    monkeypatch.setattr(trainer_mod, "resident_budget", lambda device: 1000)
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "b"), *ARGS]) == 0
    assert len(chunked) == 3  # one streamed pass per epoch
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "c"), *ARGS,
                 "--set", f"train.max_resident_bytes={2**30}"]) == 0
    assert len(chunked) == 3  # an explicit budget wins over the automatic one


def test_config_file_and_set_override_it(tmp_path, world_data):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  hidden: [16]\ntrain:\n  epochs: 1\n  batch_size: 700\n")
    run = tmp_path / "c"
    assert main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(run), "--config", str(cfg),
                 "--set", "train.batch_size=900", "--quiet"]) == 0
    saved = json.loads((run / "config.json").read_text())["config"]
    assert saved["model"]["hidden"] == [16] and saved["train"]["epochs"] == 1
    assert saved["train"]["batch_size"] == 900  # --set wins over the file


def _glibc() -> bool:
    return sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


_SCOPE_SCRIPT = """
import os

import torch
from adactr.train import cpu_memory

def rss_mb():  # resident pages x the page size (4 KiB on x86-64, often 16 or 64 KiB on arm64)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

with cpu_memory.freed_memory_kept() as kept:
    assert kept, "glibc should accept mallopt"
    with cpu_memory.freed_memory_kept() as inner:  # nested: shares the outer scope
        assert inner
    before = rss_mb()
    x = torch.ones(50 * 2**20)  # 200 MB, far above glibc's mmap threshold
    assert rss_mb() - before > 150
    del x
    assert rss_mb() - before > 150, "a freed buffer stays in the process inside the scope"
assert rss_mb() - before < 50, "leaving the scope hands the kept memory back"
assert cpu_memory._depth == 0
x = torch.ones(50 * 2**20)
del x
assert rss_mb() - before < 50, "outside the scope glibc's defaults are back (mmap, returned on free)"
"""


@pytest.mark.skipif(not _glibc(), reason="the allocator setting is glibc's")
def test_freed_memory_is_kept_inside_the_scope_and_returned_on_leaving_it():
    """In a fresh process: what the allocator does depends on what the process allocated before (a heap
    left with free blocks by earlier scopes serves later allocations from them), so it is checked in one
    whose history is only this."""
    from adactr.train import cpu_memory

    env = {k: v for k, v in os.environ.items() if k not in cpu_memory._ENV}  # variables that disable the scope
    p = subprocess.run([sys.executable, "-c", _SCOPE_SCRIPT], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-2000:]


def test_freed_memory_scope_leaves_the_allocator_alone_when_disabled_or_set_from_the_shell(monkeypatch):
    from adactr.train import cpu_memory

    with cpu_memory.freed_memory_kept(False) as kept:
        assert not kept
    monkeypatch.setenv("MALLOC_MMAP_MAX_", "0")
    with cpu_memory.freed_memory_kept() as kept:
        assert not kept


def test_keep_freed_memory_can_be_switched_off(tmp_path, world_data):
    run = tmp_path / "off"
    assert main(["train", "--data", str(world_data), "--out", str(run), *ARGS,
                 "--set", "train.keep_freed_memory=false"]) == 0
    assert json.loads((run / "config.json").read_text())["config"]["train"]["keep_freed_memory"] is False


def test_predict_logits_inside_the_allocator_scope_gives_the_same_logits() -> None:
    """The CPU allocator scope around prediction changes where buffers come from, never the numbers."""
    from adactr.data.schema import FieldLayout
    from adactr.data.tensors import DeviceSplit
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model

    torch.manual_seed(0)
    layout = FieldLayout(names=("a", "b"), cat_sizes=(5, 7), n_num=0, seq_sizes=(), seq_pooling=())
    model = build_model("deepfm", layout=layout, config=ModelConfig())
    n = 300
    split = DeviceSplit({"cat": torch.stack([torch.randint(0, 5, (n,)), torch.randint(0, 7, (n,))], 1).int(),
                         "num": torch.zeros(n, 0), "label": torch.zeros(n)})
    kept = trainer_mod.predict_logits(model, split, 128, keep_freed_memory=True)
    plain = trainer_mod.predict_logits(model, split, 128, keep_freed_memory=False)
    assert kept.shape == (n,)
    assert torch.equal(kept, plain)


def test_training_data_is_read_into_memory_and_evaluation_data_stays_mapped(world_data):
    """Training shuffles its rows, so its split is read into memory in one sequential pass; a memory map
    would fault pages in at random. Evaluation reads in order and keeps the map."""
    from adactr.data.tensors import SplitArrays

    split = SplitArrays.load(world_data / "train")
    mapped = split.arrays["cat"]
    start, end = mapped.ctypes.data, mapped.ctypes.data + mapped.nbytes
    for load, inside in ((False, True), (True, False)):
        ptr = split.to_tensors(torch.device("cpu"), load=load).t["cat"].data_ptr()
        assert (start <= ptr < end) is inside
    loaded = split.to_tensors(torch.device("cpu"), load=True)
    assert torch.equal(loaded.t["cat"], torch.from_numpy(np.asarray(mapped)))


# ---- small data: early stopping, minimum steps, evaluation period, per-model learning rate -----------


def _synthetic(n_train: int, n_valid: int, *, positive_rate: float = 0.5, seed: int = 0):
    """Three categorical fields; the label follows a logistic model of the first two (the third is noise).
    Returns (layout, train SplitArrays, valid DeviceSplit)."""
    from adactr.data.schema import FieldLayout
    from adactr.data.tensors import SplitArrays

    sizes = (12, 30, 200)
    rng = np.random.default_rng(seed)
    w = [rng.normal(0, 1.5, s) for s in sizes[:2]]

    def split(n: int):
        cat = np.stack([rng.integers(2, s, n) for s in sizes], 1).astype(np.int32)
        logit = w[0][cat[:, 0]] + w[1][cat[:, 1]]
        logit += np.quantile(logit, 1 - positive_rate) * -1  # about positive_rate positives
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        return SplitArrays({"cat": cat, "num": np.zeros((n, 0), np.float32), "label": label})

    layout = FieldLayout(names=("a", "b", "noise"), cat_sizes=sizes, n_num=0, seq_sizes=(), seq_pooling=())
    return layout, split(n_train), split(n_valid).to_tensors(torch.device("cpu"))


def _fit(model_name: str, cfg, data, *, run_dir=None, resume=False, model_seed=0):
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model

    layout, train, valid = data
    torch.manual_seed(model_seed)
    model = build_model(model_name, layout=layout, config=ModelConfig(hidden=(16,), dropout=0.1))
    fit = trainer_mod.Trainer(config=cfg, device=torch.device("cpu"), run_dir=run_dir).fit(
        model, train, valid, resume=resume)
    return fit, model


def _scripted(monkeypatch, values: list[float], metric: str = "logloss") -> list[dict]:
    """Validation that returns ``values`` one evaluation after another (then the last one again); returns
    the list it fills with the model's weights at each evaluation."""
    calls = iter(values)
    last = [values[-1]]
    weights: list[dict] = []

    def fake(model, split, **kw):
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
        last[0] = next(calls, last[0])
        return {"auc": last[0] if metric == "auc" else 0.5, "logloss": last[0] if metric == "logloss" else 0.5}

    monkeypatch.setattr(trainer_mod, "evaluate_split", fake)
    return weights


def _cfg(**kw):
    from adactr.train.config import TrainConfig

    return TrainConfig(**{"batch_size": 50, "seed": 1, "progress": False, **kw})


def test_auc_standard_error_is_the_spread_of_auc_across_samples():
    """Hanley-McNeil against a simulation: the AUC of random scores on 40 positives and 1,960 negatives,
    drawn 3,000 times, spreads with the standard deviation the formula gives (0.0461)."""
    rng = np.random.default_rng(0)
    n_pos, n_neg = 40, 1960
    ranks = np.argsort(np.argsort(rng.random((3000, n_pos + n_neg)), axis=1), axis=1) + 1  # no ties
    aucs = (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    se = trainer_mod.auc_standard_error(n_pos, n_neg)
    assert se == pytest.approx(0.0461, abs=5e-5)
    assert aucs.std() == pytest.approx(se, rel=0.05)
    # by hand at A = 0.5: Q1 = Q2 = 1/3, SE^2 = (1/4 + (n1 - 1)/12 + (n2 - 1)/12) / (n1 n2)
    assert trainer_mod.auc_standard_error(2, 2) == pytest.approx(((0.25 + 1 / 12 + 1 / 12) / 4) ** 0.5)
    assert trainer_mod.auc_standard_error(0, 10) == float("inf")


def test_small_validation_split_warns_and_steers_by_log_loss():
    from adactr.train.config import EarlyStopping

    small = torch.cat([torch.ones(40), torch.zeros(1960)])
    with pytest.warns(RuntimeWarning, match=r"40 positives and 1960 negatives: its AUC is only known to about "
                                            r"±0\.046 .*validation log loss"):
        m = trainer_mod.choose_monitor(_cfg(), small)
    assert m.metric == "logloss" and m.valid_auc_se == pytest.approx(0.0461, abs=5e-5)
    large = torch.cat([torch.ones(2000), torch.zeros(2000)])  # SE 0.0091
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer_mod.choose_monitor(_cfg(), large).metric == "auc"
        assert trainer_mod.choose_monitor(_cfg(early_stopping=EarlyStopping.AUC), small).metric == "auc"
        assert trainer_mod.choose_monitor(_cfg(early_stopping=EarlyStopping.LOGLOSS), large).metric == "logloss"
        assert trainer_mod.choose_monitor(_cfg(max_auc_se=0.05), small).metric == "auc"


def test_nothing_is_decided_before_min_steps(monkeypatch):
    """4 steps an epoch (200 rows, batch 50), validation log loss scripted: better twice, then flat. With
    patience 2 the learning rate drops at the first flat evaluation at or after min_steps and the run stops
    at the second; the weights kept are the best evaluation's, even though it came before min_steps."""
    from adactr.train.config import EarlyStopping

    data = _synthetic(200, 100)
    values = [0.60, 0.50, 0.55]
    for min_steps, decay_epoch in ((0, 3), (12, 3), (13, 4), (20, 5)):
        weights = _scripted(monkeypatch, values)
        fit, model = _fit("lr", _cfg(min_steps=min_steps, early_stopping=EarlyStopping.LOGLOSS), data)
        kept = model.state_dict()
        assert all(torch.equal(kept[k], weights[1][k]) for k in kept)  # the second evaluation's weights
        assert not all(torch.equal(kept[k], weights[-1][k]) for k in kept)
        assert [h["step"] for h in fit.history] == [4 * (e + 1) for e in range(decay_epoch + 1)]
        lrs = [h["lr"] for h in fit.history]  # the rate each evaluation period trained with
        assert lrs == [0.01] * decay_epoch + [pytest.approx(0.001)], min_steps
        assert fit.stopped_early and fit.epochs == decay_epoch + 1
        assert (fit.best_epoch, fit.best_step, fit.best_logloss) == (2, 8, 0.50)


def test_auc_monitor_keeps_the_highest(monkeypatch):
    from adactr.train.config import EarlyStopping

    _scripted(monkeypatch, [0.6, 0.7, 0.65, 0.69], metric="auc")
    fit, _ = _fit("lr", _cfg(min_steps=0, early_stopping=EarlyStopping.AUC), _synthetic(200, 100))
    assert (fit.best_epoch, fit.best_auc, fit.epochs) == (2, 0.7, 4)
    assert fit.early_stopping["metric"] == "auc"


def test_epochs_cap_reaches_cap_steps_on_small_data(monkeypatch):
    """train.epochs unset: 30 epochs or cap_steps steps, whichever is more; set: exactly that many."""
    data = _synthetic(200, 100)  # 4 steps an epoch
    _scripted(monkeypatch, [1.0 - i / 1000 for i in range(1000)])  # always better: runs to the cap
    fit, _ = _fit("lr", _cfg(), data)
    assert (fit.epochs, fit.steps, fit.stopped_early) == (375, 1500, False)  # 1500 / 4
    assert fit.early_stopping["max_epochs"] == 375 and fit.early_stopping["steps_per_epoch"] == 4
    fit, _ = _fit("lr", _cfg(cap_steps=40), data)
    assert fit.epochs == 30
    fit, _ = _fit("lr", _cfg(epochs=3), data)
    assert (fit.epochs, fit.steps) == (3, 12)


def test_eval_every_steps_evaluates_inside_and_across_epochs(monkeypatch):
    _scripted(monkeypatch, [1.0 - i / 100 for i in range(100)])
    fit, _ = _fit("lr", _cfg(eval_every_steps=6, epochs=4), _synthetic(200, 100))  # 4 steps an epoch
    assert [h["step"] for h in fit.history] == [6, 12, 16]  # and the end of the last epoch
    assert [h["epoch"] for h in fit.history] == [1.5, 3, 4]
    fit, _ = _fit("lr", _cfg(eval_every_steps=2, epochs=2), _synthetic(200, 100))
    assert [h["epoch"] for h in fit.history] == [0.5, 1, 1.5, 2]


def test_patience_counts_evaluations_inside_an_epoch(monkeypatch):
    from adactr.train.config import EarlyStopping

    _scripted(monkeypatch, [0.5, 0.6, 0.6])
    fit, _ = _fit("lr", _cfg(eval_every_steps=1, min_steps=0, early_stopping=EarlyStopping.LOGLOSS),
                  _synthetic(200, 100))
    assert fit.stopped_early and fit.steps == 3 and fit.history[-1]["epoch"] == 0.75


def test_each_model_trains_with_its_own_defaults(tmp_path):
    """train.lr and train.embedding_l2 unset: the registry's values for the model; set: the user's."""
    from adactr.models.config import ModelConfig
    from adactr.models.registry import build_model
    from adactr.train.config import Optimizer, RunConfig, resolve

    data = _synthetic(200, 100)
    for name, lr, l2 in (("lr", 0.01, 0.0), ("fm", 0.01, 1e-4), ("deepfm", 0.001, 0.001), ("dnn", 0.001, 0.001)):
        fit, _ = _fit(name, _cfg(epochs=1), data)
        assert fit.history[0]["lr"] == lr and (fit.early_stopping["lr"], fit.early_stopping["embedding_l2"]) \
            == (lr, l2), name
        train = resolve(RunConfig(), name).train
        assert (train.lr, train.embedding_l2) == (lr, l2)
        opts = trainer_mod.build_optimizers(build_model(name, layout=data[0], config=ModelConfig()), _cfg())
        assert [g["weight_decay"] for g in opts[0].param_groups] == [l2]  # the embedding group
        assert [g["lr"] for o in opts for g in o.param_groups] == [lr] * len(opts)
    fit, _ = _fit("lr", _cfg(epochs=1, lr=0.003, embedding_l2=0.5), data)
    assert fit.history[0]["lr"] == 0.003 and fit.early_stopping["embedding_l2"] == 0.5
    from adactr.train.config import DomainOptimizer

    explicit = RunConfig(model=ModelConfig(embedding_init_std=0.01),
                         train=_cfg(lr=0.003, embedding_l2=0.0, domain_optimizer=DomainOptimizer.LAZY_ADAM))
    assert resolve(explicit, "deepfm") == explicit
    # the embedding initialisation: 1e-4 (FuxiCTR) but 1/sqrt(D) for the PIN models (official xDeepInt)
    assert resolve(RunConfig(), "deepfm").model.embedding_init_std == 1e-4
    assert resolve(RunConfig(model=ModelConfig(embedding_dim=16)), "xdeepint").model.embedding_init_std == 0.25
    # sparse_adam embeddings cannot take an L2: the default gives them none (an explicit one is an error)
    sparse = resolve(RunConfig(train=_cfg(embedding_optimizer=Optimizer.SPARSE_ADAM)), "deepfm").train
    assert sparse.embedding_l2 == 0.0


def test_resume_inside_an_epoch_matches_uninterrupted(tmp_path, kill_after_first_epoch):
    """Evaluations (and checkpoints) every 3 steps of 4-step epochs: a run killed after its first one,
    mid-epoch, resumes to the same weights and history. DeepFM with dropout: the RNG state matters."""
    data = _synthetic(200, 300, seed=2)
    cfg = _cfg(eval_every_steps=3, epochs=3, lr=0.01)

    def untimed(fit):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in fit.history]

    (tmp_path / "full").mkdir()
    full, full_model = _fit("deepfm", cfg, data, run_dir=tmp_path / "full")
    disarm = kill_after_first_epoch(when=None)
    (tmp_path / "killed").mkdir()
    with pytest.raises(KeyboardInterrupt):
        _fit("deepfm", cfg, data, run_dir=tmp_path / "killed")
    disarm()
    st = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (st["epoch"], st["step_in_epoch"], st["steps"]) == (0, 3, 3)  # killed mid-epoch
    old = {k: v for k, v in st.items() if k not in ("monitor", "steps")}  # a checkpoint of the former trainer
    torch.save(old, tmp_path / "old.pt")
    (tmp_path / "older").mkdir()
    (tmp_path / "old.pt").rename(tmp_path / "older" / "last.pt")
    from adactr.errors import TrainingError

    with pytest.raises(TrainingError, match="written by an older adactr"):
        _fit("deepfm", cfg, data, run_dir=tmp_path / "older", resume=True)
    resumed, resumed_model = _fit("deepfm", cfg, data, run_dir=tmp_path / "killed", resume=True, model_seed=9)
    assert untimed(resumed) == untimed(full) and len(full.history) == 4  # steps 3, 6, 9, 12
    assert (resumed.steps, resumed.best_step, resumed.train_samples) == (full.steps, full.best_step, 600)
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k


def test_large_data_trains_as_before(world_data):
    """With 50 or more steps an epoch and enough validation positives, the small-data rules are no-ops:
    the default run equals one with them switched off (AUC steering, no minimum steps, a 30-epoch cap),
    decay and early stop included."""
    from adactr.train.config import EarlyStopping

    data = _synthetic(5000, 5000, seed=3)  # batch 100: 50 steps an epoch; 5000 rows at ~50 %: SE 0.008
    legacy = _cfg(batch_size=100, lr=0.05, min_steps=0, early_stopping=EarlyStopping.AUC, epochs=30)
    new = _cfg(batch_size=100, lr=0.05)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no warning
        a, _ = _fit("fm", legacy, data)
        b, _ = _fit("fm", new, data)
    assert b.early_stopping["metric"] == "auc" and b.early_stopping["max_epochs"] == 30
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in a.history] == \
        [{k: v for k, v in h.items() if k != "seconds"} for h in b.history]
    assert b.stopped_early and len({h["lr"] for h in b.history}) > 1, "the test needs a decay and a stop"


def test_flush_denormal_is_scoped_to_fit(monkeypatch):
    """Trainer.fit flushes denormals while it trains and gives the caller's setting back, also when it
    fails."""
    from adactr.errors import TrainingError

    seen = []
    original = trainer_mod.evaluate_split

    def spy(*a, **k):
        seen.append(trainer_mod._flush_denormal_on())
        return original(*a, **k)

    monkeypatch.setattr(trainer_mod, "evaluate_split", spy)
    data = _synthetic(200, 100)
    try:
        for before in (False, True):
            torch.set_flush_denormal(before)
            assert trainer_mod._flush_denormal_on() is before
            _fit("lr", _cfg(epochs=1), data)
            assert seen[-1] is True and trainer_mod._flush_denormal_on() is before
            with pytest.raises(TrainingError, match="loss became"):
                _fit("dnn", _cfg(epochs=1, lr=1e30), data)
            assert trainer_mod._flush_denormal_on() is before
    finally:
        torch.set_flush_denormal(False)


def test_multi_domain_resume_with_the_lazy_domain_optimiser(tmp_path, world_data, kill_after_first_epoch, capsys):
    """STAR trains its per-domain parameters with a third optimiser (lazy Adam); its state is checkpointed
    and resumed exactly, and resuming with another optimiser count is a one-line error."""
    args = ["--model", "star", "--set", "model.hidden=[16]", "--set", "train.epochs=2", "--set",
            "train.patience=5", "--set", "train.batch_size=500", "--quiet"]
    full = tmp_path / "full"
    assert main(["train", "--data", str(world_data), "--out", str(full), *args]) == 0
    killed = tmp_path / "killed"
    restore = kill_after_first_epoch()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *args]) == 130
    restore()
    st = torch.load(killed / "last.pt", weights_only=True)
    assert len(st["optimizers"]) == 3 and st["optimizers"][2]["state"]  # embeddings, dense, per-domain
    saved = json.loads((killed / "config.json").read_text())
    assert saved["config"]["train"]["domain_optimizer"] == "lazy_adam"  # the resolved setting is recorded
    saved["config"]["train"]["domain_optimizer"] = "dense"  # resumed with two optimisers: refused
    (killed / "config.json").write_text(json.dumps(saved))
    capsys.readouterr()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *args, "--resume"]) != 0
    err = capsys.readouterr().err.strip()
    assert "domain_optimizer" in err and len(err.splitlines()) == 1, err
    saved["config"]["train"]["domain_optimizer"] = "lazy_adam"
    (killed / "config.json").write_text(json.dumps(saved))
    assert main(["train", "--data", str(world_data), "--out", str(killed), *args, "--resume"]) == 0
    assert metrics(killed) == metrics(full)
