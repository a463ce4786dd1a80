"""The ``adactr`` command line: prepare, train, evaluate, predict, models, demo.

Every user error ends as one line ``error: ...`` on stderr and a non-zero exit status; ``main`` returns
the status (it never calls ``sys.exit`` itself, so tests call ``main([...])`` in-process).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from adactr.errors import AdactrError

PREPARE_EXAMPLES = """\
examples:
  # generic CSV (gz or not): every column not named otherwise is categorical
  adactr prepare --format csv --train data/frappe_x1/train.csv.gz --valid data/frappe_x1/valid.csv.gz \\
      --test data/frappe_x1/test.csv.gz --label label --out prepared/frappe
  # multi-domain CSV with a raw column to ignore, GAUC by user
  adactr prepare --format csv --train ml/train.csv.gz --valid ml/valid.csv.gz --test ml/test.csv.gz \\
      --ignore rating --domain domain --group user_id --out prepared/ml1m
  # the domain as a combination of columns (about 300 gender x age x occupation domains, AdaSparse-style)
  adactr prepare --format csv --train ml/train.csv.gz --valid ml/valid.csv.gz --test ml/test.csv.gz \\
      --ignore rating --domain gender,age,occupation --group user_id --out prepared/ml1m-fine
  # Criteo (tab-separated, no header; I1-I13 -> floor(ln(x)^2) buckets, categories seen < 10 times -> OOV)
  adactr prepare --format criteo --train criteo/train.txt --split 0.8,0.1,0.1 --out prepared/criteo
  # Criteo as in the DynInt paper: floor(ln(v^2)) buckets, values seen < 20 times -> OOV, random 70/10/20
  adactr prepare --format criteo --train criteo/train.txt --numeric log_v2 --min-count 20 \\
      --split 0.7,0.1,0.2 --out prepared/criteo-dynint
  # Avazu (hour YYMMDDHH -> hour of day + weekday), time-ordered split on the hour
  adactr prepare --format avazu --train avazu/train.csv --time-column hour --out prepared/avazu
  # libFM / libSVM ("label idx:val ..."), optional field map: make-ipinyou-data's output as released
  adactr prepare --format libfm --train ipinyou/train.txt --test ipinyou/test.txt \\
      --field-map ipinyou/featindex.txt --out prepared/ipinyou
  # MovieLens .dat directory (ratings.dat, users.dat, movies.dat): label = rating >= 4
  adactr prepare --format movielens --train ml-1m/ --out prepared/ml1m-dat
