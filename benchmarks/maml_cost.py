"""The cost of ``train.meta=maml`` steps against ordinary ones, by the number of tasks (domains) per step.

    python benchmarks/maml_cost.py --data bench_out/prepared/click-world-300 --threads 1
    python benchmarks/maml_cost.py --data bench_out/prepared/ml1m --threads 1 --tasks 0

Training steps (forward, backward, optimiser step, as ``Trainer.fit`` runs them) of one model (``--model``,
default ``dnn`` with its defaults) on the first ``--batches`` batches of the prepared train split:
``plain`` (the trainer's ordinary step) and MAML with ``train.maml.tasks_per_step`` = each of ``--tasks``
(0 = every domain of the batch with two rows or more). Rounds are interleaved (every contender once per
round, on fresh copies of the same model), so a slow moment of a shared machine hits all of them. Prints
the median and min-max samples/s over rounds, the cost per sample against ``plain``, and the tasks a step
ran on average.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from adactr.data.schema import Schema
from adactr.data.tensors import SplitArrays
from adactr.models.config import ModelConfig
from adactr.models.registry import build_model
from adactr.train.config import MAMLConfig, MetaLearning, RunConfig, resolve
from adactr.train.maml import maml_step
from adactr.train.trainer import Trainer, build_optimizers, training_loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", default="dnn")
    ap.add_argument("--tasks", default="0,64,16,4", help="train.maml.tasks_per_step values, comma-separated")
    ap.add_argument("--batches", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    schema = Schema.load(args.data / "schema.json")
    run = resolve(RunConfig(model=ModelConfig()), args.model)
    model0 = build_model(args.model, layout=schema.layout(), config=run.model)
    split = SplitArrays.load(args.data / "train").to_tensors(torch.device("cpu"), slice(0, args.batch * args.batches))
    batches = list(split.batches(args.batch))
    cfg = replace(run.train, meta=MetaLearning.MAML)
    names = ["plain", *(f"maml tasks_per_step={k}" for k in args.tasks.split(","))]
    seconds: dict[str, list[float]] = {n: [] for n in names}
    tasks_seen: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in names:
            model = copy.deepcopy(model0).train()
            opts = build_optimizers(model, cfg)
            if name == "plain":
                trainer = Trainer(config=cfg, device=torch.device("cpu"))
                step = lambda b, m=model, o=opts, t=trainer: t._step(m, m, o, b)  # noqa: E731
            else:
                k = int(name.rsplit("=", 1)[1])
                maml = maml_step(model, opts, replace(cfg, maml=MAMLConfig(tasks_per_step=k)), has_domain=True,
                                 loss=training_loss)
                tasks_seen[name] = statistics.mean(len(maml.tasks(b)) for b in batches)
                step = maml
            step(batches[0])  # warm-up
            t0 = time.perf_counter()
            for b in batches:
                step(b)
            seconds[name].append(time.perf_counter() - t0)
    rows = sum(b.size for b in batches)
    plain = statistics.median(rows / s for s in seconds["plain"])
    print(f"{args.model} on {args.data.name}, {len(batches)} batches of {args.batch}, {args.threads} thread(s), "
          f"{args.rounds} rounds\n")
    print("| step | tasks per step | samples/s median | min-max | cost per sample vs plain |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        rates = [rows / s for s in seconds[name]]
        med = statistics.median(rates)
        print(f"| {name} | {tasks_seen.get(name, '-') if name == 'plain' else f'{tasks_seen[name]:.0f}'} | "
              f"{med:,.0f} | {min(rates):,.0f}-{max(rates):,.0f} | {plain / med:.2f}x |")


if __name__ == "__main__":
    main()
