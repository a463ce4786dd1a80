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


def _die_after_first_epoch(monkeypatch):
    """Make training stop as if killed right after epoch 1 was checkpointed; returns the undo."""
    original = trainer_mod.Trainer._save

    def save_then_die(self, model, opts, best, result, epoch, bad, stop):
        original(self, model, opts, best, result, epoch, bad, stop)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(trainer_mod.Trainer, "_save", save_then_die)
    return lambda: monkeypatch.setattr(trainer_mod.Trainer, "_save", original)


def test_same_seed_same_metrics(tmp_path, world_data):
    for name in ("a", "b"):
        assert main(["train", "--data", str(world_data), "--out", str(tmp_path / name), *ARGS]) == 0
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert main(["train", "--data", str(world_data), "--out", str(tmp_path / "c"), *ARGS, "--seed", "7"]) == 0
    assert metrics(tmp_path / "c") != metrics(tmp_path / "a")


def test_resume_after_interrupt_matches_uninterrupted(tmp_path, world_data, monkeypatch):
    full = tmp_path / "full"
    assert main(["train", "--data", str(world_data), "--out", str(full), *ARGS]) == 0

    killed = tmp_path / "killed"
    restore = _die_after_first_epoch(monkeypatch)
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS]) == 130
    assert (killed / "last.pt").exists() and not (killed / "metrics.json").exists()
    restore()
    assert main(["train", "--data", str(world_data), "--out", str(killed), *ARGS, "--resume"]) == 0
    assert metrics(killed) == metrics(full)


def test_resume_keeps_the_interrupted_runs_streaming_choice(tmp_path, world_data, monkeypatch):
    """Streamed chunks and one resident permutation order the batches differently: a run interrupted while
    streaming (too little memory free) resumes streaming even when the data would fit now."""
    monkeypatch.setattr(trainer_mod, "resident_budget", lambda device: 1000)
    full = tmp_path / "full"
    chunks = ["--set", "train.chunk_rows=1000"]
    assert main(["train", "--data", str(world_data), "--out", str(full), *ARGS, *chunks]) == 0
    killed = tmp_path / "killed"
    restore = _die_after_first_epoch(monkeypatch)
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
import torch
from adactr.train import cpu_memory

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

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
