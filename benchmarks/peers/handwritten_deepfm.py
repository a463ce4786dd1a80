"""Hand-written PyTorch DeepFM with the data resident on the device: the reference ceiling.

Needs torch + numpy, and polars or pandas (polars is used when importable); adactr is not used, so it
runs under either virtual environment, or on a GPU machine's stock python. Prints one JSON line::

    .venv/bin/python benchmarks/peers/handwritten_deepfm.py \
        --train ../shared/data/frappe_x1/train.csv.gz --label label \
        --categorical user,item,daytime,weekday,isweekend,homework,cost,weather,country,city --threads 2
    python benchmarks/peers/handwritten_deepfm.py --criteo rows.tsv --device cuda --compile

Preparation: one read of each file (polars ``read_csv``, else pandas), then per categorical column a
vectorised vocabulary: value counts over the train rows, the values seen at least ``--min-count``
times get ids 1..k, everything else (rare, missing-as-its-own-value excepted, unseen in valid/test) 0.
Criteo I1..I13 are log^2-bucketed like FuxiCTR's ``convert_to_bucket`` (``--dense bucket``) or, with
``--dense numeric``, min-max scaled and embedded FuxiCTR-style (value x a learned vector per field).

Model (same as the libraries'): one embedding table of (sum of vocabularies) x emb with per-field
offsets, a first-order table of width 1 plus a bias, the FM second-order term
0.5 * sum_d((sum_f e)^2 - sum_f e^2), and the MLP fields*emb -> 400 -> 400 -> 400 -> 1 with ReLU, no
dropout, no batch norm; embeddings N(0, 1e-4), Linear weights Xavier-normal, biases 0 (FuxiCTR's init).
Adam (lr 1e-3; ``fused=True`` on CUDA), BCE-with-logits, mean over the batch, no regularisation.

Training: the whole encoded data set is one int64 tensor (and a float label tensor) on the device; each
epoch draws ``torch.randperm`` on the device and slices it into batches (no DataLoader, no host copy, no
per-step sync: the loss is accumulated on the device). ``--compile`` wraps the model in
``torch.compile`` for full batches (the last, smaller batch runs eager so no second graph is built);
the compile time falls in the first batches, which the steady-state figure leaves out.
"""

from __future__ import annotations

import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import _common as C  # noqa: E402


# ------------------------------------------------------------------------------------------ preparation
def _have_polars() -> bool:
    try:
        import polars  # noqa: F401

        return True
    except ImportError:
        return False


def read_columns(args, path: str, backend: str) -> tuple[dict, int]:
    """Read one file; returns ({column: numpy array or polars Series}, rows)."""
    import numpy as np

    cat_str = [c for c in args.cat_cols if not (args.criteo and c in C.CRITEO_DENSE)]
    num_read = [c for c in C.CRITEO_DENSE] if args.criteo else list(args.num_cols)
    if backend == "polars":
        import polars as pl

        if args.criteo:
            schema = {c: (pl.String if c in C.CRITEO_SPARSE else pl.Float64) for c in C.CRITEO_COLUMNS}
            df = pl.read_csv(path, separator="\t", has_header=False, schema=schema)
        else:
            over = {c: pl.String for c in cat_str}
            over.update({c: pl.Float64 for c in num_read})
            over[args.label] = pl.Float32
            df = pl.read_csv(path, schema_overrides=over, columns=[args.label, *cat_str, *num_read])
        cols = {c: df.get_column(c) for c in cat_str}
        for c in num_read:
            cols[c] = df.get_column(c).fill_null(0.0).to_numpy()
        cols[args.label] = df.get_column(args.label).cast(pl.Float32).to_numpy()
        return cols, df.height
    import pandas as pd

    if args.criteo:
        df = pd.read_csv(
            path, sep="\t", header=None, names=C.CRITEO_COLUMNS, dtype={c: str for c in C.CRITEO_SPARSE}
        )
    else:
        df = pd.read_csv(path, dtype={c: str for c in cat_str}, usecols=[args.label, *cat_str, *num_read])
    cols = {c: df[c] for c in cat_str}
    for c in num_read:
        cols[c] = df[c].fillna(0.0).to_numpy(dtype=np.float64)
    cols[args.label] = df[args.label].to_numpy(dtype=np.float32)
    return cols, len(df)


