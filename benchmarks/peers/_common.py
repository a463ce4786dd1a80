"""Shared helpers of the peer scripts (command line, inputs, memory sampling, FLOP count, JSON line).

Imported by the scripts beside it (a script's own folder is on ``sys.path``), so every peer takes the
same arguments and measures the same way. It depends on the Python standard library alone: the peers
run in their own virtual environment (``.bench-venv``) where adactr is not installed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time

CRITEO_DENSE = [f"I{i}" for i in range(1, 14)]
CRITEO_SPARSE = [f"C{i}" for i in range(1, 27)]
CRITEO_COLUMNS = ["label", *CRITEO_DENSE, *CRITEO_SPARSE]


def build_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train", help="training CSV (header row; may be .gz, then decompressed untimed)")
    src.add_argument(
        "--criteo",
        help="Criteo-layout TSV without header: label, I1..I13, C1..C26 (may be .gz)",
    )
    p.add_argument("--valid", help="validation CSV (optional; same layout as --train)")
    p.add_argument("--test", help="test CSV (optional; only fitted/transformed in preparation)")
    p.add_argument("--label", default="label")
    p.add_argument("--categorical", default="", help="comma-separated categorical columns (--train)")
    p.add_argument("--numerical", default="", help="comma-separated numerical columns (--train)")
    p.add_argument(
        "--dense",
        choices=["bucket", "numeric"],
        default="bucket",
        help="Criteo I1..I13: 'bucket' = FuxiCTR's log^2 bucketing into categorical fields (the same "
        "model in every library; default), 'numeric' = each library's own numeric-feature handling",
    )
    p.add_argument(
        "--min-count",
        type=int,
        default=None,
        help="categories seen fewer times in train become OOV (default 1 for --train, 10 for --criteo)",
    )
    p.add_argument("--emb", type=int, default=10)
    p.add_argument("--hidden", default="400,400,400")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave)")
    p.add_argument("--warmup", type=int, default=5, help="batches left out of the steady-state rate")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--workdir", default=None, help="scratch folder (default: a fresh temp folder)")
    p.add_argument("--prepare-only", action="store_true", help="time data preparation only, then exit")
    return p


def finish_args(args: argparse.Namespace) -> argparse.Namespace:
    args.hidden_units = [int(h) for h in args.hidden.split(",") if h.strip()]
    if args.criteo:
        if args.dense == "bucket":
            args.cat_cols = CRITEO_DENSE + CRITEO_SPARSE
            args.num_cols = []
        else:
            args.cat_cols = list(CRITEO_SPARSE)
            args.num_cols = list(CRITEO_DENSE)
        args.label = "label"
        if args.min_count is None:
            args.min_count = 10
    else:
        args.cat_cols = [c.strip() for c in args.categorical.split(",") if c.strip()]
        args.num_cols = [c.strip() for c in args.numerical.split(",") if c.strip()]
        if args.min_count is None:
            args.min_count = 1
    if not args.cat_cols and not args.num_cols:
        raise SystemExit("no feature columns: give --categorical/--numerical, or --criteo")
    if args.workdir is None:
        args.workdir = tempfile.mkdtemp(prefix="adactr-peer-")
        args._own_workdir = True
    else:
        os.makedirs(args.workdir, exist_ok=True)
        args._own_workdir = False
    args.prepare_only = bool(args.prepare_only)
    return args


def cleanup(args: argparse.Namespace) -> None:
    if getattr(args, "_own_workdir", False):
        shutil.rmtree(args.workdir, ignore_errors=True)


def plain_copy(path: str | None, workdir: str, suffix: str | None = None) -> tuple[str | None, float]:
    """Return a path to an uncompressed copy of ``path`` (decompressed into ``workdir`` if it is .gz).

    Decompression is not part of any library's preparation: the seconds it took come back separately.
    ``suffix`` renames the copy's extension (FuxiCTR reads only names ending in its data format); an
    uncompressed file that only needs another name gets a symbolic link.
    """
    if path is None:
        return None, 0.0
    base = os.path.basename(path)
    if not path.endswith(".gz") and (suffix is None or base.endswith(suffix)):
        return path, 0.0
    t0 = time.perf_counter()
    name = base[:-3] if base.endswith(".gz") else base
    if suffix is not None and not name.endswith(suffix):
        name = os.path.splitext(name)[0] + suffix
    out = os.path.join(workdir, "raw", name)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.lexists(out):
        os.remove(out)
    if not path.endswith(".gz"):  # only the name must change: a link will do
        os.symlink(os.path.abspath(path), out)
    else:
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 22)
    return out, time.perf_counter() - t0


def count_lines(path: str) -> int:
    n = 0
    with open(path, "rb") as f:
        while True:
            buf = f.read(1 << 24)
            if not buf:
                break
            n += buf.count(b"\n")
    return n


def log2_bucket(x):
    """FuxiCTR's Criteo bucketing (fuxictr.datasets.criteo.convert_to_bucket), numpy form.

    Missing values are 0 first (FuxiCTR's float fill_na); values > 2 become floor(ln(v)^2), the rest are
    truncated to integers.
    """
    import numpy as np

    x = np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0)
    out = x.copy()
    big = x > 2
    out[big] = np.floor(np.log(x[big]) ** 2)
    return out.astype(np.int64)


# --------------------------------------------------------------------------------------------- memory
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _tree(pid: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemorySampler:
    """Samples the proportional set size (PSS) of this process and all its descendants every 200 ms.

    ``peak_rss_mb`` (ru_maxrss) sees this process alone; FuxiCTR 2.3.10 does its preparation and data
    loading in Ray worker processes, so the tree's PSS (shared pages split among the processes that map
    them, nothing counted twice) is the figure that compares libraries fairly.
    """

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self.peak_kb = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        pids, n = [me], 0
        while not self._stop.is_set():
            if n % 5 == 0:  # the process tree is re-read every 5th sample (listing /proc is not free)
                pids = _tree(me)
            n += 1
            total = sum(_pss_kb(p) for p in pids)
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return round(self.peak_kb / 1024.0, 1)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


# ---------------------------------------------------------------------------------------------- flops
def dnn_flops_per_sample(input_dim: int, hidden_units: list[int]) -> int:
    """Training FLOPs per sample of DeepFM's tower: 3 x sum over Linear layers of 2*in*out.

    FLOPs = 3 * sum_l 2 * in_l * out_l, over the layers input_dim -> h1 -> ... -> hk -> 1:
    2*in*out for a Linear's forward (one multiply and one add per weight), x3 for forward plus
    backward (grad w.r.t. input and grad w.r.t. weight cost one forward each). Embedding look-ups, the
    FM term (O(fields*emb)), activations, loss and the optimiser are left out: they are memory-bound
    and are under 1% of the tower's FLOPs for these shapes.
    """
    dims = [input_dim, *hidden_units, 1]
    return 3 * sum(2 * a * b for a, b in zip(dims[:-1], dims[1:], strict=True))


def epoch_batch_sizes(n_rows: int, batch: int, epochs: int) -> list[int]:
    """Sizes of the batches of ``epochs`` passes over ``n_rows`` rows (the last batch may be short)."""
    per_epoch = [batch] * (n_rows // batch) + ([n_rows % batch] if n_rows % batch else [])
    return per_epoch * epochs


def steady_rate(
    step_times: list[float], batch_sizes: list[int], t_start: float, t_end: float, warmup: int
) -> tuple[float | None, float | None]:
    """Samples/s over the steps after the first ``warmup`` (from the end of step ``warmup``)."""
    if len(step_times) <= warmup + 1:
        return None, None
    t0 = step_times[warmup - 1] if warmup > 0 else t_start
    secs = t_end - t0
    samples = sum(batch_sizes[warmup:])
    return secs, (samples / secs if secs > 0 else None)


def set_threads(n: int | None) -> None:
    if n:
        import torch

        torch.set_num_threads(n)
        try:
            torch.set_num_interop_threads(max(1, min(n, 2)))
        except RuntimeError:
            pass


def emit(result: dict) -> None:
    """Print the one JSON line (last line of stdout); rounds floats for readability."""
    out = {}
    for k, v in result.items():
        if isinstance(v, float):
            v = None if math.isnan(v) else round(v, 4 if abs(v) < 100 else 1)
        out[k] = v
    sys.stdout.flush()
    print(json.dumps(out), flush=True)


def torch_info() -> dict:
    import torch

    return {"torch": torch.__version__, "torch_threads": torch.get_num_threads()}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
