"""Encoded arrays as tensors on the device, and the :class:`Batch` every model takes.

The whole split is moved to the device once (on a GPU the encoded Criteo set, 45M x 39 int32 = 7 GB,
fits); a batch is an index gather on the device, so training does no per-batch host work. Splits larger
than the memory budget are streamed in memory-mapped chunks (:meth:`SplitArrays.chunks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from adactr.errors import DataError


class Batch(NamedTuple):
    """One batch of encoded rows; every model maps it to logits of shape (B,)."""

    cat: Tensor  # (B, Fc) integer indices per field (0 missing, 1 OOV)
    num: Tensor  # (B, Fn) float32 standardised values
    seq: tuple[Tensor, ...]  # each (B, L_j) integer indices, 0-padded
    label: Tensor  # (B,) float32 0/1 (zeros at predict time)
    domain: Tensor | None = None  # (B,) domain index
    group: Tensor | None = None  # (B,) group id for GAUC

    @property
    def size(self) -> int:
        return int(self.label.shape[0])


_KEYS = ("cat", "num", "label", "domain", "group")


@dataclass
class SplitArrays:
    """The arrays of one split, as numpy (memory-mapped) or torch tensors."""

    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, directory: Path, *, mmap: bool = True) -> SplitArrays:
        if not (directory / "cat.npy").exists():
            raise DataError("no encoded arrays here (run `adactr prepare` first)", file=str(directory))
        arrays = {p.stem: np.load(p, mmap_mode="c" if mmap else None) for p in sorted(directory.glob("*.npy"))}
        return cls(arrays)

    def __len__(self) -> int:
        return int(self.arrays["cat"].shape[0])

    @property
    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self.arrays.values())

    def to_tensors(self, device: torch.device, rows: slice | None = None, *, load: bool = False) -> DeviceSplit:
        """The arrays (or ``rows`` of them) as tensors on ``device``. On the CPU a memory-mapped array stays
        mapped unless ``load``, which reads it into memory first in one sequential pass. Training loads:
        its shuffled batches would otherwise fault the mapping in page by page at random, from the disk
        when the file is not cached. On this project's machine that costs nothing measurable (page cache
        dropped, 150 steps on 5M Criteo-shaped rows: medians 97.0 / 84.8 ms mapped, 101.3 / 92.2 ms loaded,
        `benchmarks/cpu_step.py --data ... [--mapped]`), so it is insurance against slower storage."""
        sl = rows if rows is not None else slice(None)

        def tensor(a: np.ndarray) -> Tensor:
            part = a[sl]
            # (to another device the copy there is the sequential read: no host copy first)
            on_host = load and device.type == "cpu" and isinstance(part, np.memmap)
            part = np.array(part) if on_host else np.ascontiguousarray(part)
            return torch.from_numpy(part).to(device)

        t = {k: tensor(a) for k, a in self.arrays.items()}
        if "label" not in t:
            t["label"] = torch.zeros(t["cat"].shape[0], dtype=torch.float32, device=device)
        return DeviceSplit(t)

    def chunks(self, rows_per_chunk: int, device: torch.device, order: np.ndarray | None = None
               ) -> Iterator[DeviceSplit]:
        """Contiguous memory-mapped chunks moved to the device one at a time (data bigger than memory)."""
        n = len(self)
        starts = np.arange(0, n, rows_per_chunk)
        for s in (starts[order] if order is not None else starts):
            yield self.to_tensors(device, slice(int(s), int(min(s + rows_per_chunk, n))), load=True)


class DeviceSplit:
    """Tensors of one split on one device; ``take(idx)`` gathers a batch without leaving the device."""

    def __init__(self, tensors: dict[str, Tensor]) -> None:
        self.t = tensors
        self.n_seq = sum(1 for k in tensors if k.startswith("seq_"))

    def __len__(self) -> int:
        return int(self.t["label"].shape[0])

    def take(self, idx: Tensor | slice) -> Batch:
        t = self.t
        return Batch(
            cat=t["cat"][idx],
            num=t["num"][idx],
            seq=tuple(t[f"seq_{j}"][idx] for j in range(self.n_seq)),
            label=t["label"][idx],
            domain=t["domain"][idx] if "domain" in t else None,
            group=t["group"][idx] if "group" in t else None,
        )

    def all(self) -> Batch:
        return self.take(slice(None))

    def batches(self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None
                ) -> Iterator[Batch]:
        n = len(self)
        if shuffle:
            perm = torch.randperm(n, generator=generator, device="cpu").to(self.t["label"].device)
            for s in range(0, n, batch_size):
                yield self.take(perm[s:s + batch_size])
        else:
            for s in range(0, n, batch_size):
                yield self.take(slice(s, s + batch_size))
