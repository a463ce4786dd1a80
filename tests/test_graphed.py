"""train.cuda_graph: the capture schedule (adactr/train/graphed.py) checked on the CPU.

The CUDA mechanism needs a GPU; its plumbing does not. ``EagerReplay`` follows the same schedule as
CUDA graphs (warm-up steps, capture at a full batch, replays, eager partial batches, re-capture after a
learning-rate change), so training through it must be bit-identical to the plain eager loop.
"""

import contextlib
import warnings
from dataclasses import replace

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from adactr.data.schema import FieldLayout, Pooling, Schema
from adactr.data.tensors import Batch, SplitArrays
from adactr.errors import ConfigError
from adactr.models.config import ModelConfig, TowerLayer
from adactr.models.registry import MODELS, build_model
from adactr.nn.apg import APGConfig, APGVersion, ConditionMode
from adactr.train.config import EarlyStopping, Optimizer, TrainConfig
from adactr.train.graphed import EagerReplay, GraphedStep
from adactr.train.trainer import Trainer, training_loss


def _fit(world, cfg: TrainConfig, backend=None):
    schema = Schema.load(world / "schema.json")
    torch.manual_seed(0)
    model = build_model("deepfm", layout=schema.layout(), config=ModelConfig(hidden=(32, 16), dropout=0.1))
    train = SplitArrays.load(world / "train")
    valid = SplitArrays.load(world / "valid").to_tensors(torch.device("cpu"))
    trainer = Trainer(config=cfg, device=torch.device("cpu"), capture_backend=backend)
    fit = trainer.fit(model, train, valid)
    return fit, model.state_dict()


