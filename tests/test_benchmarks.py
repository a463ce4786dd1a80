"""The benchmark grid runner: parallel workers give the runs a serial grid gives; the cache resumes."""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import apg_cost  # noqa: E402
import apg_table2  # noqa: E402
from accuracy import data_fingerprint, paired_delta, run_grid  # noqa: E402

TINY = ["train.epochs=1", "model.hidden=[8]", "model.embedding_dim=4", "train.batch_size=512"]


def test_parallel_grid_equals_serial_and_the_cache_is_reused(world_data, tmp_path):
    kw = dict(variants={"": [], "apg": ["model.tower_layer=apg", "model.apg.rank=2"]})
    serial = run_grid(world_data, ["wdl"], [1, 2], [*TINY, "train.threads=1"], **kw)
    par = run_grid(world_data, ["wdl"], [1, 2], TINY, jobs=2, cache=tmp_path / "cache", **kw)
    for v in ("", "apg"):
        assert [r["test"]["auc"] for r in par[v]["wdl"]] == [r["test"]["auc"] for r in serial[v]["wdl"]]
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 4
    # a cached run is read back, not retrained: edit one and see the edit come back
    rec = json.loads(files[0].read_text())
    rec["test"]["auc"] = 0.123
    files[0].write_text(json.dumps(rec))
    again = run_grid(world_data, ["wdl"], [1, 2], TINY, jobs=2, cache=tmp_path / "cache", **kw)
    assert 0.123 in [r["test"]["auc"] for v in again.values() for r in v["wdl"]]
    # an entry trained under other settings (a default changed since) is moved aside and trained again
    assert rec["config"]["train"]["epochs"] == 1 and "commit" in rec  # None outside a git checkout
    rec["config"]["model"]["embedding_dim"] = 16  # as if the default had been 16 when it was trained
    files[0].write_text(json.dumps(rec))
    third = run_grid(world_data, ["wdl"], [1, 2], TINY, jobs=2, cache=tmp_path / "cache", **kw)
    assert 0.123 not in [r["test"]["auc"] for v in third.values() for r in v["wdl"]]
    assert [r["test"]["auc"] for r in third["apg"]["wdl"]] == [r["test"]["auc"] for r in serial["apg"]["wdl"]]
    assert json.loads((tmp_path / "cache" / "stale" / files[0].name).read_text())["test"]["auc"] == 0.123
    assert json.loads(files[0].read_text())["config"]["model"]["embedding_dim"] == 4
    # a setting added to the library after an entry was stored is not a change: the entry is reused
    rec = json.loads(files[1].read_text())
    rec["test"]["auc"] = 0.456
    del rec["config"]["model"]["embedding_dim"]  # as if the option had not existed when it was trained
    files[1].write_text(json.dumps(rec))
    fourth = run_grid(world_data, ["wdl"], [1, 2], TINY, jobs=2, cache=tmp_path / "cache", **kw)
    assert 0.456 in [r["test"]["auc"] for v in fourth.values() for r in v["wdl"]]
    # the same prepared data at another path (another checkout) reads the same entries
    moved = tmp_path / "elsewhere" / "world"
    shutil.copytree(world_data, moved)
    fifth = run_grid(moved, ["wdl"], [1, 2], TINY, jobs=2, cache=tmp_path / "cache", **kw)
    assert 0.456 in [r["test"]["auc"] for v in fifth.values() for r in v["wdl"]]


