"""FuxiCTR 2.3.10 DeepFM: preparation with its FeatureProcessor and training with its own ``fit``.

Run with the peers' interpreter (``.bench-venv/bin/python``, see README.md here). Prints one JSON line
at the end. Examples::

    .bench-venv/bin/python benchmarks/peers/fuxictr_deepfm.py --prepare-only \
        --train ../shared/data/frappe_x1/train.csv.gz --valid ../shared/data/frappe_x1/valid.csv.gz \
        --test ../shared/data/frappe_x1/test.csv.gz --label label \
        --categorical user,item,daytime,weekday,isweekend,homework,cost,weather,country,city --threads 2
    .bench-venv/bin/python benchmarks/peers/fuxictr_deepfm.py --criteo rows.tsv --threads 2

What it does, following FuxiCTR's own ``run_expid.py``:

* preparation = ``FeatureProcessor`` + ``build_dataset`` (polars scan, vocabulary fit, Ray Data transform
  to parquet) over every file given (train, and valid/test when given); rows/s counts all those rows.
  Criteo-layout files have no header, which FuxiCTR's ``read_data`` cannot read, so the processor here
  subclasses FuxiCTR's Criteo processor (``fuxictr.datasets.criteo.CustomizedFeatureProcessor``, which
  brings the log^2 ``convert_to_bucket``) and only overrides ``read_data`` to pass the column names;
* the model is model_zoo's DeepFM (FeatureEmbedding + FactorizationMachine + MLP_Block on BaseModel).
  The FuxiCTR wheel ships no ``model_zoo/DeepFM``, so the class below re-states it from FuxiCTR's layers;
* training = ``RankDataLoader`` (parquet through Ray Data, global shuffle each epoch) and
  ``BaseModel.fit``. Per batch fit calls ``get_inputs`` (one ``.to(device)`` per feature column),
  ``clip_grad_norm_`` (max norm 10) and ``loss.item()`` (a device sync); after each epoch it evaluates on
  the validation set and saves a checkpoint, and at the end reloads the best one. Those evaluation and
  reload seconds are timed apart and left out of ``train_seconds``. Without ``--valid`` they are skipped.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402
import polars as pl  # noqa: E402
from fuxictr.datasets.criteo import CustomizedFeatureProcessor  # noqa: E402


class BenchFeatureProcessor(CustomizedFeatureProcessor):
    """FuxiCTR's Criteo processor; reads the headerless Criteo TSV when ``criteo_layout`` is set."""

    def __init__(self, *args, criteo_layout=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.criteo_layout = criteo_layout

    def read_data(self, data_path, data_format="csv", sep=",", n_rows=None, **kwargs):
        if not self.criteo_layout:
            return super().read_data(data_path, data_format=data_format, sep=sep, n_rows=n_rows)
        logging.info("Reading file: " + data_path)
        py2pl = {str: pl.String, float: pl.Float64, int: pl.Int64}
        schema = {c: py2pl[self.dtype_dict.get(c, str)] for c in C.CRITEO_COLUMNS}
        return pl.scan_csv(
            source=data_path,
            separator="\t",
            has_header=False,
            schema=schema,
            low_memory=False,
            n_rows=n_rows,
        )


def make_deepfm_class():
    from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block
    from fuxictr.pytorch.models import BaseModel

    class DeepFM(BaseModel):
        """model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py of FuxiCTR, re-stated (not shipped in the wheel)."""

        def __init__(
            self,
            feature_map,
            model_id="DeepFM",
            gpu=-1,
            learning_rate=1e-3,
            embedding_dim=10,
            hidden_units=(64, 64, 64),
            hidden_activations="ReLU",
            net_dropout=0,
            batch_norm=False,
            embedding_regularizer=None,
            net_regularizer=None,
            **kwargs,
        ):
            super().__init__(
                feature_map,
                model_id=model_id,
                gpu=gpu,
                embedding_regularizer=embedding_regularizer,
                net_regularizer=net_regularizer,
                **kwargs,
            )
            self.embedding_layer = FeatureEmbedding(feature_map, embedding_dim)
            self.fm = FactorizationMachine(feature_map)
            self.mlp = MLP_Block(
                input_dim=feature_map.sum_emb_out_dim(),
                output_dim=1,
                hidden_units=list(hidden_units),
                hidden_activations=hidden_activations,
                output_activation=None,
                dropout_rates=net_dropout,
                batch_norm=batch_norm,
            )
            self.compile(kwargs["optimizer"], kwargs["loss"], learning_rate)
            self.reset_parameters()
            self.model_to_device()

        def forward(self, inputs):
            X = self.get_inputs(inputs)
            feature_emb = self.embedding_layer(X)
            y_pred = self.fm(X, feature_emb)
            y_pred += self.mlp(feature_emb.flatten(start_dim=1))
            y_pred = self.output_activation(y_pred)
            return {"y_pred": y_pred}

    return DeepFM


def fuxictr_version() -> str:
    from importlib.metadata import version

    return version("fuxictr")


def feature_cols(args) -> list[dict]:
    cols = []
    if args.criteo and args.dense == "bucket":
        cols.append(
            {
                "name": C.CRITEO_DENSE,
                "active": True,
                "dtype": "float",
                "type": "categorical",
                "preprocess": "convert_to_bucket",
            }
        )
        cols.append({"name": C.CRITEO_SPARSE, "active": True, "dtype": "str", "type": "categorical"})
    else:
        if args.cat_cols:
            cols.append({"name": args.cat_cols, "active": True, "dtype": "str", "type": "categorical"})
        if args.num_cols:
            cols.append(
                {
                    "name": args.num_cols,
                    "active": True,
                    "dtype": "float",
                    "type": "numeric",
                    "normalizer": "MinMaxScaler",
                }
            )
    return cols


def prepare(args, paths: dict) -> dict:
    """FeatureProcessor + build_dataset, as run_expid.py does. Returns FuxiCTR's params dict."""
    from fuxictr.preprocess import build_dataset

    params = {
        "dataset_id": "bench",
        "data_root": os.path.join(args.workdir, "fuxictr_data"),
        "data_format": "csv",
        "feature_cols": feature_cols(args),
        "label_col": {"name": args.label, "dtype": "float"},
        "min_categr_count": args.min_count,
        "train_data": paths["train"],
        "valid_data": paths.get("valid"),
        "test_data": paths.get("test"),
    }
    processor = BenchFeatureProcessor(criteo_layout=bool(args.criteo), **params)
    params["train_data"], params["valid_data"], params["test_data"] = build_dataset(processor, **params)
    return params


def main() -> None:
    args = C.finish_args(C.build_parser(__doc__.splitlines()[0]).parse_args())
    try:
        run(args)
    finally:
        C.cleanup(args)


def run(args) -> None:
    logging.basicConfig(level=logging.WARNING)
    C.set_threads(args.threads)
    import ray

    raw = {}
    decompress_s = 0.0
    for split, path in (("train", args.train or args.criteo), ("valid", args.valid), ("test", args.test)):
        raw[split], s = C.plain_copy(path, args.workdir, suffix=".csv")
        decompress_s += s
    header = 0 if args.criteo else 1
    rows = {k: C.count_lines(v) - header for k, v in raw.items() if v}
    prep_rows = sum(rows.values())

    with C.MemorySampler() as mem:
        t0 = time.perf_counter()
        params = prepare(args, {k: v for k, v in raw.items() if v})
        prep_s = time.perf_counter() - t0
    result = {
        "library": "fuxictr",
        "version": fuxictr_version(),
        "dataset": "criteo" if args.criteo else os.path.basename(args.train),
        "device": args.device,
        "prep_seconds": prep_s,
        "prep_rows": prep_rows,
        "prep_rows_per_second": prep_rows / prep_s,
        "decompress_seconds": decompress_s,
        "dense_mode": args.dense if args.criteo else None,
    }
    if args.prepare_only:
        result.update({"peak_rss_mb": C.peak_rss_mb(), "peak_tree_pss_mb": mem.peak_mb})
        ray.shutdown()
        C.emit(result)
        return

    from fuxictr.features import FeatureMap
    from fuxictr.pytorch.dataloaders import RankDataLoader
    from fuxictr.pytorch.torch_utils import seed_everything

    seed_everything(seed=args.seed)
    data_dir = os.path.join(params["data_root"], params["dataset_id"])
    feature_map = FeatureMap(params["dataset_id"], data_dir)
    params["embedding_dim"] = args.emb  # run_expid.py's params carry the model config's embedding_dim
    feature_map.load(os.path.join(data_dir, "feature_map.json"), params)

    if args.device.startswith("cuda"):
        gpu = int(args.device.split(":")[1]) if ":" in args.device else 0
    else:
        gpu = -1
    model_params = dict(
        model_id="DeepFM",
        gpu=gpu,
        learning_rate=args.lr,
        embedding_dim=args.emb,
        hidden_units=args.hidden_units,
        hidden_activations="ReLU",
        net_dropout=0,
        batch_norm=False,
        embedding_regularizer=None,
        net_regularizer=None,
        optimizer="adam",
        loss="binary_crossentropy",
        metrics=["logloss", "AUC"],
        monitor="AUC",
        monitor_mode="max",
        verbose=0,
        model_root=os.path.join(args.workdir, "fuxictr_ckpt"),
        early_stop_patience=2,
        save_best_only=True,
        reduce_lr_on_plateau=True,
    )
    model = make_deepfm_class()(feature_map, **model_params)
    os.makedirs(model.model_dir, exist_ok=True)  # FuxiCTR's set_logger makes it in run_expid.py
    n_params = sum(p.numel() for p in model.parameters())
    flops = C.dnn_flops_per_sample(feature_map.sum_emb_out_dim(), args.hidden_units)

    train_gen, valid_gen = RankDataLoader(
        feature_map,
        stage="train",
        train_data=params["train_data"],
        valid_data=params["valid_data"] if args.valid else None,
        batch_size=args.batch,
        shuffle=True,
        data_format="csv",
    )

    # Time stamps: after every optimiser step, and around each evaluation / checkpoint reload.
    step_times: list[float] = []
    evals: list[tuple[float, float]] = []
    opt_step = model.optimizer.step

    def timed_step(*a, **k):
        r = opt_step(*a, **k)
        step_times.append(time.perf_counter())
        return r

    model.optimizer.step = timed_step
    eval_step = model.eval_step

    def timed_eval():
        t = time.perf_counter()
        if args.valid:
            eval_step()
        evals.append((t, time.perf_counter()))

    model.eval_step = timed_eval
    load_weights = model.load_weights

    def timed_load(path):
        t = time.perf_counter()
        if args.valid:
            load_weights(path)
        evals.append((t, time.perf_counter()))

    model.load_weights = timed_load

    gc.collect()
    C.sync(args.device)
    t_fit = time.perf_counter()
    model.fit(train_gen, epochs=args.epochs, validation_data=valid_gen, max_gradient_norm=10.0)
    C.sync(args.device)
    t_fit_end = time.perf_counter()

    def evals_between(a: float, b: float) -> float:
        return sum(e1 - e0 for e0, e1 in evals if a <= e0 < b)

    t_last = step_times[-1]
    train_s = t_last - t_fit - evals_between(t_fit, t_last)
    n_train = rows["train"]
    batch_sizes = C.epoch_batch_sizes(n_train, args.batch, args.epochs)[: len(step_times)]
    samples = sum(batch_sizes)
    w = args.warmup
    steady_s = steady_sps = None
    if len(step_times) > w + 1:
        t_w = step_times[w - 1] if w > 0 else t_fit
        steady_s = t_last - t_w - evals_between(t_w, t_last)
        steady_sps = sum(batch_sizes[w:]) / steady_s

    result.update(
        {
            "samples": samples,
            "batches": len(step_times),
            "train_seconds": train_s,
            "samples_per_second": samples / train_s,
            "steady_samples_per_second": steady_sps,
            "warmup_batches": w,
            "fit_seconds": t_fit_end - t_fit,
            "eval_and_checkpoint_seconds": evals_between(t_fit, t_fit_end + 1),
            "peak_rss_mb": C.peak_rss_mb(),
            "params": int(n_params),
            "flops_per_sample": flops,
            "batch": args.batch,
            "emb": args.emb,
            "hidden": args.hidden_units,
            "epochs": args.epochs,
            **C.torch_info(),
        }
    )
    del train_gen, valid_gen
    ray.shutdown()
    C.emit(result)


if __name__ == "__main__":
    main()
