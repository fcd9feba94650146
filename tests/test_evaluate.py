"""How little must we store: the evaluation's pieces, the whole on the synthetic fruit vectors, and on real photos held
out by film or as a separate set (a random split of film frames measures too high, and says so)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cloud_pca.evaluate import EvaluateError, encode, evaluate, knn_predict, ridge_predict, split_column, split_of


def test_encodings_round_trip_within_their_precision():
    rng = np.random.RandomState(0)
    x = rng.randn(200, 16) * np.linspace(0.1, 10, 16)
    assert np.array_equal(encode(x, x, "float32"), x.astype(np.float32).astype(np.float64))
    assert np.abs(encode(x, x, "float16") - x).max() <= np.abs(x).max() * 2 ** -10
    err = np.abs(encode(x, x, "int8") - x)
    assert (err <= np.abs(x).max(axis=0) / 127 / 2 + 1e-12).all()  # half a step of each column's scale


def test_classifiers_and_split_on_separable_data():
    rng = np.random.RandomState(1)
    centers = rng.randn(4, 5) * 10
    y = np.repeat(np.array(["a", "b", "c", "d"]), 30)
    x = centers[np.repeat(np.arange(4), 30)] + rng.randn(120, 5)
    test = np.arange(120) % 4 == 0
    for fn in (knn_predict, ridge_predict):
        assert (fn(x[~test], y[~test], x[test]) == y[test]).mean() >= 0.95, fn.__name__
    u = [split_of(f"{i:064x}", 3) for i in range(1000)]
    assert u == [split_of(f"{i:064x}", 3) for i in range(1000)] and 0 <= min(u) and max(u) < 1
    assert 0.2 < np.mean(np.array(u) < 0.25) < 0.3


def test_the_split_in_spark_is_the_split_in_python(spark):
    """The held-out split is computed in Spark SQL (no Python UDF): exactly split_of's numbers."""
    ids = [f"{i:064x}" for i in range(200)] + ["f" * 64]
    df = spark.createDataFrame([(i,) for i in ids], "image_id string")
    got = {r["image_id"]: r["u"] for r in df.select("image_id", split_column("image_id", 3).alias("u")).collect()}
    assert got == {i: split_of(i, 3) for i in ids}


@pytest.mark.slow
def test_evaluate_on_the_synthetic_fruit_vectors(vectors_file, spark, tmp_path, capsys):
    """6 classes x 10 photos: chance is 1/6; the full vectors identify the fruit far better, and the answer
    is a stored form at most as big as the full vectors, within 1 point of their accuracy."""
    ev = evaluate(spark, [f"file://{vectors_file}"], ks=(2, 4, 8), seed=0, split="image")   # renders, not films
    assert ev.classes == 6 and ev.n_train + ev.n_test == 60 and ev.n_test >= 8
    assert len(ev.rows) == 4 * 3 * 2          # (full + 3 k) x 3 dtypes x 2 classifiers
    full = {r["classifier"]: r["accuracy"] for r in ev.rows if r["form"] == "full" and r["dtype"] == "float32"}
    assert min(full.values()) >= 0.75, full  # chance: 0.17
    for clf, a in ev.answer.items():
        assert a["accuracy"] >= full[clf] - 0.01 and a["bytes_per_image"] <= 1280 * 4
        assert a["sentence"].startswith("storing ") and "bytes per image" in a["sentence"]
    from cloud_pca.cli import main as cloud_main

    assert cloud_main(["--quiet", "evaluate", "--input", str(vectors_file), "--output", str(tmp_path / "ev"),
                       "--ks", "2,4", "--split", "image"]) == 0
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert set(saved["answer"]) == {"knn5", "ridge"}
    assert (tmp_path / "ev" / "accuracy_vs_bytes.png").stat().st_size > 10_000
    assert "knn5: storing" in capsys.readouterr().out


def test_one_label_is_refused(tmp_path, spark):
    from contract import write_vectors

    n = 10
    rows = {"image_id": [f"{i:064x}" for i in range(n)], "label": ["Apple"] * n, "source": ["x.jpg"] * n,
            "width": [1] * n, "height": [1] * n, "features": [list(np.random.RandomState(i).rand(1280)) for i in range(n)],
            "model_sha256": ["a" * 64] * n, "model_name": ["m"] * n, "client_id": ["c"] * n,
            "vectorized_at": [None] * n}
    write_vectors(tmp_path / "v.parquet", rows, model_sha256="a" * 64, model_name="m")
    with pytest.raises(EvaluateError, match="at least 2 labels"):
        evaluate(spark, [f"file://{tmp_path}/v.parquet"])