input files (here and in `adactr predict`):
  text must be UTF-8; a byte-order mark (Excel's "CSV UTF-8") is fine. latin-1/cp1252/UTF-16 are refused
  at the first row and column that is not UTF-8 (never guessed): convert first, e.g. iconv -f latin1 -t utf-8.
  LF, CRLF or CR line ends; blank lines skipped; "quoted, fields" keep commas and newlines. Labels 0/1 or
  -1/1 (not both). In numerical columns nan, inf and 1e400 are missing values. Errors name file, row, column.
"""

TRAIN_EXAMPLES = """\
examples:
  adactr train --data prepared/frappe --model deepfm --out runs/deepfm
  adactr train --data prepared/frappe --model dcnv2 --out runs/dcnv2 \\
      --set model.cross_structure=stacked --set train.embedding_l2=0.01 --seed 3
  adactr train --data prepared/frappe --model deepfm --out runs/deepfm --resume   # after a kill
config keys: `adactr train --show-config` prints every key with its default.
"""


def _csv_list(text: str | None) -> tuple[str, ...] | None:
    return None if text is None else tuple(c.strip() for c in text.split(",") if c.strip())


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adactr", description="CTR prediction with instance-adaptive parameters.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pp = sub.add_parser("prepare", help="raw files -> a prepared dataset directory",
                        epilog=PREPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    pp.add_argument("--format", default="csv", choices=["csv", "criteo", "avazu", "libfm", "movielens"])
    pp.add_argument("--train", required=True, type=Path, help="train file (or MovieLens directory)")
    pp.add_argument("--valid", type=Path, help="validation file (else split from train)")
    pp.add_argument("--test", type=Path, help="test file (else split from train)")
    pp.add_argument("--out", required=True, type=Path, help="output dataset directory")
    pp.add_argument("--label", help="label column (default: label)")
    pp.add_argument("--numerical", help="comma-separated numerical columns")
    pp.add_argument("--sequence", help="comma-separated multi-valued columns (values split on --sep)")
    pp.add_argument("--sep", help="separator inside multi-valued columns (default |)")
    pp.add_argument("--pooling", choices=["mean", "sum"], help="how multi-valued fields are pooled (default mean)")
    pp.add_argument("--domain", help="domain / scenario column (multi-domain models, per-domain metrics), or several "
                                     "comma-separated whose combination is the domain (gender,age,occupation); "
                                     "one not seen in train is the shared domain <unseen>")
    pp.add_argument("--min-domain-count", type=int, help="domains seen fewer times in train go to <unseen> (default 1)")
    pp.add_argument("--group", help="group column for GAUC (e.g. user id)")
    pp.add_argument("--ignore", help="comma-separated columns that are not features (e.g. a raw rating)")
    pp.add_argument("--min-count", type=int, help="values (and numeric buckets) seen fewer times in train go to OOV "
                                                  "(default 1; --format criteo 10, avazu 2; DynInt paper 20)")
    pp.add_argument("--numeric", choices=["standard", "log_bucket", "log_v2", "log1p_v2"],
                    help="numerical transform: standard (z-score); or buckets embedded like categories: log_bucket "
                         "floor(ln(v)^2) for v > 2 else v (Criteo winners, BARS; --format criteo's default), "
                         "log_v2 floor(ln(v^2)) (DynInt paper; 0 its own bucket), log1p_v2 floor(ln(v^2+1)) "
                         "(xDeepInt code)")
    pp.add_argument("--split", help="fractions for missing splits, e.g. 0.8,0.1,0.1 (default)")
    pp.add_argument("--time-column", help="split in the order of this column instead of at random")
    pp.add_argument("--seed", type=int, default=2022, help="seed of the random split")
    pp.add_argument("--field-map", type=Path, help="libFM: featindex file mapping field:value to index")
    pp.add_argument("--rating-threshold", type=float, default=4.0, help="MovieLens: label = rating >= this")
    pp.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    pp.add_argument("--quiet", action="store_true", help="no progress bar")

    pt = sub.add_parser("train", help="train a model on a prepared directory", epilog=TRAIN_EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    pt.add_argument("--data", type=Path, help="prepared dataset directory")
    pt.add_argument("--model", help="model name (see `adactr models`)")
    pt.add_argument("--out", type=Path, help="run directory to write")
    pt.add_argument("--config", type=Path, help="YAML/TOML/JSON file overriding the defaults")
    pt.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override one config key, e.g. model.hidden=[400,400] or train.lr=0.01")
    pt.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    pt.add_argument("--device", choices=["auto", "cpu", "cuda"], help="shorthand for --set train.device=...")
    pt.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    pt.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    pt.add_argument("--quiet", action="store_true", help="no progress bar")
    pt.add_argument("--show-config", action="store_true", help="print the resolved config and exit")

    pe = sub.add_parser("evaluate", help="metrics of a trained run on a prepared split")
    pe.add_argument("--run", type=Path, required=True)
    pe.add_argument("--data", type=Path, required=True)
    pe.add_argument("--split", default="test", choices=["train", "valid", "test"])
    pe.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pe.add_argument("--base", type=Path, help="a base run evaluated on the same split: adds RelaImp (ADL eq. 10) "
                                              "of AUC, GAUC and per-domain AUC against it")
    pe.add_argument("--quiet", action="store_true", help="no progress bar")

    pr = sub.add_parser("predict", help="raw rows in, click probabilities out")
    pr.add_argument("--run", type=Path, required=True)
    pr.add_argument("--input", type=Path, required=True, help="raw file in the format the run was prepared from")
    pr.add_argument("--output", type=Path, required=True, help="CSV with one column `probability`")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("models", help="list the models with their papers")

    pl_ = sub.add_parser("plot", help="one PNG comparing runs: loss and validation AUC per epoch, test AUC by domain")
    pl_.add_argument("--run", type=Path, action="append", required=True, help="a run directory (repeat to compare)")
    pl_.add_argument("--out", type=Path, required=True, help="PNG file to write")

    pd = sub.add_parser("demo", help="generate the built-in multi-domain click world, prepare it, train a model and "
                                     "its APG version on it, plot both")
    pd.add_argument("--out", type=Path, default=Path("adactr-demo"), help="working directory (default ./adactr-demo)")
    pd.add_argument("--rows", type=int, default=200_000)
    pd.add_argument("--model", default="deepfm")
    pd.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    pd.add_argument("--seed", type=int, default=2022)
    pd.add_argument("--quiet", action="store_true")
    return p


def _run_config(args: argparse.Namespace):  # -> RunConfig
    from adactr.config import load_file, override, parse_sets
    from adactr.train.config import RunConfig

    cfg = RunConfig()
    if getattr(args, "config", None):
        cfg = override(cfg, load_file(args.config))
    sets = list(args.set)
    if getattr(args, "seed", None) is not None:
        sets.append(f"train.seed={args.seed}")
    if getattr(args, "device", None):
        sets.append(f"train.device={args.device}")
    if getattr(args, "quiet", False):
        sets.append("train.progress=false")
    return override(cfg, parse_sets(sets))


def _cmd_prepare(args: argparse.Namespace) -> int:
    from adactr.data.prepare import PRESETS, Format, PrepareRequest, SplitSpec, prepare
    from adactr.data.schema import NumericTransform, Pooling
    from adactr.errors import ConfigError, DataWarning

    fmt = Format(args.format)
    preset = PRESETS[fmt]
    roles, options = preset.roles, preset.options
    role_changes: dict = {}
    for key, value in (("label", args.label), ("group", args.group)):
        if value is not None:
            role_changes[key] = value
    if args.domain is not None:
        columns = _csv_list(args.domain) or ()
        if not columns:
            raise ConfigError(f"--domain {args.domain!r}: expected a column or comma-separated columns")
        twice = next((c for c in columns if columns.count(c) > 1), None)
        if twice is not None:
            raise ConfigError(f"--domain {args.domain!r}: {twice!r} is named twice")
        role_changes["domain"] = columns[0] if len(columns) == 1 else columns
    for key, value in (("numerical", args.numerical), ("sequence", args.sequence), ("ignore", args.ignore)):
        if value is not None:
            role_changes[key] = _csv_list(value)
    roles = replace(roles, **role_changes) if role_changes else roles
    opt_changes: dict = {}
    if args.min_count is not None:
        opt_changes["min_count"] = args.min_count
    if args.min_domain_count is not None:
        if args.min_domain_count < 1:
            raise ConfigError(f"--min-domain-count {args.min_domain_count}: expected a count of 1 or more")
        opt_changes["min_domain_count"] = args.min_domain_count
    if args.numeric is not None:
        opt_changes["numeric_transform"] = NumericTransform(args.numeric)
    if args.sep is not None:
        opt_changes["sequence_sep"] = args.sep
    if args.pooling is not None:
        opt_changes["sequence_pooling"] = Pooling(args.pooling)
    options = replace(options, **opt_changes) if opt_changes else options
    split = SplitSpec(time_column=args.time_column, seed=args.seed)
    if args.split:
        try:
            fr = tuple(float(x) for x in args.split.split(","))
        except ValueError:
            raise ConfigError(f"--split {args.split!r}: expected fractions like 0.8,0.1,0.1") from None
        if len(fr) != 3 or any(f < 0 for f in fr) or sum(fr) <= 0:
            raise ConfigError(f"--split {args.split!r}: expected three non-negative fractions")
        split = replace(split, fractions=fr)
    req = PrepareRequest(format=fmt, train=args.train, valid=args.valid, test=args.test, out=args.out,
                         roles=roles, options=options, split=split, field_map=args.field_map,
                         rating_threshold=args.rating_threshold, overwrite=args.overwrite)
    with warnings.catch_warnings():  # odd input lines taken as they are: one line each, as the errors are
        warnings.simplefilter("ignore", DataWarning)
        schema = prepare(req, progress=not args.quiet)
    meta = json.loads((args.out / "meta.json").read_text())
    for note in meta.get("warnings", []):
        print(f"warning: {note}", file=sys.stderr)
    print(f"prepared {args.out}: {len(schema.fields)} fields, rows {meta['rows']}, {meta['seconds']} s")
    if schema.domain_columns:
        print(_domain_sizes(args.out, schema))
    return 0


def _domain_sizes(out: Path, schema) -> str:
    """One line on the train domains of a combined domain: how many, and how their sizes spread."""
    import numpy as np

    counts = np.bincount(np.load(out / "train" / "domain.npy"), minlength=len(schema.domain_names))[2:]
    counts = np.sort(counts[counts > 0])
    if not len(counts):
        return "domains: none in train"
    return (f"domains: {len(counts)} combinations of {', '.join(schema.domain_columns)} in train; rows per domain "
            f"largest {counts[-1]}, median {int(np.median(counts))}, smallest {counts[0]}, "
            f"{int((counts < 100).sum())} under 100")


def _print_metrics(results: dict) -> None:
    t = results["test"]
    line = f"test AUC {t['auc']:.5f}  logloss {t['logloss']:.5f}"
    if "gauc" in t:
        line += f"  GAUC {t['gauc']:.5f}"
    print(line + f"  ({results['epochs']} epochs, {results['samples_per_second']:.0f} samples/s "
                 f"on {results['device']})")
    for name, d in t.get("per_domain", {}).items():
        print(f"  domain {name:>10}: AUC {d['auc']:.5f}  logloss {d['logloss']:.5f}  n={d['count']}")
    if "domain_auc_mean" in t:
        left = t.get("domain_auc_excluded", {})
        print(f"  count-weighted mean of per-domain AUC {t['domain_auc_mean']:.5f}"
              + (f" ({left['domains']} one-class domains, {left['rows']} rows, left out)" if left.get("domains")
                 else ""))
    for part, tensors in results.get("adaptivity", {}).items():  # std over instances / rms of the mean
        shown = ", ".join(f"{k} {v['adaptivity']:.3f}" + (f" (by domain {v['by_domain']:.3f})" if "by_domain" in v
                                                         else "")
                          + (f", sparsity {v['sparsity']:.3f}" if "sparsity" in v else "")
                          + (f", domain overlap {v['domain_overlap']:.3f}" if "domain_overlap" in v else "")
                          for k, v in tensors.items())
        print(f"  adaptivity {part}: {shown}")


def _cmd_train(args: argparse.Namespace) -> int:
    from adactr.config import to_dict
    from adactr.errors import ConfigError
    from adactr.train.run import train_run

    cfg = _run_config(args)
    if args.show_config:
        print(json.dumps(to_dict(cfg), indent=1))
        return 0
    for flag in ("data", "model", "out"):
        if getattr(args, flag) is None:
            raise ConfigError(f"adactr train: --{flag} is required")
    results = train_run(data=args.data, model_name=args.model, out=args.out, config=cfg, resume=args.resume,
                        overwrite=args.overwrite)
    _print_metrics(results)
    print(f"wrote {args.out / 'metrics.json'}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from adactr.train.config import Device
    from adactr.train.metrics import relaimp_report
    from adactr.train.run import evaluate_run

    result = evaluate_run(run=args.run, data=args.data, split=args.split, device=Device(args.device),
                          progress=not args.quiet)
    if args.base is not None:
        base = evaluate_run(run=args.base, data=args.data, split=args.split, device=Device(args.device),
                            progress=not args.quiet)
        result["relaimp"] = {"base": str(args.base), **relaimp_report(result, base)}
    print(json.dumps(result, indent=1))
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from adactr.train.config import Device
    from adactr.train.run import predict_file

    n = predict_file(run=args.run, input=args.input, output=args.output, device=Device(args.device),
                     progress=not args.quiet)
    print(f"wrote {n} probabilities to {args.output}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from adactr.plot import plot_runs

    print(f"wrote {plot_runs(args.run, args.out)}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from adactr.models.registry import MODELS

    width = max(len(n) for n in MODELS)
    for name, entry in MODELS.items():
        print(f"{name:<{width}}  {entry.paper}")
    return 0


# The demo's APG: group-wise on what the click world's click model changes with (the domain, and the user's
# observed segment, a noisy view of the latent user cluster), in the demo model's tower.
DEMO_APG = ("model.tower_layer=apg", "model.apg.condition=group", "model.apg.condition_fields=[domain,user_segment]")
# Each model at the embedding L2 that suits it on the click world. Searched over 1e-3 (the deep models'
# default), 0.01, 0.03, 0.1, 0.3 with DeepFM, 3 seeds (docs/apg.md, "The click world"): Base is best at 0.03
# and becomes unstable above; APG is best at 0.1 (its condition is layer-normalised, so shrinking the
# embeddings does not starve its generated part). At the default 1e-3 both overfit, APG more.
DEMO_L2 = {"base": "train.embedding_l2=0.03", "apg": "train.embedding_l2=0.1"}


def _cmd_demo(args: argparse.Namespace) -> int:
    from adactr.config import parse_sets
    from adactr.data.encode import Roles
    from adactr.data.prepare import Format, PrepareRequest, prepare
    from adactr.data.synthetic import write_click_world
    from adactr.train.run import train_run

    out: Path = args.out
    raw = out / "raw"
    print(f"1/4 generating the multi-domain click world ({args.rows} rows) in {raw}")
    paths = write_click_world(raw, n_rows=args.rows, seed=args.seed)
    print(f"2/4 preparing {out / 'data'}")
    prepare(PrepareRequest(format=Format.CSV, train=paths["train"], valid=paths["valid"], test=paths["test"],
                           out=out / "data", roles=Roles(numerical=("price",), sequence=("tags",),
                                                         domain="domain", group="user_id"),
                           overwrite=True), progress=not args.quiet)
    parse_sets(args.set)  # fail early on a malformed --set
    runs = []
    for step, (run, what, extra) in enumerate(((out / "run", args.model, [DEMO_L2["base"]]), (
            out / "run-apg", f"{args.model} + APG ({' '.join(DEMO_APG[1:])})", [*DEMO_APG, DEMO_L2["apg"]])), 3):
        print(f"{step}/4 training {what} into {run}")
        ns = argparse.Namespace(config=None, set=[*extra, *args.set], seed=args.seed, device=None, quiet=args.quiet)
        results = train_run(data=out / "data", model_name=args.model, out=run, config=_run_config(ns),
                            overwrite=True)
        _print_metrics(results)
        print(f"wrote {run / 'metrics.json'}")
        runs.append(run)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"(pip install 'adactr[plot]' to also get {out / 'curves.png'}: loss, AUC, AUC by domain, adaptivity)")
        return 0
    from adactr.plot import plot_runs

    print(f"wrote {plot_runs(runs, out / 'curves.png')} (adactr plot: {args.model} and its APG version: loss, AUC, "
          f"AUC by domain, adaptivity)")
    return 0


COMMANDS = {"prepare": _cmd_prepare, "train": _cmd_train, "evaluate": _cmd_evaluate,
            "predict": _cmd_predict, "models": _cmd_models, "plot": _cmd_plot, "demo": _cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors; report the status instead
        return int(e.code or 0)
    try:
        return COMMANDS[args.command](args)
    except AdactrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
