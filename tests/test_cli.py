"""The CLI in-process through main([...]): the contract later work and outside checks rely on."""

import json

import polars as pl
import pytest

from adactr.cli import main

FAST = ["--set", "model.hidden=[32,16]", "--set", "train.epochs=2", "--set", "train.batch_size=512", "--quiet"]


def test_models_lists_each_with_its_paper(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("lr", "fm", "dnn", "wdl", "deepfm", "dcnv2"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert "IJCAI" in out  # DeepFM's venue


def test_help_works(capsys):
    assert main(["prepare", "--help"]) == 0
    assert "--format criteo" in capsys.readouterr().out


def test_train_writes_metrics_config_checkpoint(tmp_path, world_data, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "deepfm", "--out", str(run), *FAST]) == 0
    m = json.loads((run / "metrics.json").read_text())
    for key in ("valid", "test", "epochs", "train_seconds", "samples_per_second"):
        assert key in m
    for key in ("auc", "logloss", "gauc", "per_domain"):
        assert key in m["test"]
    assert 0.5 < m["test"]["auc"] <= 1
    assert (run / "model.safetensors").exists() and (run / "last.pt").exists()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["model"]["hidden"] == [32, 16]
    # evaluate gives the test metrics again: the saved weights, re-read, reproduce the run's figures
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(world_data), "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["count"] == m["test"]["count"] == 600
    for key in ("auc", "logloss", "gauc"):
        assert again[key] == pytest.approx(m["test"][key], rel=1e-6, abs=1e-7), key
    assert again["per_domain"].keys() == m["test"]["per_domain"].keys()
    for name, d in m["test"]["per_domain"].items():
        assert again["per_domain"][name]["auc"] == pytest.approx(d["auc"], rel=1e-6), name
        assert again["per_domain"][name]["count"] == d["count"]


def test_evaluate_and_predict_show_progress_over_batches_unless_quiet(tmp_path, world_data, world_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(run), *FAST,
                 "--set", "train.eval_batch_size=100"]) == 0  # 600 test rows: 6 batches
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run), "--data", str(world_data)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["auc"] > 0.5 and "test:" in err and "/6 " in err
    assert main(["evaluate", "--run", str(run), "--data", str(world_data), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    pred = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--input", str(world_csv["test"]), "--output", str(pred)]) == 0
    assert "predict" in capsys.readouterr().err
    assert main(["predict", "--run", str(run), "--input", str(world_csv["test"]), "--output", str(pred),
                 "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_predict_raw_rows_with_unseen_values(tmp_path, world_data, world_csv):
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(run), *FAST]) == 0
    raw = pl.read_csv(world_csv["test"], infer_schema=False).head(50)
    raw = raw.with_columns(pl.lit("never-seen-user").alias("user_id"), pl.lit("new|tags").alias("tags"))
    raw.write_csv(tmp_path / "new.csv")
    out = tmp_path / "pred.csv"
    assert main(["predict", "--run", str(run), "--input", str(tmp_path / "new.csv"), "--output", str(out)]) == 0
    p = pl.read_csv(out)["probability"]
    assert len(p) == 50 and p.min() > 0 and p.max() < 1


def test_unknown_model_is_one_line_error(tmp_path, world_data, capsys):
    code = main(["train", "--data", str(world_data), "--model", "nope", "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code != 0 and err.startswith("error:") and "nope" in err and "deepfm" in err
    assert len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # nothing half-written


def test_unknown_config_key(tmp_path, world_data, capsys):
    code = main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(tmp_path / "r"),
                 "--set", "train.learning_rate=1"])
    assert code != 0 and "train.learning_rate" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_nan_loss_names_the_step_and_leaves_nothing(tmp_path, world_data, capsys):
    code = main(["train", "--data", str(world_data), "--model", "dnn", "--out", str(tmp_path / "r"),
                 "--set", "train.lr=1e30", "--set", "model.hidden=[32]", "--quiet"])
    err = capsys.readouterr().err
    assert code != 0 and "step" in err and "epoch 1" in err
    assert not (tmp_path / "r").exists()


def test_schema_from_another_dataset_at_evaluate(tmp_path, world_data, world_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "lr", "--out", str(run), *FAST]) == 0
    other = tmp_path / "other"
    assert main(["prepare", "--train", str(world_csv["train"]), "--out", str(other), "--quiet"]) == 0
    assert main(["evaluate", "--run", str(run), "--data", str(other)]) != 0
    assert "schema" in capsys.readouterr().err


def test_predict_missing_column(tmp_path, world_data, world_csv, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(world_data), "--model", "lr", "--out", str(run), *FAST]) == 0
    pl.read_csv(world_csv["test"], infer_schema=False).drop("price").head(5).write_csv(tmp_path / "x.csv")
    out = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--input", str(tmp_path / "x.csv"), "--output", str(out)]) != 0
    err = capsys.readouterr().err
    assert "x.csv" in err and "'price'" in err and not out.exists()


@pytest.mark.parametrize("content,expect", [
    ("label,a,b\n1,x,y\n0,x\n", "row 3"),  # wrong column count
    ("", "x.csv"),  # empty file
    ("label,a\n1,x\n7,y\n", "row 3, column 'label'"),  # label outside {0,1}
])
def test_prepare_bad_input(tmp_path, capsys, content, expect):
    f = tmp_path / "x.csv"
    f.write_text(content)
    out = tmp_path / "out"
    assert main(["prepare", "--train", str(f), "--out", str(out), "--quiet"]) != 0
    err = capsys.readouterr().err
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob("out.tmp*"))


def test_prepare_text_in_numerical_column(tmp_path, capsys):
    f = tmp_path / "x.csv"
    f.write_text("label,a,n\n1,x,1.5\n0,y,abc\n1,x,2\n")
    assert main(["prepare", "--train", str(f), "--numerical", "n", "--out", str(tmp_path / "o"), "--quiet"]) != 0
    assert "row 3, column 'n'" in capsys.readouterr().err


def test_plot_compares_runs_in_one_png(tmp_path, world_data, capsys):
    pytest.importorskip("matplotlib")
    runs = []
    for model in ("lr", "deepfm"):
        runs += ["--run", str(tmp_path / model)]
        assert main(["train", "--data", str(world_data), "--model", model, "--out", str(tmp_path / model), *FAST]) == 0
    out = tmp_path / "figs" / "cmp.png"
    assert main(["plot", *runs, "--out", str(out)]) == 0
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # three panels drawn, not an empty canvas
    assert sorted(p.name for p in out.parent.iterdir()) == ["cmp.png"]  # no temporary file left behind
    assert main(["plot", "--run", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")]) == 2
    assert "nowhere: no metrics.json" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"history": [],\n "test": {oops}}')
    assert main(["plot", "--run", str(bad), "--out", str(tmp_path / "x.png")]) == 2
    assert "metrics.json, row 2: not valid JSON" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_demo_generates_prepares_trains_and_plots(tmp_path, capsys):
    """The README's first command, small: the click world, prepared, a model and its APG version trained,
    their curves drawn in one figure."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--rows", "3000", "--set", "model.hidden=[16]",
                 "--set", "train.epochs=2", "--quiet"]) == 0
    m = json.loads((out / "run" / "metrics.json").read_text())
    assert set(m["test"]["per_domain"]) and 0 < m["test"]["auc"] <= 1 and "gauc" in m["test"]
    assert "adaptivity" not in m
    apg = json.loads((out / "run-apg" / "metrics.json").read_text())
    assert apg["params"] > m["params"] and set(apg["adaptivity"]) == {"tower.layers.0"}
    apg_config = json.loads((out / "run-apg" / "config.json").read_text())["config"]
    assert apg_config["model"]["apg"]["condition_fields"] == ["domain", "user_segment"]
    # each at its own embedding L2 (cli.DEMO_L2)
    assert apg_config["train"]["embedding_l2"] == 0.1
    assert json.loads((out / "run" / "config.json").read_text())["config"]["train"]["embedding_l2"] == 0.03
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "curves.png" in capsys.readouterr().out
