"""AdaSparse at serving: what skipping the pruned inputs saves, per batch and per single request (issue 15).

    python benchmarks/adasparse_serving.py --run RUN --data PREPARED --threads 1

RUN is a trained ``model.tower_layer=adasparse`` run. Three forms of the model, on the test rows of PREPARED:

* ``pruned``   -- the served form (``for_inference()``: :class:`adactr.nn.adasparse.PrunedLinear`), which reads
  only the columns of each layer whose input some row of the batch keeps;
* ``unpruned`` -- the same weights in the training form: ``W (h ⊙ π)`` over every input, zeros included;
* ``dnn``      -- the plain backbone of the same sizes without pruners (random weights: cost only);
* ``star tower`` -- the backbone with STAR's star-topology layers (``model.tower_layer=star``), served folded
  (one ``W ⊙ W_d`` per domain), and ``star`` the whole STAR model with the same hidden sizes;
* ``apg``      -- the backbone with group-wise APG on the domain columns (the defaults of ``model.apg``),
  served form: the paper's other two points of comparison in §3.1.3 (random weights: cost only).

Per batch: ``--batch`` rows, forward only, no autograd; per request: one row at a time over ``--requests``
rows. Rounds are interleaved (each form once per round) and the median is reported. The share of inputs a
batch (or a request) keeps is printed beside: a batch can skip only the inputs that *every* row prunes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from adactr.data.tensors import Batch, SplitArrays
from adactr.models.config import TowerLayer
from adactr.models.registry import build_model
from adactr.nn.adasparse import AdaSparseLinear
from adactr.nn.apg import ConditionMode
from adactr.train import checkpoint
from adactr.train.run import RunFiles, load_run


def _rows(batch: Batch, i: int, n: int) -> Batch:
    return Batch(cat=batch.cat[i:i + n], num=batch.num[i:i + n], seq=tuple(s[i:i + n] for s in batch.seq),
                 label=batch.label[i:i + n], domain=None if batch.domain is None else batch.domain[i:i + n])


@torch.no_grad()
def _kept(model: torch.nn.Module, batch: Batch) -> list[float]:
    """Per layer: the share of inputs some row of ``batch`` keeps (what the served form reads)."""
    shares: list[float] = []

    def hook(module, args, _out):
        pi = module.factors(*args)  # (B, N_l)
        shares.append(float((pi != 0).any(0).float().mean()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, AdaSparseLinear)]
    model(batch)
    for h in handles:
        h.remove()
    return shares


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pruned, schema, config, saved = load_run(args.run)
    unpruned = build_model(saved["model_name"], layout=schema.layout(), config=config.model)
    unpruned.load_state_dict(checkpoint.load_weights(RunFiles(args.run).weights))
    dnn = build_model(saved["model_name"], layout=schema.layout(),
                      config=replace(config.model, tower_layer=TowerLayer.LINEAR))
    star_tower = build_model(saved["model_name"], layout=schema.layout(),
                             config=replace(config.model, tower_layer=TowerLayer.STAR)).for_inference()
    star = build_model("star", layout=schema.layout(), config=replace(config.model, tower_layer=TowerLayer.LINEAR))
    apg_cfg = replace(config.model.apg, condition=ConditionMode.GROUP, condition_fields=schema.domain_sources)
    apg = build_model(saved["model_name"], layout=schema.layout(),
                      config=replace(config.model, tower_layer=TowerLayer.APG, apg=apg_cfg)).for_inference()
    forms = {"pruned": pruned.eval(), "unpruned": unpruned.eval(), "dnn": dnn.eval(),
             "star tower": star_tower.eval(), "star": star.for_inference().eval(), "apg": apg.eval()}
    test = SplitArrays.load(args.data / "test").to_tensors(torch.device("cpu"))
    batch = next(iter(test.batches(args.batch)))
    torch.testing.assert_close(pruned(batch), unpruned(batch), rtol=1e-4, atol=1e-5)
    print(f"outputs equal (pruned vs unpruned, {batch.size} rows); threads {args.threads}")
    print("inputs kept per layer, batch of", batch.size, ":", [round(s, 3) for s in _kept(unpruned, batch)])
    singles = [_kept(unpruned, _rows(batch, i, 1)) for i in range(args.requests)]
    print("inputs kept per layer, single request (mean):",
          [round(statistics.mean(s[j] for s in singles), 3) for j in range(len(singles[0]))])
    per_batch: dict[str, list[float]] = {k: [] for k in forms}
    per_request: dict[str, list[float]] = {k: [] for k in forms}
    for _ in range(args.rounds):
        for name, model in forms.items():
            model(batch)  # warm
            t0 = time.perf_counter()
            model(batch)
            per_batch[name].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for i in range(args.requests):
                model(_rows(batch, i, 1))
            per_request[name].append((time.perf_counter() - t0) / args.requests)
    print(f"| form | batch of {batch.size} (ms) | single request (us) | parameters outside the embeddings |")
    print("|---|---|---|---|")
    for name, model in forms.items():
        emb = {id(p) for p in model.embedding_parameters()}
        dense = sum(p.numel() for p in model.parameters() if id(p) not in emb)
        print(f"| {name} | {statistics.median(per_batch[name]) * 1e3:.2f} | "
              f"{statistics.median(per_request[name]) * 1e6:.0f} | {dense:,} |")


if __name__ == "__main__":
    main()
