"""``adactr plot``: one PNG comparing finished runs, for the reader who would rather look than read.

Panels, from each run's ``metrics.json``:

1. training loss per epoch;
2. validation AUC per epoch, the best epoch (the weights kept) marked;
3. test AUC per domain, grouped bars, when the runs have a domain column (multi-domain data);
4. the adaptivity of each adaptive part (``metrics.json`` ``adaptivity``: how much its generated parameters
   vary across validation rows), when a run has one; the dashed line at 0.1 marks "nearly static".

Runs are labelled by their directory name. Needs matplotlib (``pip install 'adactr[plot]'``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from adactr.errors import AdactrError, DataError


def load_metrics(run: Path) -> dict[str, Any]:
    path = run / "metrics.json"
    if not path.exists():
        raise DataError("no metrics.json: not a finished run (train it, or --resume it, first)", file=str(run))
    try:
        m = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"not valid JSON ({e.msg})", file=str(path), row=e.lineno) from None
    if not isinstance(m, dict) or not isinstance(m.get("history"), list) or "test" not in m:
        raise DataError("not an adactr metrics file (no 'history' list or 'test' metrics)", file=str(path))
    return m


def plot_runs(runs: list[Path], out: Path) -> Path:
    """Write the comparison figure of ``runs`` to ``out`` (PNG); returns ``out``."""
    plt = _pyplot()
    if not runs:
        raise AdactrError("adactr plot: name at least one --run")
    fig = figure({run.name or str(run): load_metrics(run) for run in runs})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        tmp.replace(out)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return out


def _pyplot():  # -> matplotlib.pyplot
    try:
        import matplotlib
    except ImportError:
        raise AdactrError("adactr plot needs matplotlib: pip install 'adactr[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _adaptivity_bars(metrics: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """The (part, tensor) pairs any run reports, in the order first seen: one bar group each."""
    keys: list[tuple[str, str]] = []
    for m in metrics.values():
        for part, tensors in (m.get("adaptivity") or {}).items():
            keys += [(part, name) for name in tensors if (part, name) not in keys]
    return keys


def figure(metrics: dict[str, dict[str, Any]]):  # -> matplotlib.figure.Figure
    """The comparison figure of runs given as ``{label: metrics.json contents}`` (see the module docstring)."""
    plt = _pyplot()
    domains = sorted({d for m in metrics.values() for d in (m["test"].get("per_domain") or {})},
                     key=lambda d: (0, int(d), "") if d.isdigit() else (1, 0, d))  # 0, 1, 2, ..., then names
    bars = _adaptivity_bars(metrics)
    n_panels = 2 + bool(domains) + bool(bars)
    fig, axes = plt.subplots(1, n_panels, figsize=(5 * n_panels, 4), squeeze=False)
    ax_loss, ax_auc = axes[0][0], axes[0][1]
    for i, (name, m) in enumerate(metrics.items()):
        color = f"C{i % 10}"
        epochs = [h["epoch"] for h in m["history"]]
        ax_loss.plot(epochs, [h["train_loss"] for h in m["history"]], marker="o", color=color, label=name)
        ax_auc.plot(epochs, [h["valid_auc"] for h in m["history"]], marker="o", color=color,
                    label=f"{name} (test AUC {m['test']['auc']:.4f})")
        best = m.get("best_epoch", -1)
        if best in epochs:
            ax_auc.plot([best], [m["history"][epochs.index(best)]["valid_auc"]], marker="*", markersize=14,
                        color=color, linestyle="none")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="log loss")
    ax_auc.set(title="validation AUC (* = weights kept)", xlabel="epoch", ylabel="AUC")
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax_auc.legend(fontsize=8)
    panel = 2
    if domains:
        ax_dom = axes[0][panel]
        panel += 1
        width = 0.8 / len(metrics)
        for i, (name, m) in enumerate(metrics.items()):
            per = m["test"].get("per_domain") or {}
            values = [per.get(d, {}).get("auc", math.nan) for d in domains]
            ax_dom.bar([j + (i - (len(metrics) - 1) / 2) * width for j in range(len(domains))], values, width,
                       color=f"C{i % 10}", label=name)
        ax_dom.set_xticks(range(len(domains)), domains)
        finite = [v for m in metrics.values() for d in (m["test"].get("per_domain") or {}).values()
                  if isinstance(v := d.get("auc"), float) and math.isfinite(v)]
        if finite:
            ax_dom.set_ylim(max(0.0, min(finite) - 0.02), min(1.0, max(finite) + 0.02))
        ax_dom.set(title="test AUC by domain", xlabel="domain", ylabel="AUC")
        ax_dom.grid(alpha=0.3, axis="y")
    if bars:
        # STYLE 13: how much each adaptive part's generated parameters vary across validation rows
        ax_ad = axes[0][panel]
        with_parts = [(i, name, m) for i, (name, m) in enumerate(metrics.items()) if m.get("adaptivity")]
        width = 0.8 / len(with_parts)
        for k, (i, name, m) in enumerate(with_parts):
            values = [m["adaptivity"].get(part, {}).get(name, {}).get("adaptivity", math.nan) for part, name in bars]
            ax_ad.bar([j + (k - (len(with_parts) - 1) / 2) * width for j in range(len(bars))], values, width,
                      color=f"C{i % 10}", label=name)
        ax_ad.set_xticks(range(len(bars)), [f"{part} {name}" for part, name in bars], rotation=30, ha="right",
                         fontsize=7)
        ax_ad.axhline(0.1, color="grey", linestyle="--", linewidth=1)  # below: close to a static layer
        ax_ad.set(title="adaptivity (std over rows / rms of mean)", ylabel="adaptivity")
        ax_ad.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig
