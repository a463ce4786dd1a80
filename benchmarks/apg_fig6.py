"""APG Fig. 6: PCA of the generated S_i of one APG layer, one colour per group, written as a PNG.

    adactr train --data prepared/ml1m --model deepfm --out runs/ml1m-apg-user \
        --set model.tower_layer=apg --set model.apg.condition=group --set model.apg.condition_fields=[user_id]
    python benchmarks/apg_fig6.py --run runs/ml1m-apg-user --data prepared/ml1m --by domain --out fig6.png

(Conditioned on the domain alone, S_i takes one value per domain: three points. Conditioned on the user,
every row has its own S_i, and the colours show how the domains spread.)

The run must use APG v4 or v5 (only S_i is generated, eqs. 5-7). Rows of the test split are fed through
the trained model; a forward pre-hook on the chosen APG layer captures its condition z_i, the layer's
generator turns it into S_i (K x K), and the flattened S_i are projected on their first two principal
components. Groups are the domain column (``--by domain``, the default) or any categorical field
(``--by FIELD``, its most frequent ``--top`` values).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from adactr.data.tensors import SplitArrays
from adactr.nn.apg import APGLinear, APGVersion
from adactr.train.run import load_run


def generated_s(model: torch.nn.Module, batch, layer_index: int) -> np.ndarray:
    layers = [m for m in model.modules() if isinstance(m, APGLinear)]
    if not layers:
        raise SystemExit("this run has no APG layer (train with --set model.tower_layer=apg)")
    layer = layers[layer_index]
    if layer.version not in (APGVersion.V4, APGVersion.V5):
        raise SystemExit(f"S_i alone is generated only by v4/v5; this run uses {layer.version.value}")
    captured: dict[str, torch.Tensor] = {}

    def hook(_module, args):
        x, cond = args[0], args[1] if len(args) > 1 else None
        captured["z"] = x if layer.self_wise else cond

    handle = layer.register_forward_pre_hook(hook)
    with torch.no_grad():
        model(batch)
        S = layer.generator(captured["z"])["S"]  # (B, K, K)
    handle.remove()
    return S.flatten(1).cpu().numpy()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("fig6.png"))
    ap.add_argument("--rows", type=int, default=6000)
    ap.add_argument("--layer", type=int, default=0, help="which APG layer (0 = first hidden layer)")
    ap.add_argument("--by", default="domain", help="'domain' or a categorical field name")
    ap.add_argument("--top", type=int, default=5, help="with a field: its most frequent values")
    args = ap.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, schema, _, _ = load_run(args.run)
    split = SplitArrays.load(args.data / "test")
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(len(split), size=min(args.rows, len(split)), replace=False))
    batch = SplitArrays({k: np.asarray(a[rows]) for k, a in split.arrays.items()}).to_tensors(
        torch.device("cpu")).all()
    S = generated_s(model, batch, args.layer)
    if args.by == "domain":
        if batch.domain is None:
            raise SystemExit("the dataset has no domain column: pass --by FIELD")
        groups = batch.domain.numpy()
        names = dict(enumerate(schema.domain_names))
        keep = np.unique(groups)
    else:
        j = [f.name for f in schema.cat_fields].index(args.by)
        groups = batch.cat[:, j].numpy()
        values, counts = np.unique(groups, return_counts=True)
        keep = values[np.argsort(-counts)[: args.top]]
        vocab = __import__("json").loads((args.run / "vocab" / f"{args.by}.json").read_text())
        names = {int(v): (vocab[v - 2] if v >= 2 else ("<missing>", "<unseen>")[v]) for v in keep}
    X = S - S.mean(0)
    _, sv, Vt = np.linalg.svd(X, full_matrices=False)
    P = X @ Vt[:2].T  # (n, 2)
    explained = (sv[:2] ** 2 / (sv**2).sum()) * 100
    fig, ax = plt.subplots(figsize=(6, 5))
    for g in keep:
        m = groups == g
        ax.scatter(P[m, 0], P[m, 1], s=4, alpha=0.5, label=f"{args.by} {names.get(int(g), g)} (n={int(m.sum())})")
    ax.set_xlabel(f"PC 1 ({explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1f}% of variance)")
    ax.ticklabel_format(style="sci", scilimits=(-2, 2))
    ax.set_title(f"APG: generated S_i of layer {args.layer}, by {args.by}")
    ax.legend(markerscale=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out} ({len(P)} rows, PC1+PC2 explain {explained.sum():.1f}% of the variance)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
