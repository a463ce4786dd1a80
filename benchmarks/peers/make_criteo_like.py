"""Write a small Criteo-layout TSV (label, I1..I13, C1..C26; no header) for checking the peer scripts.

Uses ``adactr.data.synthetic.write_criteo_like(path, n_rows, seed)`` when adactr is importable (the
benchmark's own generator), else a numpy stand-in good enough to exercise the peers' Criteo path::

    python benchmarks/peers/make_criteo_like.py /tmp/criteo_50k.tsv --rows 50000 [--standin]

The stand-in: label ~ Bernoulli(0.25); I1..I13 heavy-tailed non-negative integers (I2 may be -1..-3),
about 10% missing (empty field); C1..C26 8-hex-digit tokens drawn Zipf-like from per-column
vocabularies of 10 to 200,000 values, about 5% missing. Its statistics are not Criteo's: it only fixes
the layout and the mix of frequent and rare categories that min-count filtering meets.
"""

from __future__ import annotations

import argparse
import sys


def standin(path: str, n_rows: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    cols = [rng.binomial(1, 0.25, n_rows).astype(str)]
    for i in range(13):
        v = np.floor(rng.lognormal(mean=1.0 + 0.3 * i, sigma=1.5, size=n_rows)).astype(np.int64)
        if i == 1:
            v -= rng.integers(0, 4, n_rows) * (rng.random(n_rows) < 0.05)
        s = v.astype(str)
        s[rng.random(n_rows) < 0.10] = ""
        cols.append(s)
    sizes = np.geomspace(10, 200_000, 26).astype(np.int64)
    for j in range(26):
        ranks = np.minimum(rng.zipf(1.2, n_rows), sizes[j]) - 1
        tokens = np.array([f"{(h * 2654435761 + j * 97) & 0xFFFFFFFF:08x}" for h in range(int(sizes[j]))])
        s = tokens[ranks]
        s[rng.random(n_rows) < 0.05] = ""
        cols.append(s)
    with open(path, "w") as f:
        step = 100_000
        for a in range(0, n_rows, step):
            block = [c[a : a + step] for c in cols]
            f.write("\n".join("\t".join(row) for row in zip(*block, strict=True)))
            f.write("\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--standin", action="store_true", help="use the numpy stand-in even if adactr is there")
    args = p.parse_args()
    if not args.standin:
        try:
            from adactr.data.synthetic import write_criteo_like
        except ImportError:
            write_criteo_like = None
        if write_criteo_like is not None:
            write_criteo_like(args.path, args.rows, args.seed)
            print(f"wrote {args.rows} rows with adactr.data.synthetic to {args.path}", file=sys.stderr)
            return
    standin(args.path, args.rows, args.seed)
    print(f"wrote {args.rows} rows with the numpy stand-in to {args.path}", file=sys.stderr)


if __name__ == "__main__":
    main()