def test_a_bucket_holding_two_models_vectors_is_evaluated_one_model_at_a_time(tmp_path, spark):
    """A bucket moving from one model to another holds both models' vectors, which share no PCA: without a model
    named, evaluate refuses the mix and lists the fingerprints; with one named, only its rows count. The daily chain
    names the launch's model in pca and evaluate."""
    from bootstrap.emr import ClusterSpec, job_chain, model_sha256
    from contract import write_vectors

    rng = np.random.RandomState(0)
    for sha, n in (("a" * 64, 40), ("b" * 64, 24)):
        labels = ["Apple", "Kiwi"] * (n // 2)
        rows = {"image_id": [f"{sha[0]}{i:063x}" for i in range(n)], "label": labels,
                "source": [f"{lab}/{i}_100.jpg" for i, lab in enumerate(labels)], "width": [1] * n, "height": [1] * n,
                "features": [list(rng.rand(1280) + (lab == "Kiwi")) for lab in labels], "model_sha256": [sha] * n,
                "model_name": ["m"] * n, "client_id": ["c"] * n, "vectorized_at": [None] * n}
        (tmp_path / "v").mkdir(exist_ok=True)
        write_vectors(tmp_path / "v" / f"{sha[0]}.parquet", rows, model_sha256=sha, model_name="m")
    with pytest.raises(EvaluateError, match=r"2 different models \(aaaaaaaaaaaa...: 40 rows, bbbbbbbbbbbb...: 24 rows\)"):
        evaluate(spark, [f"file://{tmp_path}/v"], ks=(2,), split="image")
    ev = evaluate(spark, [f"file://{tmp_path}/v"], ks=(2,), split="image", model_sha256="b" * 64)
    assert ev.n_train + ev.n_test == 24
    spec = ClusterSpec(bucket="b", prefix="p", run_id="r", k=8, evaluate=True, publish_k=8)
    steps = {step.args[0]: step.args for step in job_chain(spec)}
    sha = model_sha256(spec.model)
    for name in ("pca", "evaluate"):
        assert steps[name][steps[name].index("--model-sha256") + 1] == sha, steps[name]


@pytest.mark.slow
def test_evaluate_on_real_photos_by_film_by_image_and_on_a_test_set(real_vectors, spark, tmp_path, capsys):
    """Real Fruits-360 frames: the film split gives every frame of one film the same side (its number depends on the
    label and film only), a separate Test set is used whole, and a split whose held-out rows have a near-identical
    training row (cosine >= 0.99) says so: here a split by image of Training plus copies of 40 of its rows under other
    ids, which a split by image puts on both sides."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from cloud_pca.cli import main as cloud_main
    from cloud_pca.evaluate import film_split_column
    from cloud_pca.identifier import film_of

    train = f"file://{real_vectors['Training']}"
    film = evaluate(spark, [train], ks=(8, 32), seed=0)
    assert film.split == "film" and film.classes == 21 and film.n_train + film.n_test + film.left_out == 695
    rows = spark.read.parquet(train).select("label", "source", "image_id", film_split_column(0).alias("u")).collect()
    sides = {}
    for r in rows:
        sides.setdefault((r["label"], film_of(r["source"], r["image_id"])), set()).add(r["u"])
    assert all(len(u) == 1 for u in sides.values()) and len(sides) < len(rows) / 2   # films of 2-3 frames here
    test = evaluate(spark, [train], ks=(8, 32), test_inputs=[f"file://{real_vectors['Test']}"])
    assert test.split == "test set" and (test.n_train, test.n_test) == (695, 314)
    # copies of 5 training rows under new ids: near-identical rows a split by image can put on both sides
    t = pq.read_table(real_vectors["Training"])
    copies = t.slice(0, 40).set_column(0, "image_id", pa.array([f"{i:064x}" for i in range(40)]))
    pq.write_table(pa.concat_tables([t, copies.cast(t.schema)]), tmp_path / "with-copies.parquet")
    assert cloud_main(["--quiet", "evaluate", "--input", str(tmp_path / "with-copies.parquet"), "--output",
                       str(tmp_path / "ev"), "--ks", "8", "--split", "image"]) == 0
    err = capsys.readouterr().err
    saved = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert saved["split"] == "image" and saved["near_duplicates"] >= 1, saved["near_duplicates"]
    assert "Warning: " in err and "near-identical training row (cosine >= 0.99)" in err and "--split film" in err