def test_capture_schedule_trains_exactly_like_the_eager_loop(world_data):
    # 3 epochs, batch 512: each epoch has full batches and a partial last one; lr_decay 0.5 with
    # patience 5 makes any epoch without a better validation AUC change the learning rate (a re-capture);
    # min_steps=0 lets the ~30 steps decide (the default waits 100), and the AUC is monitored even though
    # 600 validation rows would make the automatic choice log loss (which improves every epoch here)
    cfg = TrainConfig(epochs=3, batch_size=512, patience=5, lr_decay=0.5, seed=3, progress=False, min_steps=0,
                      early_stopping=EarlyStopping.AUC)
    eager_fit, eager_w = _fit(world_data, cfg)
    backend = EagerReplay()
    graph_fit, graph_w = _fit(world_data, TrainConfig(**{**cfg.__dict__, "cuda_graph": True}), backend)
    def untimed(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert untimed(graph_fit.history) == untimed(eager_fit.history)
    assert eager_w.keys() == graph_w.keys()
    for k in eager_w:
        assert torch.equal(eager_w[k], graph_w[k]), k
    stats = graph_fit.cuda_graph
    rows = len(SplitArrays.load(world_data / "train"))
    full, partial = divmod(rows, 512)
    assert partial, "the test needs a partial last batch"
    assert stats["eager_steps"] == 3 + 3 * 1  # warm-up, then each epoch's partial batch
    assert stats["replays"] == 3 * full - 3
    lr_changes = sum(a["lr"] != b["lr"] for a, b in zip(eager_fit.history, eager_fit.history[1:], strict=False))
    assert lr_changes >= 1, "the test needs a learning-rate change"
    assert stats["captures"] == backend.captures == 1 + lr_changes
    assert stats["failed"] is None
    assert eager_fit.cuda_graph is None


def _batch(n: int, value: float) -> Batch:
    return Batch(cat=torch.full((n, 2), int(value), dtype=torch.int32), num=torch.full((n, 1), value),
                 seq=(torch.zeros(n, 3, dtype=torch.int64),), label=torch.full((n,), value))


def test_replays_read_each_batch_from_the_static_buffers():
    seen, rates = [], [0.1]

    def step(b: Batch) -> torch.Tensor:
        seen.append((b.size, float(b.label[0]), float(b.num[0, 0]), int(b.cat[0, 0])))
        return b.label.sum()

    backend = EagerReplay()
    g = GraphedStep(step, backend=backend, release_grads=lambda: None, learning_rates=lambda: tuple(rates),
                    warmup=2)
    out = [float(g(_batch(4, v))) for v in (1, 2, 3, 4)]
    out.append(float(g(_batch(3, 5))))  # a partial batch: eager
    rates[0] = 0.01  # reduce-on-plateau: the next full batch captures again
    out += [float(g(_batch(4, v))) for v in (6, 7)]
    assert out == [4, 8, 12, 16, 15, 24, 28]
    assert [s[1] for s in seen] == [1, 2, 3, 4, 5, 6, 7]  # each batch's own values, once each
    assert [s[1] == s[2] == s[3] for s in seen] == [True] * 7
    assert (g.eager_steps, g.replays, backend.captures) == (3, 4, 2)


def test_failed_capture_warns_once_and_trains_on_eagerly():
    class Refuses(EagerReplay):
        def capture(self, fn):
            raise RuntimeError("operation not permitted when stream is capturing\nmore detail")

    calls = []
    g = GraphedStep(lambda b: calls.append(b.size) or b.label.sum(), backend=Refuses(),
                    release_grads=lambda: None, learning_rates=lambda: (0.1,), warmup=1)
    with pytest.warns(RuntimeWarning, match="capture failed.*not permitted when stream is capturing"):
        assert float(g(_batch(2, 1))) == 2 and float(g(_batch(2, 3))) == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert float(g(_batch(2, 4))) == 8
    assert g.failed == "operation not permitted when stream is capturing"
    assert (g.eager_steps, g.replays, len(calls)) == (3, 0, 3)


def test_cuda_graph_config_checks(world_data):
    with pytest.raises(ConfigError, match="train.cuda_graph and train.compile"):
        Trainer(config=TrainConfig(cuda_graph=True, compile=True), device=torch.device("cpu"))._graph_backend()
    with pytest.raises(ConfigError, match="adam optimiser only, not adagrad, adam"):
        Trainer(config=TrainConfig(cuda_graph=True, embedding_optimizer=Optimizer.ADAGRAD),
                device=torch.device("cpu"))._graph_backend()
    with pytest.warns(RuntimeWarning, match="needs a CUDA device: training eagerly on cpu"):
        fit, _ = _fit(world_data, TrainConfig(epochs=1, batch_size=512, cuda_graph=True, progress=False))
    assert fit.cuda_graph is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graphs_train_like_the_eager_loop_on_a_gpu(world_data):
    """The real mechanism: same schedule, same kernels, so the same model up to the GPU's atomics."""
    cuda = torch.device("cuda")
    cfg = TrainConfig(epochs=3, batch_size=512, patience=5, lr_decay=0.5, seed=3, progress=False)

    def fit(graphs: bool):
        schema = Schema.load(world_data / "schema.json")
        torch.manual_seed(0)
        model = build_model("deepfm", layout=schema.layout(), config=ModelConfig(hidden=(32, 16)))
        valid = SplitArrays.load(world_data / "valid").to_tensors(cuda)
        c = TrainConfig(**{**cfg.__dict__, "cuda_graph": graphs})
        result = Trainer(config=c, device=cuda).fit(model, SplitArrays.load(world_data / "train"), valid)
        return result, {k: v.cpu() for k, v in model.state_dict().items()}

    eager_fit, eager_w = fit(False)
    graph_fit, graph_w = fit(True)
    assert graph_fit.cuda_graph["failed"] is None
    assert graph_fit.cuda_graph["replays"] > 0 and graph_fit.cuda_graph["captures"] >= 1
    for k in eager_w:
        torch.testing.assert_close(graph_w[k], eager_w[k], rtol=1e-4, atol=1e-5, msg=k)
    for a, b in zip(eager_fit.history, graph_fit.history, strict=True):
        assert a["valid_auc"] == pytest.approx(b["valid_auc"], abs=1e-4)


# Operators that wait for the device (a value or a data-dependent shape read back by the host): any of
# these in a training step makes CUDA-graph capture fail ("operation not permitted when stream is capturing").
_SYNCING = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique_dim",
            "_unique", "_unique2", "unique_consecutive", "bincount", "repeat_interleave", "histc"}


class _SyncRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in _SYNCING:
            self.found.add(name)
        # a boolean-mask index has a data-dependent shape (on CUDA: a nonzero, read back by the host)
        if name in ("index", "index_put", "index_put_", "_index_put_impl_") and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] or ()):
            self.found.add(f"{name} with a boolean mask")
        return func(*args, **(kwargs or {}))


_LAYOUT = FieldLayout(names=("a", "b", "c", "x", "y", "s"), cat_sizes=(5, 7, 4), n_num=2, seq_sizes=(6,),
                      seq_pooling=(Pooling.MEAN,))
