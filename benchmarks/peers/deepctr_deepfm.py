"""DeepCTR-Torch 0.3.0 DeepFM: preparation as in its examples, training with its own ``model.fit``.

Run with the peers' interpreter (``.bench-venv/bin/python``, see README.md here). Prints one JSON line
at the end. Example::

    .bench-venv/bin/python benchmarks/peers/deepctr_deepfm.py \
        --train ../shared/data/frappe_x1/train.csv.gz --label label \
        --categorical user,item,daytime,weekday,isweekend,homework,cost,weather,country,city --threads 2

Preparation follows examples/run_classification_criteo.py of DeepCTR-Torch: pandas ``read_csv``,
missing categoricals filled with '-1' and missing numbers with 0, one sklearn ``LabelEncoder`` per
categorical column, ``MinMaxScaler`` on numerical ones (``--dense numeric``). The example fits each
encoder on every row it has, so the encoders here are fitted on train, valid and test together.
Categories seen fewer than ``--min-count`` times in the train rows are first replaced by one shared
'rare' token (the example has no such step; this is the FuxiCTR ``min_categr_count`` equivalent).
``--encoder factorize`` swaps LabelEncoder (sorts) for pandas.factorize (hashes); the JSON says which.
With ``--dense bucket`` (default for --criteo) I1..I13 are first turned into categories by FuxiCTR's
log^2 bucketing, so all 39 fields are SparseFeat and the model is the same as the other libraries'.

Training is ``DeepFM(..., dnn_hidden_units=hidden, dnn_dropout=0, dnn_use_bn=False, l2 regs 0)`` and
``model.fit(x, y, batch_size, epochs, verbose)``. fit stacks every input column into one float64 array
on the host and iterates a ``torch.utils.data.DataLoader`` over a ``TensorDataset`` (per-sample indexing
and collation on the host), then copies each batch to the device (``.to(device).float()``) and casts the
ids back to long per field. With ``verbose`` > 0 (the examples use 2) fit also computes every compiled
metric on the host for every batch; ``--verbose`` defaults to 0 here, the fastest setting.
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402


def read_frame(args, path: str):
    import pandas as pd

    dtypes = {c: str for c in args.cat_cols if not (args.criteo and c in C.CRITEO_DENSE)}
    if args.criteo:
        return pd.read_csv(path, sep="\t", header=None, names=C.CRITEO_COLUMNS, dtype=dtypes)
    return pd.read_csv(path, dtype=dtypes)


def prepare(args, paths: dict):
    """Returns (x dict of numpy arrays for the train rows, y, feature columns, rows per split)."""
    import numpy as np
    import pandas as pd
    from deepctr_torch.inputs import DenseFeat, SparseFeat
    from sklearn.preprocessing import LabelEncoder, MinMaxScaler

    frames = [read_frame(args, paths[k]) for k in ("train", "valid", "test") if paths.get(k)]
    n_rows = [len(f) for f in frames]
    n_train = n_rows[0]
    data = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    del frames
    if args.criteo and args.dense == "bucket":
        for c in C.CRITEO_DENSE:
            data[c] = C.log2_bucket(data[c].to_numpy())
    sparse = args.cat_cols
    dense = args.num_cols
    if dense:
        data[dense] = data[dense].fillna(0)
    for c in sparse:
        col = data[c]
        is_text = not pd.api.types.is_numeric_dtype(col)
        if is_text:
            col = col.fillna("-1")
        if args.min_count > 1:
            counts = col.iloc[:n_train].value_counts()
            rare = ~col.isin(counts.index[counts.to_numpy() >= args.min_count])
            if rare.any():
                col = col.where(~rare, "__rare__" if is_text else -(2**62))
        if args.encoder == "sklearn":
            data[c] = LabelEncoder().fit_transform(col.to_numpy())
        else:
            data[c] = pd.factorize(col, use_na_sentinel=False)[0]
    if dense:
        data[dense] = MinMaxScaler(feature_range=(0, 1)).fit_transform(data[dense])
    feats = [SparseFeat(c, vocabulary_size=int(data[c].max()) + 1, embedding_dim=args.emb) for c in sparse]
    feats += [DenseFeat(c, 1) for c in dense]
    train = data.iloc[:n_train]
    x = {f.name: train[f.name].to_numpy() for f in feats}
    y = train[args.label].to_numpy(dtype=np.float32)
    return x, y, feats, n_rows


def main() -> None:
    parser = C.build_parser(__doc__.splitlines()[0])
    parser.add_argument("--encoder", choices=["sklearn", "factorize"], default="sklearn")
    parser.add_argument("--verbose", type=int, default=0, help="DeepCTR fit verbose (examples: 2)")
    args = C.finish_args(parser.parse_args())
    try:
        run(args)
    finally:
        C.cleanup(args)


def run(args) -> None:
    C.set_threads(args.threads)
    import torch
    from deepctr_torch.models import DeepFM

    raw = {}
    decompress_s = 0.0
    for split, path in (("train", args.train or args.criteo), ("valid", args.valid), ("test", args.test)):
        raw[split], s = C.plain_copy(path, args.workdir)
        decompress_s += s

    with C.MemorySampler() as mem:
        t0 = time.perf_counter()
        x, y, feats, n_rows = prepare(args, raw)
        prep_s = time.perf_counter() - t0
    prep_rows = sum(n_rows)
    result = {
        "library": "deepctr-torch",
        "version": _version(),
        "dataset": "criteo" if args.criteo else os.path.basename(args.train),
        "device": args.device,
        "prep_seconds": prep_s,
        "prep_rows": prep_rows,
        "prep_rows_per_second": prep_rows / prep_s,
        "decompress_seconds": decompress_s,
        "encoder": args.encoder,
        "dense_mode": args.dense if args.criteo else None,
    }
    if args.prepare_only:
        result.update({"peak_rss_mb": C.peak_rss_mb(), "peak_tree_pss_mb": mem.peak_mb})
        C.emit(result)
        return

    device = args.device if args.device != "cuda" else "cuda:0"
    model = DeepFM(
        linear_feature_columns=feats,
        dnn_feature_columns=feats,
        use_fm=True,
        dnn_hidden_units=tuple(args.hidden_units),
        l2_reg_linear=0,
        l2_reg_embedding=0,
        l2_reg_dnn=0,
        dnn_dropout=0,
        dnn_activation="relu",
        dnn_use_bn=False,
        task="binary",
        device=device,
        seed=args.seed,
    )
    optim = torch.optim.Adam(model.parameters(), lr=args.lr)
    model.compile(optim, "binary_crossentropy", metrics=["binary_crossentropy", "auc"])
    n_params = sum(p.numel() for p in model.parameters())
    flops = C.dnn_flops_per_sample(model.compute_input_dim(feats), args.hidden_units)

    step_times: list[float] = []
    opt_step = model.optim.step

    def timed_step(*a, **k):
        r = opt_step(*a, **k)
        step_times.append(time.perf_counter())
        return r

    model.optim.step = timed_step
    gc.collect()
    C.sync(args.device)
    t_fit = time.perf_counter()
    model.fit(x, y, batch_size=args.batch, epochs=args.epochs, verbose=args.verbose, shuffle=True)
    C.sync(args.device)
    t_end = time.perf_counter()

    n_train = n_rows[0]
    batch_sizes = C.epoch_batch_sizes(n_train, args.batch, args.epochs)
    samples = sum(batch_sizes)
    train_s = t_end - t_fit
    steady_s, steady_sps = C.steady_rate(step_times, batch_sizes, t_fit, t_end, args.warmup)
    result.update(
        {
            "samples": samples,
            "batches": len(step_times),
            "train_seconds": train_s,
            "samples_per_second": samples / train_s,
            "steady_samples_per_second": steady_sps,
            "warmup_batches": args.warmup,
            "fit_verbose": args.verbose,
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
    C.emit(result)


def _version() -> str:
    from importlib.metadata import version

    return version("deepctr-torch")


if __name__ == "__main__":
    main()
