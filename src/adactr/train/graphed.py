"""The training step captured once and replayed: CUDA graphs (``train.cuda_graph=true``).

On a GPU a DeepFM step at batch 4096 costs far more in Python and kernel launches (~130 operators, each
dispatched and launched from the host) than in arithmetic. A CUDA graph records the whole step once --
forward, backward, optimiser update -- and replays it as one launch. This module holds the plumbing,
kept apart from the mechanism so the plumbing can be tested where there is no GPU:

- the step's inputs live in static buffers; each batch is copied into them before a replay;
- the first ``warmup`` full-size steps run eagerly (on a side stream on CUDA, as PyTorch's
  whole-network capture recipe requires), so that the optimiser's state exists before capture;
- the step is captured at the next full-size batch and then replayed; capture itself runs nothing on
  the device, so that batch's update comes from the first replay: each batch still gets exactly one step;
- a batch of another size (the epoch's last, partial one) runs eagerly;
- the learning rates are baked into the captured optimiser kernels, so a change of any learning rate
  (reduce-on-plateau) makes the next full-size step capture again;
- a capture that fails (an operator that cannot be captured, such as a host sync) is reported once
  and the run goes on eagerly.

:class:`CudaGraphs` is the real mechanism. :class:`EagerReplay` "captures" by keeping the function and
"replays" by calling it: on the CPU it follows exactly the same schedule, so a test can check that the
plumbing gives bit-identical training to the plain eager loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

import torch
from torch import Tensor

from adactr.data.tensors import Batch

StepFn = Callable[[Batch], Tensor]


class CaptureBackend(Protocol):
    captures: int  # how many captures so far

    def warmup(self, fn: Callable[[], Tensor]) -> Tensor: ...

    def capture(self, fn: Callable[[], Tensor]) -> Callable[[], Tensor]: ...


class EagerReplay:
    """Capture = keep the function; replay = call it. For the CPU and for tests."""

    def __init__(self) -> None:
        self.captures = 0

    def warmup(self, fn: Callable[[], Tensor]) -> Tensor:
        return fn()

    def capture(self, fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        self.captures += 1
        return fn


class CudaGraphs:
    """``torch.cuda.CUDAGraph`` capture, after PyTorch's whole-network recipe (warm-up on a side stream)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None

    def warmup(self, fn: Callable[[], Tensor]) -> Tensor:
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            out = fn()
        torch.cuda.current_stream(self.device).wait_stream(side)
        return out

    def capture(self, fn: Callable[[], Tensor]) -> Callable[[], Tensor]:
        if self._graph is not None:  # an earlier capture (other learning rates): free its memory pool
            self._graph.reset()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        self._graph = graph
        self.captures += 1

        def replay() -> Tensor:
            graph.replay()
            return out

        return replay


def _empty_like_batch(b: Batch) -> Batch:
    def e(t: Tensor | None) -> Tensor | None:
        return None if t is None else torch.empty_like(t)

    return Batch(cat=torch.empty_like(b.cat), num=torch.empty_like(b.num), seq=tuple(map(torch.empty_like, b.seq)),
                 label=torch.empty_like(b.label), domain=e(b.domain), group=e(b.group))


def _copy_batch(dst: Batch, src: Batch) -> None:
    for d, s in zip((dst.cat, dst.num, *dst.seq, dst.label, dst.domain, dst.group),
                    (src.cat, src.num, *src.seq, src.label, src.domain, src.group), strict=True):
        if d is not None and s is not None:
            d.copy_(s, non_blocking=True)


class GraphedStep:
    """Calls ``step(batch) -> loss`` eagerly, or by replaying its capture, following the schedule above.

    ``release_grads`` sets every gradient to None; it runs before each capture, so that the gradients
    are created inside the graph (PyTorch's recipe). ``learning_rates`` returns the current rates.
    """

    def __init__(self, step: StepFn, *, backend: CaptureBackend, release_grads: Callable[[], None],
                 learning_rates: Callable[[], tuple[float, ...]], warmup: int = 3) -> None:
        self.step, self.backend, self.warmup = step, backend, warmup
        self.release_grads, self.learning_rates = release_grads, learning_rates
        self.size: int | None = None  # the full batch size, fixed by the first batch
        self.eager_steps = self.replays = 0
        self.failed: str | None = None
        self._warm = 0
        self._static: Batch | None = None
        self._replay: Callable[[], Tensor] | None = None
        self._rates: tuple[float, ...] | None = None

    def __call__(self, batch: Batch) -> Tensor:
        if self.size is None:
            self.size = batch.size
        if self.failed is not None or batch.size != self.size:
            return self._eager(batch)
        if self._warm < self.warmup:
            self._warm += 1
            self.eager_steps += 1
            with _uncaptured_ok():
                return self.backend.warmup(lambda: self.step(batch))
        rates = self.learning_rates()
        if self._replay is None or rates != self._rates:
            if self._static is None:
                self._static = _empty_like_batch(batch)
            static = self._static
            _copy_batch(static, batch)
            self.release_grads()
            try:
                self._replay = self.backend.capture(lambda: self.step(static))
            except RuntimeError as exc:  # e.g. "operation not permitted when stream is capturing"
                self.failed = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                self._replay = None
                warnings.warn(f"train.cuda_graph: capture failed, training on eagerly ({self.failed})",
                              RuntimeWarning, stacklevel=2)
                return self._eager(batch)
            self._rates = rates
        else:
            _copy_batch(self._static, batch)  # type: ignore[arg-type]
        self.replays += 1
        return self._replay()

    def _eager(self, batch: Batch) -> Tensor:
        self.eager_steps += 1
        with _uncaptured_ok():
            return self.step(batch)


@contextmanager
def _uncaptured_ok() -> Iterator[None]:
    """Silence PyTorch's warning that a capturable optimiser steps outside a capture: the warm-up and
    partial-batch steps do so on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*capturable=True.*", category=UserWarning)
        yield
