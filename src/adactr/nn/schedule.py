"""The schedule seam: values a model's parts change with optimisation steps (AdaSparse's α and λ̂, §3.1.2
and eq. 10), declared by the part that reads them.

A :class:`Schedule` is a module holding its current value in a registered buffer, so it is saved in the
state_dict, restored by ``--resume`` and moved with the model. Its value is a function of the optimisation
step count only: the trainer calls :meth:`Schedule.advance` with the number of steps taken, after every
optimisation step, through one hook (:func:`advance_schedules`). Nothing else moves it: a forward call,
evaluation, prediction and serving read the buffer and never write it (STYLE 4), so an evaluation between
two steps, or any number of them, changes nothing. Because the value is ``f(step)`` and the buffer holds it,
a resumed run continues the schedule exactly, and a loaded model serves with the value it was trained to.

>>> s = GeometricSchedule(start=0.1, end=5.0, steps=100)
>>> round(float(s.value), 4)
0.1
>>> s.advance(50); round(float(s.value), 4)  # halfway in log space: sqrt(0.1 * 5)
0.7071
>>> s.advance(1000); float(s.value)  # held at the end
5.0

A horizon may be given in epochs instead (``epochs`` > 0): the trainer, which alone knows how many steps an
epoch of the data takes, calls :func:`fit_schedules` once before the first step, and the horizon is then
``round(epochs * steps_per_epoch)`` steps (the same on a resumed run: same data, same batch size).

>>> e = GeometricSchedule(start=0.1, end=5.0, steps=100, epochs=2.0)
>>> fit_schedules([e], steps_per_epoch=30); e.steps
60
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Schedule(nn.Module, ABC):
    """A scalar that advances with optimisation steps: ``value`` (a 0-dim buffer) = ``at(step)``."""

    value: Tensor

    def __init__(self, start: float, *, setting: str = "") -> None:
        """``setting``: the config key that sets the horizon, named when a run ends before it."""
        super().__init__()
        self.setting = setting
        self.register_buffer("value", torch.tensor(float(start)))  # persistent: saved and resumed

    def fit(self, steps_per_epoch: int) -> None:
        """Set a horizon given in epochs from the data's steps an epoch (a no-op for one given in steps)."""

    @abstractmethod
    def at(self, step: int) -> float:
        """The value after ``step`` optimisation steps (``at(0)`` is the start)."""

    @torch.no_grad()
    def advance(self, step: int) -> None:
        """Set the value for ``step`` optimisation steps taken (in place: the buffer keeps its storage,
        so a CUDA graph or a compiled step that reads it sees the new value)."""
        self.value.fill_(self.at(step))


class GeometricSchedule(Schedule):
    """From ``start`` to ``end`` in ``steps`` optimisation steps with a constant ratio per step, then held:
    ``start * (end / start) ** min(step / steps, 1)``. Each doubling takes the same number of steps."""

    def __init__(self, *, start: float, end: float, steps: int, setting: str = "", epochs: float = 0.0) -> None:
        """``epochs`` > 0: the horizon is that many epochs (``fit`` sets ``steps``); ``steps`` holds until then."""
        if start <= 0 or end <= 0 or steps < 1 or epochs < 0:
            raise ValueError(f"a geometric schedule needs start, end > 0, steps >= 1 and epochs >= 0, got "
                             f"{start}, {end}, {steps}, {epochs}")
        super().__init__(start, setting=setting)
        self.start, self.end, self.steps, self.epochs = float(start), float(end), int(steps), float(epochs)

    def extra_repr(self) -> str:
        return f"start={self.start:g}, end={self.end:g}, steps={self.steps}" + (
            f", epochs={self.epochs:g}" if self.epochs else "")

    def fit(self, steps_per_epoch: int) -> None:
        if self.epochs:
            self.steps = max(1, round(self.epochs * steps_per_epoch))

    def at(self, step: int) -> float:
        return self.start * math.exp(math.log(self.end / self.start) * min(max(step, 0) / self.steps, 1.0))


def schedules_of(model: nn.Module) -> list[Schedule]:
    """Every :class:`Schedule` in ``model`` (each once), found once before training."""
    return [m for m in model.modules() if isinstance(m, Schedule)]


def advance_schedules(schedules: Sequence[Schedule], step: int) -> None:
    """The trainer's hook, called after every optimisation step with the steps taken so far."""
    for s in schedules:
        s.advance(step)


def fit_schedules(schedules: Sequence[Schedule], steps_per_epoch: int) -> None:
    """The trainer's hook, called once before the first step: horizons given in epochs become steps."""
    for s in schedules:
        s.fit(steps_per_epoch)
