"""Speed side by side: DeepFM training samples/s and preparation rows/s + peak memory, adactr vs peers.

    python benchmarks/speed.py --device cpu --threads 2                      # Frappe_x1 + 5M Criteo-shaped rows
    python benchmarks/speed.py --device cuda --datasets frappe,criteo       # on a GPU machine

Every contender runs in its own process on the same raw file with the same model: DeepFM, embedding 10,
tower [400, 400, 400] ReLU, no dropout / batch norm / regularisation, Adam 1e-3, batch 4096, the same
number of epochs. Contenders:

- adactr: `adactr prepare` + `adactr train` (samples/s over the training loops, from metrics.json);
- FuxiCTR 2.3.10 and DeepCTR-Torch 0.3.0 (benchmarks/peers/, run by --peers-python, their own venv);
- a hand-written PyTorch loop with the data resident on the device (the reference ceiling; eager, and
  torch.compile'd on a GPU).

The fraction of the GEMM rate is FLOPs per training sample (3 x sum 2*in*out over the tower) x samples/s
divided by the measured rate of a tower-shaped fp32 matmul on the same device (peers/gemm_rate.py:
torch.mm; on the CPU also oneDNN's rate for that shape, a second and stricter column, since adactr's CPU
linear layers run through oneDNN, which is faster than torch.mm's MKL on this AMD CPU).
Peak memory of a preparation is the peak RSS of its process tree (FuxiCTR prepares in worker processes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers"
FRAPPE = ROOT.parent / "shared" / "data" / "frappe_x1"
FRAPPE_CATS = "user,item,daytime,weekday,isweekend,homework,cost,weather,country,city"


def _run_json(cmd: list[str], *, env: dict | None = None, timeout: int = 3600) -> dict:
    """Run a command that prints one JSON line last; return it (or an error record)."""
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"error": f"exit {p.returncode}: {' | '.join(tail)}", "wall": time.perf_counter() - t0}
    return json.loads(lines[-1])


def _peak_rss_mb_of(cmd: list[str]) -> tuple[float, float]:
    """(seconds, peak RSS MB of the child): runs the command in a wrapper process."""
    wrapper = ("import resource, subprocess, sys, time, json; t = time.perf_counter(); "
               "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True); "
               "print(json.dumps({'s': time.perf_counter() - t, 'rc': r.returncode, 'err': r.stderr[-400:], "
               "'kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))")
    p = subprocess.run([sys.executable, "-c", wrapper, *cmd], capture_output=True, text=True)
    d = json.loads(p.stdout.strip().splitlines()[-1])
    if d["rc"] != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])}... failed: {d['err']}")
    return d["s"], d["kb"] / 1024


def adactr_prepare(files: dict[str, Path], fmt: str, out: Path) -> dict:
    """Prepare the same files the peers prepare (one file: adactr splits 90/5/5 from it)."""
    cmd = [sys.executable, "-m", "adactr.cli", "prepare", "--format", fmt, "--train", str(files["train"]),
           "--out", str(out), "--quiet", "--overwrite"]
    cmd += ["--valid", str(files["valid"]), "--test", str(files["test"])] if "valid" in files else \
        ["--split", "0.9,0.05,0.05"]
    seconds, peak = _peak_rss_mb_of(cmd)
    rows = sum(json.loads((out / "meta.json").read_text())["rows"].values())
    return {"library": "adactr", "prep_seconds": seconds, "rows": rows, "prep_rows_per_second": rows / seconds,
            "peak_mb": peak}


def adactr_train(data: Path, args: argparse.Namespace, workdir: Path, *, variant: str = "") -> dict:
    """variant: "" (eager), "compiled" (train.compile) or "cuda-graph" (train.cuda_graph)."""
    run = workdir / "adactr-run"
    sets = {"model.embedding_dim": args.emb, "model.hidden": f"[{args.hidden}]", "model.dropout": 0,
            "model.batch_norm": "false", "train.batch_size": args.batch, "train.epochs": args.epochs,
            "train.patience": 1000, "train.lr": 1e-3, "train.threads": args.threads or 0,
            "train.compile": str(variant == "compiled").lower(),
            "train.cuda_graph": str(variant == "cuda-graph").lower()}
    cmd = [sys.executable, "-m", "adactr.cli", "train", "--data", str(data), "--model", "deepfm", "--out", str(run),
           "--overwrite", "--quiet", "--device", args.device]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"library": "adactr", "error": p.stderr.strip().splitlines()[-1:]}
    m = json.loads((run / "metrics.json").read_text())
    return {"library": "adactr" + (f"-{variant}" if variant else ""),
            "samples_per_second": m["samples_per_second"], "train_seconds": m["train_seconds"],
            "params": m["params"], "test_auc": m["test"]["auc"], "cuda_graph": m.get("cuda_graph")}


def _print_prepare(rec: dict) -> None:
    print("\n| preparation | rows | seconds | rows/s | peak memory (MB) |")
    print("|---|---|---|---|---|")
    for r in rec["prepare"]:
        if "error" in r:
            print(f"| {r.get('library')} | failed: {r['error']} | | | |")
            continue
        rows = r.get("rows") or r.get("prep_rows") or 0
        # adactr: one process, exact peak RSS. FuxiCTR prepares in worker processes: the peak of
        # the whole process tree (PSS, sampled every 0.2 s), and its main process's peak RSS.
        peak = f"{r['peak_mb']:,.0f}" if "peak_mb" in r else \
            f"{r.get('peak_tree_pss_mb', 0):,.0f} (tree; main process {r.get('peak_rss_mb', 0):,.0f})"
        rps = r.get("prep_rows_per_second") or 0
        print(f"| {r['library']} | {rows:,} | {r.get('prep_seconds', 0):.2f} | {rps:,.0f} | {peak} |")
    if len(rec["prepare"]) == 2 and all("prep_rows_per_second" in r for r in rec["prepare"]):
        a, f = rec["prepare"]
        print(f"adactr / {f.get('library')} rows/s: {a['prep_rows_per_second'] / f['prep_rows_per_second']:.1f}x")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every contender")
    ap.add_argument("--datasets", default="frappe,criteo")
    ap.add_argument("--criteo-rows", type=int, default=5_000_000)
    ap.add_argument("--epochs", type=int, default=1, help="epochs on the Criteo-shaped rows")
    ap.add_argument("--frappe-epochs", type=int, default=None,
                    help="epochs on Frappe_x1 (default --epochs; on a GPU one epoch is a fraction of a second)")
    ap.add_argument("--deepctr-encoder", default="sklearn", choices=["sklearn", "factorize"],
                    help="DeepCTR-Torch label encoding (its own example: sklearn; factorize is faster, same model)")
    ap.add_argument("--emb", type=int, default=10)
    ap.add_argument("--hidden", default="400,400,400")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--peers-python", default=str(ROOT / ".bench-venv" / "bin" / "python"),
                    help="python of the peers' venv (see benchmarks/peers/README.md); missing = peers skipped")
    ap.add_argument("--peers", default="fuxictr,deepctr", help="which peers to run")
    ap.add_argument("--adactr-compile", action="store_true", help="also time adactr with train.compile=true")
    ap.add_argument("--adactr-cuda-graph", action="store_true",
                    help="also time adactr with train.cuda_graph=true (the step replayed as a CUDA graph)")
    ap.add_argument("--no-prepare-peers", action="store_true", help="skip the peers' preparation timing")
    ap.add_argument("--prepare-only", action="store_true", help="only the preparation comparison (no training)")
    ap.add_argument("--frappe-dir", type=Path, default=FRAPPE)
    ap.add_argument("--out", type=Path, help="write all records as JSON here")
    args = ap.parse_args(argv)

    if args.adactr_cuda_graph and args.device != "cuda":
        print("note: --adactr-cuda-graph needs --device cuda (CUDA graphs): not timed", file=sys.stderr)
    peers_py = args.peers_python if Path(args.peers_python).exists() else None
    peers = [p for p in args.peers.split(",") if p] if peers_py else []
    if not peers_py:
        print(f"note: {args.peers_python} not found: peers skipped", file=sys.stderr)
    base_epochs = args.epochs
    common0 = ["--emb", str(args.emb), "--hidden", args.hidden, "--batch", str(args.batch),
               "--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    env = dict(os.environ)
    records: dict[str, dict] = {}
    def measure_gemm() -> dict:
        g = _run_json([sys.executable, str(PEERS / "gemm_rate.py"), "--device", args.device,
                       *(["--threads", str(args.threads)] if args.threads else []), "--input-dim", "400"])
        dnn = g.get("onednn_reference_gflops")
        print(f"GEMM rate ({g.get('reference_shape')}): {g.get('reference_gflops')} GFLOP/s on {args.device}"
              f"{f' (oneDNN: {dnn} GFLOP/s)' if dnn else ''}", file=sys.stderr)
        return g

    # This shared CPU's matmul rate drifts by ~10% over a run: it is measured before and after each
    # dataset's training runs, and the higher of the two is the reference (the lower fraction).
    gemms = [] if args.prepare_only else [measure_gemm()]

    with tempfile.TemporaryDirectory(prefix="adactr-speed-") as tmp_s:
        tmp = Path(tmp_s)
        for ds in args.datasets.split(","):
            args.epochs = (args.frappe_epochs or base_epochs) if ds == "frappe" else base_epochs
            common = [*common0, "--epochs", str(args.epochs)]
            if ds == "frappe":
                files = {s: args.frappe_dir / f"{s}.csv.gz" for s in ("train", "valid", "test")}
                fmt, src = "csv", ["--train", str(files["train"]), "--label", "label", "--categorical", FRAPPE_CATS]
                prep_src = src + ["--valid", str(files["valid"]), "--test", str(files["test"])]
                flops = None
            else:
                from adactr.data.synthetic import write_criteo_like

                t0 = time.perf_counter()
                files = {"train": write_criteo_like(tmp / "criteo_train.txt", args.criteo_rows, seed=0)}
                print(f"generated {args.criteo_rows} Criteo-shaped rows in {time.perf_counter() - t0:.1f}s",
                      file=sys.stderr)
                fmt, src = "criteo", ["--criteo", str(files["train"])]
                prep_src = src
                flops = None
            rec: dict = {"train": [], "prepare": []}
            # preparation: adactr vs FuxiCTR (the comparison), same raw files
            prepared = tmp / f"{ds}-prepared"
            rec["prepare"].append(adactr_prepare(files, fmt, prepared))
            if peers_py and "fuxictr" in peers and not args.no_prepare_peers:
                r = _run_json([peers_py, str(PEERS / "fuxictr_deepfm.py"), *prep_src, *common, "--prepare-only"],
                              env=env)
                r["library"] = "fuxictr"
                rec["prepare"].append(r)
            # training
            if args.prepare_only:
                _print_prepare(rec)
                records[ds] = rec
                continue
            rec["train"].append(adactr_train(prepared, args, tmp))
            if args.adactr_compile:
                rec["train"].append(adactr_train(prepared, args, tmp, variant="compiled"))
            if args.adactr_cuda_graph and args.device == "cuda":
                rec["train"].append(adactr_train(prepared, args, tmp, variant="cuda-graph"))
            for peer in peers:
                script = {"fuxictr": "fuxictr_deepfm.py", "deepctr": "deepctr_deepfm.py"}[peer]
                extra = ["--valid", str(files["valid"])] if peer == "fuxictr" and ds == "frappe" else []
                if peer == "deepctr":
                    extra += ["--encoder", args.deepctr_encoder]
                rec["train"].append(_run_json([peers_py, str(PEERS / script), *src, *extra, *common], env=env))
            hand = [peers_py or sys.executable, str(PEERS / "handwritten_deepfm.py"), *src, *common]
            rec["train"].append(_run_json(hand))
            if args.device == "cuda":
                rec["train"].append(_run_json(hand + ["--compile"]))
            for r in rec["train"]:
                flops = r.get("flops_per_sample") or flops
            records[ds] = rec
            gemms.append(measure_gemm())
            around = gemms[-2:]
            ref = max((g.get("reference_gflops") or 0 for g in around), default=0) or None
            ref_dnn = max((g.get("onednn_reference_gflops") or 0 for g in around), default=0) or None
            rec["gemm_reference_gflops"], rec["gemm_onednn_reference_gflops"] = ref, ref_dnn

            # ---- table ----
            print(f"\n### {ds} ({args.device}, threads {args.threads or 'default'}, epochs {args.epochs}, "
                  f"batch {args.batch}, emb {args.emb}, tower [{args.hidden}]; GEMM reference {ref} GFLOP/s"
                  f"{f', oneDNN {ref_dnn}' if ref_dnn else ''}: the higher of "
                  f"{' and '.join(str(g.get('reference_gflops')) for g in around)} measured before and after)")
            trains = [r for r in rec["train"] if "samples_per_second" in r]
            peer_best = max((r["samples_per_second"] for r in trains if r.get("library", "").startswith(
                ("fuxictr", "deepctr"))), default=None)
            hand_best = max((r["samples_per_second"] for r in trains if r.get("library", "").startswith(
                "handwritten")), default=None)
            print("| library | samples/s | x faster peer | % of hand-written | % of GEMM rate | % of oneDNN rate |")
            print("|---|---|---|---|---|---|")
            for r in rec["train"]:
                if "samples_per_second" not in r:
                    print(f"| {r.get('library', '?')} | failed: {r.get('error')} | | | | |")
                    continue
                sps = r["samples_per_second"]
                xp = f"{sps / peer_best:.2f}" if peer_best else "-"
                xh = f"{100 * sps / hand_best:.0f}%" if hand_best else "-"
                xg = f"{100 * (flops or 0) * sps / (ref * 1e9):.0f}%" if ref and flops else "-"
                xd = f"{100 * (flops or 0) * sps / (ref_dnn * 1e9):.0f}%" if ref_dnn and flops else "-"
                print(f"| {r['library']} | {sps:,.0f} | {xp} | {xh} | {xg} | {xd} |")
                if r.get("cuda_graph"):
                    print(f"|   (cuda_graph: {r['cuda_graph']}) | | | | | |")
            _print_prepare(rec)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"gemm": gemms, "records": records, "args": {k: str(v) for k, v in
                                                                                vars(args).items()}}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
