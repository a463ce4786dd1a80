"""Pickle-free checkpoints: config and schema as JSON, weights as safetensors, trainer state as tensors.

A run directory::

    RUN/config.json        resolved RunConfig + model name + schema fingerprint
    RUN/schema.json        the dataset's schema (and RUN/vocab/*.json) so `predict` can encode raw rows
    RUN/model.safetensors  best weights (the inference form where a model has one)
    RUN/last.pt            trainer state after the last finished epoch, for --resume; a dict of tensors,
                           numbers and strings only, loaded with ``torch.load(weights_only=True)``
    RUN/metrics.json       results

Every file is written to a temporary name and renamed, so a kill never leaves a torn file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adactr.errors import AdactrError


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, allow_nan=True))


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise AdactrError(f"{path}: no weights here (was training finished?)")
    return load_file(str(path))


def save_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise AdactrError(f"{path}: nothing to resume from (no finished epoch was saved)")
    return torch.load(path, weights_only=True, map_location="cpu")
