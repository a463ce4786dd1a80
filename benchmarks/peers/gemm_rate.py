"""Sustained fp32 matmul rate on a device, for the "fraction of GEMM rate" column of the benchmark.

Works with either virtual environment (needs torch only). Prints one JSON line, e.g.::

    python benchmarks/peers/gemm_rate.py --device cpu --threads 2
    {"device": "cpu", "gemm": {"tower_4096x400x400": {"gflops": ...}, ...}, "reference_gflops": ...}

Shapes timed (m x k) @ (k x n), fp32, each repeated for about ``--seconds`` after a warm-up:

* ``tower_{B}x{h}x{h}``: a hidden layer of the DeepFM tower at batch B (default 4096 x 400 x 400);
* ``tower_in_{B}x{k}x{h}``: the first layer (input fields*emb -> 400; default k = 39*10 = 390, Criteo);
* ``tower_bwd_{h}x{B}x{h}``: the weight-gradient product of a hidden layer (h x B) @ (B x h);
* ``square_{N}``: a large square product (default N = 2048 on CPU, 8192 on GPU);
* on the CPU also ``onednn_tower_{B}x{h}x{h}``: the tower-shaped product through oneDNN
  (``torch.ops.mkldnn._linear_pointwise``, what adactr's CPU linear layers use), which on an AMD CPU
  can be faster than ``torch.mm``'s MKL.

``reference_gflops`` is the rate of the tower-shaped product (the first shape): FLOPs per sample x
samples/s of a library divided by it is the fraction of the achievable GEMM rate that library reaches
(the tower's products dominate DeepFM's FLOPs; see _common.dnn_flops_per_sample). ``onednn_reference_gflops``
is the oneDNN rate of the same shape, for a second, stricter fraction. On a GPU, TF32 is
left off (``torch.backends.cuda.matmul.allow_tf32 = False``), matching the libraries' fp32 default,
unless ``--tf32``.
"""

from __future__ import annotations

import argparse
import json
import time


def rate(torch, m: int, k: int, n: int, device: str, seconds: float, onednn: bool = False) -> dict:
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    out = torch.empty(m, n, device=device)
    cuda = device.startswith("cuda")
    if onednn:  # a @ b as a linear layer with weight b^T (n, k), as adactr's CPU Linear runs it
        bt = b.t().contiguous()

        def product():
            return torch.ops.mkldnn._linear_pointwise(a, bt, None, "none", [], "")
    else:
        def product():
            return torch.mm(a, b, out=out)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for _ in range(3):
        product()
    sync()
    # calibrate the repeat count to about `seconds`
    reps, t = 1, 0.0
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            product()
        sync()
        t = time.perf_counter() - t0
        if t >= seconds / 4 or reps >= 1 << 20:
            break
        reps *= 2
    reps = max(1, int(reps * seconds / max(t, 1e-9)))
    best = None
    for _ in range(3):  # best of 3 rounds: other processes share the CPU
        t0 = time.perf_counter()
        for _ in range(reps):
            product()
        sync()
        dt = (time.perf_counter() - t0) / reps
        best = dt if best is None else min(best, dt)
    flops = 2.0 * m * k * n
    return {"m": m, "k": k, "n": n, "seconds_per_mm": best, "gflops": flops / best / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=400)
    p.add_argument("--input-dim", type=int, default=390)
    p.add_argument("--square", type=int, default=None)
    p.add_argument("--seconds", type=float, default=1.0, help="time per round per shape")
    p.add_argument("--tf32", action="store_true")
    args = p.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    sq = args.square or (8192 if cuda else 2048)
    B, h = args.batch, args.hidden
    shapes = {
        f"tower_{B}x{h}x{h}": (B, h, h),
        f"tower_in_{B}x{args.input_dim}x{h}": (B, args.input_dim, h),
        f"tower_bwd_{h}x{B}x{h}": (h, B, h),
        f"square_{sq}": (sq, sq, sq),
    }
    res = {name: rate(torch, *s, args.device, args.seconds) for name, s in shapes.items()}
    onednn = not cuda and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    if onednn:
        res[f"onednn_tower_{B}x{h}x{h}"] = rate(torch, B, h, h, args.device, args.seconds, onednn=True)
    out = {
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "tf32": bool(args.tf32) if cuda else None,
        "gemm": {
            k: {kk: (round(vv, 6) if isinstance(vv, float) else vv) for kk, vv in v.items()}
            for k, v in res.items()
        },
        "reference_shape": f"tower_{B}x{h}x{h}",
        "reference_gflops": round(res[f"tower_{B}x{h}x{h}"]["gflops"], 2),
        "onednn_reference_gflops": round(res[f"onednn_tower_{B}x{h}x{h}"]["gflops"], 2) if onednn else None,
    }
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
