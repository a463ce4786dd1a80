"""Real data from ../shared/data (research-use; read in place, never copied into the repo)."""

import json

import pytest

from adactr.cli import main


@pytest.fixture(scope="module")
def frappe(tmp_path_factory, shared_data):
    d = shared_data / "frappe_x1"
    out = tmp_path_factory.mktemp("frappe") / "prepared"
    assert main(["prepare", "--train", str(d / "train.csv.gz"), "--valid", str(d / "valid.csv.gz"),
                 "--test", str(d / "test.csv.gz"), "--out", str(out), "--quiet"]) == 0
    return out


def test_frappe_prepared_as_published(frappe):
    meta = json.loads((frappe / "meta.json").read_text())
    assert meta["rows"] == {"train": 202027, "valid": 57722, "test": 28860}
    schema = json.loads((frappe / "schema.json").read_text())
    assert [f["name"] for f in schema["fields"]] == ["user", "item", "daytime", "weekday", "isweekend",
                                                     "homework", "cost", "weather", "country", "city"]


@pytest.mark.slow
def test_frappe_deepfm_reaches_097_auc_in_two_epochs(frappe, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(frappe), "--model", "deepfm", "--out", str(run), "--quiet",
                 "--set", "train.epochs=2", "--set", "train.batch_size=1024", "--set", "model.batch_norm=true",
                 "--set", "train.embedding_l2=0.01", "--device", "cpu"]) == 0
    m = json.loads((run / "metrics.json").read_text())
    assert m["epochs"] == 2
    assert m["test"]["auc"] > 0.97, m["test"]


@pytest.mark.parametrize("fmt,files", [
    ("criteo", ("criteo_sample", "train.txt", "dev.txt", "test.txt")),
    ("avazu", ("avazu_sample", "train.csv", "dev.csv", "test.csv")),
])
def test_criteo_and_avazu_samples_end_to_end(tmp_path, shared_data, fmt, files):
    folder, tr, va, te = files
    d = shared_data / folder
    data = tmp_path / "data"
    assert main(["prepare", "--format", fmt, "--train", str(d / tr), "--valid", str(d / va), "--test", str(d / te),
                 "--out", str(data), "--quiet"]) == 0
    schema = json.loads((data / "schema.json").read_text())
    assert len(schema["fields"]) == (39 if fmt == "criteo" else 23)
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "dcnv2", "--out", str(run), "--quiet", "--device", "cpu",
                 "--set", "train.epochs=2", "--set", "train.batch_size=512", "--set", "model.hidden=[64,64]"]) == 0
    assert json.loads((run / "metrics.json").read_text())["test"]["auc"] > 0.55
    # raw rows of the test file straight into predict (the Avazu test file has no header)
    out = tmp_path / "p.csv"
    assert main(["predict", "--run", str(run), "--input", str(d / te), "--output", str(out)]) == 0
    assert len(out.read_text().splitlines()) == (392 if fmt == "criteo" else 433)


def test_movielens_multi_domain_metrics(tmp_path, shared_data):
    d = shared_data / "movielens_1m"
    data = tmp_path / "data"
    assert main(["prepare", "--train", str(d / "valid.csv.gz"), "--valid", str(d / "test.csv.gz"),
                 "--test", str(d / "test.csv.gz"), "--ignore", "rating", "--domain", "domain",
                 "--group", "user_id", "--out", str(data), "--quiet"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--model", "dnn", "--out", str(run), "--quiet", "--device", "cpu",
                 "--set", "train.epochs=1", "--set", "model.hidden=[64]"]) == 0
    t = json.loads((run / "metrics.json").read_text())["test"]
    assert 0.5 < t["gauc"] < 1
    counts = {k: v["count"] for k, v in t["per_domain"].items()}
    assert set(counts) == {"0", "1", "2"} and sum(counts.values()) == t["count"] == 100021
    assert "rating" not in [f["name"] for f in json.loads((data / "schema.json").read_text())["fields"]]
