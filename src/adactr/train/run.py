"""Runs as the CLI sees them: train a model on a prepared directory, evaluate a run, predict raw rows.

These functions hold the whole job (data -> model -> trainer -> metrics -> files) so that the CLI stays a
thin argument parser and the same jobs are callable from Python and tests.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from adactr import __version__
from adactr.config import override, to_dict
from adactr.data.schema import Schema
from adactr.data.tensors import SplitArrays
from adactr.errors import AdactrError, DataError, DataWarning
from adactr.models.registry import build_model
from adactr.nn.adaptivity import measure_adaptivity
from adactr.train import checkpoint
from adactr.train.config import Device, MetaLearning, RunConfig, resolve
from adactr.train.ftrl import zero_rows
from adactr.train.maml import MAMLServed, finetune_domains
from adactr.train.trainer import Trainer, evaluate_split, predict_logits, training_loss

# validation rows the adaptivity diagnostic reads (all of Frappe_x1's and MovieLens-1M's; a bounded cost on
# Criteo-sized splits)
ADAPTIVITY_ROWS = 200_000


def pick_device(choice: Device) -> torch.device:
    if choice is Device.CUDA and not torch.cuda.is_available():
        raise AdactrError("--device cuda was asked for, but torch sees no CUDA device")
    if choice is Device.AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice.value)


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)


def _inference_form(model: nn.Module) -> nn.Module:
    """The model as served: collapsed / pruned where the paper says so (identity otherwise)."""
    fn = getattr(model, "for_inference", None)
    return fn() if fn is not None else model


def _finetunes(config: RunConfig) -> bool:
    """Whether the run serves per-domain fine-tuned weights (train.meta=maml with K > 0): its model is then
    a :class:`MAMLServed` around the training form, not the inference form."""
    return config.train.meta is MetaLearning.MAML and config.train.maml.finetune_k > 0


@dataclass(frozen=True)
class RunFiles:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def weights(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"


def train_run(*, data: Path, model_name: str, out: Path, config: RunConfig, resume: bool = False,
              overwrite: bool = False) -> dict[str, Any]:
    """Train ``model_name`` on the prepared directory ``data``; write the run to ``out``."""
    schema = Schema.load(data / "schema.json")
    files = RunFiles(out)
    created = False
    if resume:
        if not files.config.exists():
            raise AdactrError(f"{out}: nothing to resume (no config.json)")
        saved = json.loads(files.config.read_text())
        if saved["model_name"] != model_name or saved["schema_fingerprint"] != schema.fingerprint():
            raise AdactrError(f"{out}: was started with model {saved['model_name']!r} on another dataset or "
                              f"model; resume with the same --model and --data")
        config = override(RunConfig(), saved["config"])
    else:
        config = resolve(config, model_name)  # the model's train.lr / train.embedding_l2 into config.json
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise AdactrError(f"{out}: run directory exists and is not empty (pass --overwrite, or --resume)")
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        created = True
    try:
        return _train(schema, data, model_name, files, config, resume)
    except Exception:
        # An error (bad config, NaN loss, ...) leaves no half-written run directory. An interrupt
        # (Ctrl-C, a kill) keeps it: its last finished epoch is what --resume continues from.
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _train(schema: Schema, data: Path, model_name: str, files: RunFiles, config: RunConfig,
           resume: bool) -> dict[str, Any]:
    tc = config.train
    if tc.threads > 0:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    seed_everything(tc.seed)
    model = build_model(model_name, layout=schema.layout(), config=config.model)
    n_params = sum(p.numel() for p in model.parameters())
    out = files.root
    if not resume:
        checkpoint.write_json(files.config, {
            "adactr_version": __version__, "model_name": model_name, "data": str(data),
            "schema_fingerprint": schema.fingerprint(), "config": to_dict(config)})
        schema.save(out / "schema.json")
        shutil.copytree(data / "vocab", out / "vocab", dirs_exist_ok=True)

    train = SplitArrays.load(data / "train")
    valid = SplitArrays.load(data / "valid").to_tensors(device)
    trainer = Trainer(config=tc, device=device, run_dir=out, domain_names=schema.domain_names)
    t0 = time.perf_counter()
    fit = trainer.fit(model, train, valid, resume=resume)
    wall = time.perf_counter() - t0

    meta = served = _inference_form(model)
    finetune: dict[str, Any] = {}
    if _finetunes(config):  # MAML: each domain's weights fine-tuned from the meta weights (adactr/train/maml.py)
        t1 = time.perf_counter()
        served = finetune_domains(model, train, config=tc.maml, n_domains=schema.layout().n_domains,
                                  loss=training_loss, seed=tc.seed, device=device)
        finetune = {"steps": tc.maml.finetune_k, "rows": tc.maml.finetune_rows,
                    "domains": int(served.domain_adapted.sum()), "seconds": round(time.perf_counter() - t1, 3),
                    "adapted_bytes": served.adapted_bytes()}
    checkpoint.save_weights(files.weights, served.state_dict())
    results: dict[str, Any] = {"model": model_name, "device": str(device), "seed": tc.seed,
                               "params": n_params}
    eb = tc.eval_batch_size
    keep = tc.keep_freed_memory

    def evaluate(m: nn.Module, split: Any, desc: str) -> dict[str, Any]:
        return evaluate_split(m, split, batch_size=eb, domain_names=schema.domain_names, keep_freed_memory=keep,
                              progress=tc.progress, desc=desc)

    def brief(metrics: dict[str, Any]) -> dict[str, Any]:  # the meta weights' figures beside the served ones
        return {k: metrics[k] for k in ("auc", "logloss", "domain_auc_mean") if k in metrics}

    results["valid"] = evaluate(served, valid, "valid")
    if finetune:
        finetune["meta_valid"] = brief(evaluate(meta, valid, "valid (meta weights)"))
    # how much each adaptive part's generated parameters vary across the validation rows (STYLE 13); the
    # meta model's under MAML fine-tuning (the served one splits batches by domain)
    adaptivity = measure_adaptivity(meta, valid.batches(eb), max_rows=ADAPTIVITY_ROWS)
    if adaptivity:
        results["adaptivity"] = adaptivity
    del valid
    test = SplitArrays.load(data / "test").to_tensors(device)
    results["test"] = evaluate(served, test, "test")
    if finetune:
        finetune["meta_test"] = brief(evaluate(meta, test, "test (meta weights)"))
        results["maml_finetune"] = finetune
    results.update({
        "epochs": fit.epochs, "best_epoch": fit.best_epoch, "stopped_early": fit.stopped_early,
        "train_seconds": round(fit.train_seconds, 3), "wall_seconds": round(wall, 3),
        "samples_per_second": round(fit.samples_per_second, 1), "steps": fit.steps,
        "early_stopping": fit.early_stopping, "history": fit.history,
        # the embedding rows at exactly zero: what GroupLasso-FTRL (train.embedding_optimizer=gftrl) buys
        "embedding_zero_rows": zero_rows(model.embedding_parameters()),
    })
    if fit.cuda_graph is not None:
        results["cuda_graph"] = fit.cuda_graph
    checkpoint.write_json(files.metrics, results)
    return results


def load_run(run: Path, device: torch.device | None = None) -> tuple[nn.Module, Schema, RunConfig, dict]:
    """Rebuild a trained model (inference form) from a run directory: JSON + safetensors only."""
    files = RunFiles(run)
    if not files.config.exists():
        raise AdactrError(f"{run}: not a run directory (no config.json)")
    saved = json.loads(files.config.read_text())
    config = override(RunConfig(), saved["config"])
    schema = Schema.load(run / "schema.json")
    model: nn.Module = build_model(saved["model_name"], layout=schema.layout(), config=config.model)
    weights = checkpoint.load_weights(files.weights)
    # (a MAML run trained before fine-tuning existed holds the meta weights only, whatever its config says)
    if _finetunes(config) and "domain_adapted" in weights:
        model = MAMLServed(model, n_domains=schema.layout().n_domains,
                           adapt_embeddings=config.train.maml.adapt_embeddings)
    else:
        model = _inference_form(model)
    model.load_state_dict(weights)
    model.to(device or torch.device("cpu")).eval()
    return model, schema, config, saved


def evaluate_run(*, run: Path, data: Path, split: str = "test", device: Device = Device.AUTO,
                 progress: bool = False) -> dict[str, Any]:
    dev = pick_device(device)
    model, schema, config, _ = load_run(run, dev)
    data_schema = Schema.load(data / "schema.json")
    if data_schema.fingerprint() != schema.fingerprint():
        raise DataError(f"this dataset's schema ({data_schema.fingerprint()}) is not the one the run was "
                        f"trained on ({schema.fingerprint()}): prepare it with the run's schema",
                        file=str(data / "schema.json"))
    split_t = SplitArrays.load(data / split).to_tensors(dev)
    return evaluate_split(model, split_t, batch_size=config.train.eval_batch_size, domain_names=schema.domain_names,
                          keep_freed_memory=config.train.keep_freed_memory, progress=progress, desc=split)


def predict_file(*, run: Path, input: Path, output: Path, fmt: str | None = None,
                 device: Device = Device.AUTO, batch_size: int | None = None, progress: bool = False) -> int:
    """Raw rows in, probabilities out (one column ``probability``); returns the row count. Batches of
    ``batch_size`` rows, by default the run's ``train.eval_batch_size``."""
    # the raw-file readers need polars; training from prepared arrays does not (GPU boxes may lack it)
    import polars as pl

    from adactr.data.encode import encode
    from adactr.data.prepare import FIELD_MAP_FILE, Format, editor_rows, load_vocabs, read_raw

    dev = pick_device(device)
    model, schema, config, _ = load_run(run, dev)
    with tqdm(total=4, desc="predict", unit="stage", disable=not progress) as bar:
        def stage(name: str) -> None:  # the stage just finished, as prepare's bar shows it
            bar.set_postfix_str(name)
            bar.update(1)

        raw_format = Format(fmt or schema.source_format)
        field_map = run / "vocab" / FIELD_MAP_FILE  # libFM data prepared with --field-map
        with warnings.catch_warnings():  # the map's odd lines were reported once, by prepare
            warnings.simplefilter("ignore", DataWarning)
            df = read_raw(raw_format, input, field_map=field_map if field_map.exists() else None)
        stage("read")
        missing = [f.name for f in schema.fields if f.name not in df.columns]
        if missing:
            raise DataError(f"column {missing[0]!r} is missing: this run was trained on a dataset with columns "
                            f"{', '.join(schema.columns)}", file=str(input))
        with editor_rows(raw_format, input):  # an error names the line an editor shows
            arrays = encode(df, schema, load_vocabs(run), file=str(input), require_label=False)
        del df
        stage("encode")
        split = SplitArrays(arrays).to_tensors(dev)
        tc = config.train
        logits = predict_logits(model, split, batch_size or tc.eval_batch_size,
                                keep_freed_memory=tc.keep_freed_memory, progress=progress, desc="batches")
        probs = torch.sigmoid(logits.float()).cpu().numpy()
        stage("predict")
        tmp = output.with_name(output.name + ".tmp")
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            pl.DataFrame({"probability": probs}).write_csv(tmp)
            tmp.replace(output)
        except OSError as exc:  # a folder in the way, no permission, a full disk: one line
            raise DataError(f"cannot write: {exc.strerror or exc}", file=str(output)) from exc
        finally:
            tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        stage("write")
    return len(probs)