def test_data_fingerprint_is_the_schema_and_rows_not_the_path(world_data, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(world_data, copy)
    assert data_fingerprint(copy) == data_fingerprint(world_data)
    meta = json.loads((copy / "meta.json").read_text())
    meta["seconds"], meta["sources"] = 99.0, {"train": "/somewhere/else.csv"}  # provenance only: same data
    (copy / "meta.json").write_text(json.dumps(meta))
    assert data_fingerprint(copy) == data_fingerprint(world_data)
    meta["rows"]["train"] += 1
    (copy / "meta.json").write_text(json.dumps(meta))
    assert data_fingerprint(copy) != data_fingerprint(world_data)
    meta["rows"]["train"] -= 1
    (copy / "meta.json").write_text(json.dumps(meta))
    schema = json.loads((copy / "schema.json").read_text())
    schema["fields"][0]["vocab_size"] += 1
    (copy / "schema.json").write_text(json.dumps(schema))
    assert data_fingerprint(copy) != data_fingerprint(world_data)
    assert data_fingerprint(tmp_path) == str(tmp_path.resolve())  # not a prepared directory


def test_paired_delta_is_the_per_seed_difference() -> None:
    # differences 0.002, -0.001, 0.002: mean 0.001, std sqrt(((1)^2 + (-2)^2 + 1^2) / 2) * 0.001 = sqrt(3) e-3
    assert paired_delta([0.982, 0.980, 0.985], [0.980, 0.981, 0.983]) == "+0.0010 ± 0.0017 (2/3)"
    assert paired_delta([0.5], [0.6]) == "-0.1000"
    with pytest.raises(ValueError):
        paired_delta([0.5, 0.6], [0.5])  # seeds must pair up


def test_apg_table2_prints_base_and_each_variant(world_data, tmp_path, capsys):
    assert apg_table2.main(["--data", str(world_data), "--models", "wdl", "--seeds", "1", "--set", TINY[0],
                            "--set", TINY[1], "--apg-set", "model.apg.rank=2",
                            "--variant", "self=model.apg.condition=self",
                            "--variant", "group(user)=model.apg.condition=group model.apg.condition_fields=user_id",
                            "--out", str(tmp_path / "t2.json")]) == 0
    out = capsys.readouterr().out
    assert "| backbone | Base | +APG self | Δ | +APG group(user) | Δ |" in out
    saved = json.loads((tmp_path / "t2.json").read_text())["results"]
    assert saved["group(user)"]["wdl"][0]["overrides"][-1] == "train.seed=1"
    assert "model.apg.condition_fields=user_id" in saved["group(user)"]["wdl"][0]["overrides"]
    # parameters and each APG layer's adaptivity (the weight the instance gets), read from the saved runs
    w = saved["self"]["wdl"][0]
    row = [ln for ln in out.splitlines() if ln.startswith("| wdl |")][-1]  # the last table
    per_layer = " / ".join(f"{v['weight']['adaptivity']:.2f}" for v in w["adaptivity"].values())
    assert f"| {saved['Base']['wdl'][0]['params']:,} | {w['params']:,} | {per_layer} |" in row


def test_apg_cost_table5_group_wise_on_a_chosen_tower(capsys):
    assert apg_cost.main(["table5", "--batch", "8", "--input", "6", "--rank", "2", "--cond-dim", "3",
                          "--sizes", "4,3;5,2", "--reps", "1", "--warmup", "0", "--skip", "v3"]) == 0
    out = capsys.readouterr().out
    assert "input 6, K = 2, batch 8, group-wise condition of width 3" in out
    rows = [line for line in out.splitlines() if line.startswith("| [")]
    assert [r.split(" |")[0] for r in rows] == ["| [4, 3]", "| [5, 2]"]
    assert all(r.count(" - ") == 2 for r in rows)  # v3 skipped: no time, no memory


def test_dynint_tables_sweeps_and_figures_run_end_to_end(world_data, tmp_path, capsys):
    import dynint

    tiny = [x for s in TINY for x in ("--set", s)]
    assert dynint.main(["table1", "--data", str(world_data), "--models", "xdeepint,dynint_dgp", "--seeds", "1",
                        *tiny, "--cache", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "| dynint_dgp |" in out and "| 0.8127 | 0.4397 |" in out  # beside the paper's Criteo figures
    assert dynint.main(["sweep", "--data", str(world_data), "--seeds", "1", *tiny, "--models", "dynint_da",
                        "--key", "model.pin.layers", "--values", "0,2", "--cache", str(tmp_path / "c")]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(("| 0 |", "| 2 |"))]
    assert len(rows) == 2 and rows[0].endswith("| - |")  # depth 0 has no dynamic layer: no adaptivity
    assert dynint.main(["table2", "--data", str(world_data), "--models", "dcnv2", "--seeds", "1", *tiny]) == 0
    assert "`dcnv2` model.hidden=[]" in capsys.readouterr().out
    assert dynint.main(["memory", "--batch", "16", "--fields", "6", "--dim", "4", "--subspaces", "2"]) == 0
    assert "| DGP (K=1) |" in capsys.readouterr().out
    assert dynint.main(["throughput", "--batch", "32", "--steps", "1", "--rounds", "1",
                        "--models", "dcnv2,dynint_dwp"]) == 0
    assert "| dynint_dwp |" in capsys.readouterr().out


def test_dynint_fig4_reads_the_pin_weights_of_a_run(world_data, tmp_path, capsys):
    import dynint

    from adactr.config import override, parse_sets
    from adactr.train.config import RunConfig
    from adactr.train.run import train_run

    cfg = override(RunConfig(), parse_sets([*TINY, "train.progress=false", "model.pin.layers=2"]))
    train_run(data=world_data, model_name="xdeepint", out=tmp_path / "run", config=cfg)
    assert dynint.main(["fig4", "--run", str(tmp_path / "run"), "--png", str(tmp_path / "f4.png")]) == 0
    out = capsys.readouterr().out
    assert "| pin.layers.1.W |" in out and (tmp_path / "f4.png").stat().st_size > 1000


def test_dynint_orthogonal_rates_curve(world_data, tmp_path, capsys):
    import dynint

    tiny = [x for s in TINY for x in ("--set", s)]
    assert dynint.main(["orthogonal", "--data", str(world_data), "--rates", "0,0.1", *tiny,
                        "--png", str(tmp_path / "f7b.png")]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| dynint_")]
    assert [r.split(" | ")[:2] for r in rows] == [["| dynint_dgp", "0"], ["| dynint_dgp", "0.1"],
                                                  ["| dynint_dwp", "0"], ["| dynint_dwp", "0.1"]]
    assert (tmp_path / "f7b.png").stat().st_size > 1000


def test_adasparse_tables_and_figures_run_end_to_end(world_data, tmp_path, capsys):
    import adasparse

    tiny = ["--set", "train.epochs=1", "--set", "model.adasparse.schedule_steps=2", "--seeds", "1"]
    cache = ["--cache", str(tmp_path / "cache")]
    assert adasparse.main(["table1", "--data", str(world_data), "--backbones", "dnn",
                           "--variants", "base,star,apg,adasparse", "--others", "mmoe", *tiny, *cache]) == 0
    out = capsys.readouterr().out
    for row in ("| dnn |", "| dnn+star |", "| dnn+apg |", "| dnn+adasparse |", "| mmoe |"):
        assert row in out, row
    assert "| 0.6607 | 0.6572 |" in out  # the paper's Public AdaSparse row beside ours
    assert adasparse.main(["band", "--data", str(world_data), "--bands", "0.15-0.25,0.3-0.4", *tiny, *cache,
                           "--png", str(tmp_path / "d.png")]) == 0
    out = capsys.readouterr().out
    assert "| [0.15, 0.25] |" in out and "| [0.30, 0.40] |" in out and (tmp_path / "d.png").exists()
    assert adasparse.main(["table6", "--coarse", str(world_data), "--fine", str(world_data), *tiny, *cache]) == 0
    out = capsys.readouterr().out
    assert "| star_fg | domain |" in out and "| dnn+apg_cg | domain |" in out


def test_adasparse_a_failed_run_is_reported_with_its_row_and_the_others_finish(world_data, tmp_path, capsys):
    """One row whose runs fail (an unknown model option): it is named at once and at the end, the other row's
    run is trained and cached, and the command exits with the failure instead of a table."""
    import adasparse

    args = argparse.Namespace(seeds="1", set=["train.epochs=1"], jobs=1, cache=tmp_path / "cache")
    rows = [("bad", "dnn", ["model.no_such_key=1"]), ("dnn", "dnn", [])]
    with pytest.raises(SystemExit, match=r"1 of 2 runs failed .*bad seed 1: ConfigError"):
        adasparse._all_rows(world_data, [1], args, rows)
    err = capsys.readouterr().err
    assert "bad seed 1: FAILED" in err and "dnn seed 1: test AUC" in err
    assert len(list((tmp_path / "cache").glob("dnn-*.json"))) == 1


def test_adasparse_rows_are_compared_with_their_base_seed_by_seed(capsys):
    import adasparse

    def run(auc: float, gauc: float) -> dict:
        return {"test": {"auc": auc, "domain_auc_mean": gauc}}

    res = {"dnn+base": [run(0.80, 0.70), run(0.81, 0.70)], "dnn+apg": [run(0.81, 0.80), run(0.80, 0.70)],
           "mmoe": [run(0.83, 0.70), run(0.84, float("nan"))]}
    adasparse.paired(res, list(res), lambda lab: lab.split("+")[0] + "+base" if "+" in lab else "dnn+base")
    out = capsys.readouterr().out
    # apg - dnn: AUC +0.01, -0.01 (mean 0, std 0.0141, 1 of 2 at or above); GAUC +0.1, 0
    assert "| dnn+apg (vs dnn) | +0.0000 ± 0.0141 (1/2) | +0.0500 ± 0.0707 (2/2) |" in out
    assert "| mmoe (vs dnn) | +0.0300 ± 0.0000 (2/2) | - |" in out  # a run without GAUC: no difference
    assert "| dnn+base" not in out


def test_adasparse_domain_bins_are_equal_shares_of_train_rows(world_data):
    import adasparse

    which = adasparse.domain_bins(world_data, n_bins=2)
    counts = np.bincount(np.load(world_data / "train" / "domain.npy").astype(np.int64))
    names = json.loads((world_data / "schema.json").read_text())["domain_names"]
    first = sum(counts[names.index(n)] for n, b in which.items() if b == 0)
    assert 0 < first and set(which.values()) <= {0, 1}
    # the largest domain is in the first bin
    assert which[names[int(np.argmax(counts[2:])) + 2]] == 0


def test_adasparse_table2_partitions_and_fig3a_factor_maps(world_data, tmp_path, capsys):
    import adasparse

    from adactr.config import override, parse_sets
    from adactr.train.config import RunConfig
    from adactr.train.run import train_run

    tiny = ["--set", "train.epochs=1", "--set", "model.adasparse.schedule_steps=2", "--seeds", "1"]
    assert adasparse.main(["table2", "--data", str(world_data), *tiny]) == 0
    out = capsys.readouterr().out
    assert "| dnn+binarization |" in out and "| dnn+fusion |" in out and "| 0.7355 | 0.6843 |" in out
    assert adasparse.main(["partitions", "--data", f"{world_data},{world_data}", *tiny]) == 0
    assert "| dnn+adasparse |" in capsys.readouterr().out
    cfg = override(RunConfig(), parse_sets(["train.epochs=1", "train.progress=false", "model.hidden=[16,8]",
                                            "model.tower_layer=adasparse", "model.adasparse.form=binarization"]))
    train_run(data=world_data, model_name="dnn", out=tmp_path / "run", config=cfg)
    assert adasparse.main(["factors", "--run", str(tmp_path / "run"), "--data", str(world_data), "--layer", "1",
                           "--min-rows", "5", "--png", str(tmp_path / "a.png")]) == 0
    out = capsys.readouterr().out
    assert "Da:" in out and "Da^:" in out and "Db:" in out and (tmp_path / "a.png").exists()