_CFG = ModelConfig(embedding_dim=4, hidden=(8, 4), cross_layers=2, attention_heads=2, attention_dim=3,
                   dropout=0.1, batch_norm=True)
_APG = replace(_CFG, tower_layer=TowerLayer.APG)
# The multi-domain models group each batch's rows by domain, which reads the segment sizes on the host (one
# sync per batch, by design: nn/domain.py); a capture of their step fails once and training stays eager.
_MULTI_DOMAIN = ("shared_bottom", "mmoe", "hmoe", "ple", "star")
_CASES = [(name, _CFG) for name in MODELS if name not in _MULTI_DOMAIN] + [
    (name, replace(_CFG, autoint_plus=True)) for name in ("autoint",)] + [
    ("deepfm", replace(_APG, apg=APGConfig(version=v))) for v in APGVersion] + [
    ("deepfm", replace(_APG, apg=APGConfig(condition=c, condition_fields=("a", "s"))))
    for c in (ConditionMode.GROUP, ConditionMode.MIX_INPUT, ConditionMode.MIX_OUTPUT)] + [
    ("dcnv2", replace(_APG, adaptive_cross=True)),
    ("dcn", replace(_APG, adaptive_cross=True)),
]


def _forward_backward(model, batch: Batch) -> None:
    """The differentiated part of the trainer's step: loss (with the model's penalties), backward."""
    training_loss(model, batch).backward()


@pytest.mark.parametrize(("name", "config"), _CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_CASES)])
def test_every_training_step_is_free_of_host_syncs(name, config):
    """What CUDA graphs need of a model: forward and backward never read a device value on the host."""
    g = torch.Generator().manual_seed(0)
    cat = torch.stack([torch.randint(0, n, (16,), generator=g) for n in _LAYOUT.cat_sizes], dim=1).int()
    batch = Batch(cat=cat, num=torch.randn(16, 2, generator=g), seq=(torch.randint(0, 6, (16, 3), generator=g),),
                  label=torch.randint(0, 2, (16,), generator=g).float())
    model = build_model(name, layout=_LAYOUT, config=config).train()
    with _SyncRecorder() as rec:
        _forward_backward(model, batch)
    assert not rec.found, f"{name}: host-syncing operators {sorted(rec.found)}"


class _HostTensorRecorder(TorchDispatchMode):
    """Operators given a host tensor (more than a scalar) while the model lives elsewhere: on CUDA each is a
    host-to-device copy inside the step, which capture forbids as well."""

    def __init__(self) -> None:
        super().__init__()
        self.found: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [*args, *(kwargs or {}).values()]
        flat += [t for a in flat if isinstance(a, list | tuple) for t in a]
        if any(isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.dim() > 0 for t in flat):
            self.found.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("name", "config"), _CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_CASES)])
def test_every_training_step_stays_on_the_models_device(name, config):
    """The step run on the meta device (shapes only, no data): no operator may see a host tensor."""
    meta = torch.device("meta")
    model = build_model(name, layout=_LAYOUT, config=config).train().to(meta)
    batch = Batch(cat=torch.zeros(16, 3, dtype=torch.int32, device=meta), num=torch.zeros(16, 2, device=meta),
                  seq=(torch.zeros(16, 3, dtype=torch.int64, device=meta),), label=torch.zeros(16, device=meta))
    with _HostTensorRecorder() as rec:
        _forward_backward(model, batch)
    assert not rec.found, f"{name}: operators given host tensors {sorted(rec.found)}"


def test_the_host_tensor_recorder_catches_host_tensors():
    x = torch.zeros(4, 2, device="meta")
    for f in (lambda: x[torch.tensor([0, 1])], lambda: x + torch.ones(2)):
        with _HostTensorRecorder() as rec, contextlib.suppress(RuntimeError):  # the second one raises as well
            f()
        assert rec.found, f
    with _HostTensorRecorder() as rec:
        _ = x * torch.tensor(2.0)  # a 0-dim host tensor is a scalar argument, not a copy
    assert not rec.found


def test_the_sync_recorder_catches_host_reads():
    x = torch.randn(8, requires_grad=True)
    for f in (lambda: float(x.detach().sum()), lambda: x[x > 0].sum().backward(), lambda: bool((x > 0).any()),
              lambda: (x > 0).nonzero()):
        with _SyncRecorder() as rec:
            f()
        assert rec.found, f