def fit_vocab(values, min_count: int, backend: str):
    """Vocabulary of one column from its train values: (keys, ids 1..k) for keys seen >= min_count."""
    import numpy as np

    if backend == "polars" and not isinstance(values, np.ndarray):
        vc = values.fill_null("").value_counts()
        vc = vc.filter(vc.get_column("count") >= min_count)
        keys = vc.get_column(values.name)
        return keys, np.arange(1, len(keys) + 1, dtype=np.int64)
    import pandas as pd

    if not isinstance(values, np.ndarray):
        values = values.fillna("").to_numpy()
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    counts = np.bincount(codes, minlength=len(uniques))
    keep = counts >= min_count
    return pd.Index(uniques[keep]), np.arange(1, int(keep.sum()) + 1, dtype=np.int64)


def apply_vocab(values, vocab, backend: str):
    import numpy as np

    keys, ids = vocab
    if backend == "polars" and not isinstance(values, np.ndarray):
        import polars as pl

        return values.fill_null("").replace_strict(keys, ids, default=0, return_dtype=pl.Int64).to_numpy()
    if not isinstance(values, np.ndarray):
        values = values.fillna("").to_numpy()
    pos = keys.get_indexer(values)
    return np.where(pos >= 0, pos + 1, 0).astype(np.int64)


def prepare(args, paths: dict, backend: str) -> dict:
    """Encode every given file with the train vocabularies. Returns the train arrays and metadata."""
    import numpy as np

    splits = [k for k in ("train", "valid", "test") if paths.get(k)]
    frames = {}
    rows = {}
    for k in splits:
        frames[k], rows[k] = read_columns(args, paths[k], backend)
    bucket = args.criteo and args.dense == "bucket"
    if bucket:  # ints from floats: the vocabulary code path for arrays
        for k in splits:
            for c in C.CRITEO_DENSE:
                frames[k][c] = C.log2_bucket(frames[k][c])
    vocab = {c: fit_vocab(frames["train"][c], args.min_count, backend) for c in args.cat_cols}
    num_cols = list(args.num_cols)
    if num_cols:  # min-max scale with train statistics
        lo = {c: float(np.min(frames["train"][c])) for c in num_cols}
        hi = {c: float(np.max(frames["train"][c])) for c in num_cols}
    out = {}
    for k in splits:
        xc = np.empty((rows[k], len(args.cat_cols)), dtype=np.int64)
        for j, c in enumerate(args.cat_cols):
            xc[:, j] = apply_vocab(frames[k][c], vocab[c], backend)
        xn = None
        if num_cols:
            xn = np.empty((rows[k], len(num_cols)), dtype=np.float32)
            for j, c in enumerate(num_cols):
                span = hi[c] - lo[c] or 1.0
                xn[:, j] = (frames[k][c] - lo[c]) / span
        out[k] = (xc, xn, np.asarray(frames[k][args.label], dtype=np.float32))
        frames[k] = None
    return {
        "train": out["train"],
        "rows": rows,
        "vocab_sizes": [len(vocab[c][1]) + 1 for c in args.cat_cols],
        "n_num": len(num_cols),
    }


# ---------------------------------------------------------------------------------------------- model
def build_model(torch, vocab_sizes: list[int], n_num: int, emb: int, hidden: list[int]):
    nn = torch.nn

    class DeepFM(nn.Module):
        def __init__(self):
            super().__init__()
            offs = [0]
            for v in vocab_sizes[:-1]:
                offs.append(offs[-1] + v)
            self.register_buffer("offsets", torch.tensor(offs, dtype=torch.long), persistent=False)
            total = sum(vocab_sizes)
            self.emb = nn.Embedding(total, emb)
            self.lin = nn.Embedding(total, 1)
            self.bias = nn.Parameter(torch.zeros(1))
            self.n_num = n_num
            if n_num:
                self.num_emb = nn.Parameter(torch.empty(n_num, emb))
                self.num_lin = nn.Parameter(torch.empty(n_num))
            fields = len(vocab_sizes) + n_num
            dims = [fields * emb, *hidden]
            layers = []
            for a, b in zip(dims[:-1], dims[1:], strict=True):
                layers += [nn.Linear(a, b), nn.ReLU()]
            layers.append(nn.Linear(dims[-1], 1))
            self.mlp = nn.Sequential(*layers)
            for p in (self.emb.weight, self.lin.weight):
                nn.init.normal_(p, std=1e-4)
            if n_num:
                nn.init.normal_(self.num_emb, std=1e-4)
                nn.init.normal_(self.num_lin, std=1e-4)
            for m in self.mlp:
                if isinstance(m, nn.Linear):
                    nn.init.xavier_normal_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, xc, xn=None):
            idx = xc + self.offsets
            e = self.emb(idx)  # (B, F, d)
            first = self.lin(idx).sum(dim=(1, 2)) + self.bias
            if self.n_num:
                e = torch.cat([e, xn.unsqueeze(-1) * self.num_emb], dim=1)
                first = first + (xn * self.num_lin).sum(dim=1)
            s = e.sum(dim=1)
            fm = 0.5 * (s * s - (e * e).sum(dim=1)).sum(dim=1)
            deep = self.mlp(e.flatten(1)).squeeze(1)
            return first + fm + deep

    return DeepFM()


def main() -> None:
    parser = C.build_parser(__doc__.splitlines()[0])
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode (default, reduce-overhead = CUDA graphs, max-autotune)",
    )
    parser.add_argument("--backend", choices=["auto", "polars", "pandas"], default="auto")
    args = C.finish_args(parser.parse_args())
    try:
        run(args)
    finally:
        C.cleanup(args)


def run(args) -> None:
    C.set_threads(args.threads)
    import torch
    import torch.nn.functional as F

    backend = args.backend
    if backend == "auto":
        backend = "polars" if _have_polars() else "pandas"
    raw = {}
    decompress_s = 0.0
    for split, path in (("train", args.train or args.criteo), ("valid", args.valid), ("test", args.test)):
        raw[split], s = C.plain_copy(path, args.workdir)
        decompress_s += s

    with C.MemorySampler() as mem:
        t0 = time.perf_counter()
        data = prepare(args, raw, backend)
        prep_s = time.perf_counter() - t0
    prep_rows = sum(data["rows"].values())
    result = {
        "library": "handwritten" + ("-compiled" if args.compile else ""),
        "dataset": "criteo" if args.criteo else os.path.basename(args.train),
        "device": args.device,
        "prep_seconds": prep_s,
        "prep_rows": prep_rows,
        "prep_rows_per_second": prep_rows / prep_s,
        "prep_backend": backend,
        "decompress_seconds": decompress_s,
        "dense_mode": args.dense if args.criteo else None,
    }
    if args.prepare_only:
        result.update({"peak_rss_mb": C.peak_rss_mb(), "peak_tree_pss_mb": mem.peak_mb})
        C.emit(result)
        return

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    vocab_sizes, n_num = data["vocab_sizes"], data["n_num"]
    xc_np, xn_np, y_np = data.pop("train")
    Xc = torch.from_numpy(xc_np).to(dev)
    Xn = torch.from_numpy(xn_np).to(dev) if xn_np is not None else None
    Y = torch.from_numpy(y_np).to(dev)
    del data, xc_np, xn_np, y_np
    gc.collect()

    model = build_model(torch, vocab_sizes, n_num, args.emb, args.hidden_units).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, **({"fused": True} if cuda else {}))
    n_params = sum(p.numel() for p in model.parameters())
    flops = C.dnn_flops_per_sample((len(vocab_sizes) + n_num) * args.emb, args.hidden_units)
    fwd_full = torch.compile(model, mode=args.compile_mode) if args.compile else model

    def step(fwd, xc, xn, y):
        opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(fwd(xc, xn), y)
        loss.backward()
        opt.step()
        return loss.detach()

    n, B = Xc.shape[0], args.batch
    n_batches = (n + B - 1) // B
    batch_sizes = C.epoch_batch_sizes(n, B, args.epochs)
    w = args.warmup
    model.train()
    loss_sum = torch.zeros((), device=dev)
    t_w = None
    C.sync(args.device)
    t0 = time.perf_counter()
    k = 0
    for _ in range(args.epochs):
        perm = torch.randperm(n, device=dev)
        for i in range(n_batches):
            idx = perm[i * B : (i + 1) * B]
            full = idx.shape[0] == B
            xn = Xn[idx] if Xn is not None else None
            loss_sum += step(fwd_full if full else model, Xc[idx], xn, Y[idx])
            k += 1
            if k == w:
                C.sync(args.device)
                t_w = time.perf_counter()
    C.sync(args.device)
    t1 = time.perf_counter()
    samples = sum(batch_sizes)
    train_s = t1 - t0
    steady_sps = sum(batch_sizes[w:]) / (t1 - t_w) if t_w is not None and k > w else None
    result.update(
        {
            "samples": samples,
            "batches": k,
            "train_seconds": train_s,
            "samples_per_second": samples / train_s,
            "steady_samples_per_second": steady_sps,
            "warmup_batches": w,
            "compiled": bool(args.compile),
            "compile_mode": (args.compile_mode or "default") if args.compile else None,
            "mean_train_loss": float(loss_sum.item()) / max(k, 1),
            "peak_rss_mb": C.peak_rss_mb(),
            "peak_device_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
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


if __name__ == "__main__":
    main()
