"""The Spark PCA: both solvers against numpy on low-rank data, bad input, and the job over s3a://."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cloud_pca.job import JobConfig, JobError, run
from cloud_pca.pca import PCAInputError, fit_pca
from vectors_for_tests import contract_rows, low_rank, put_rows


def numpy_reference(x, k):
    x = x.astype(np.float64)
    std = x.std(axis=0, ddof=1)  # Spark's StandardScaler divides by n - 1
    z = (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)
    values, vectors = np.linalg.eigh(np.cov(z, rowvar=False))
    order = np.argsort(values)[::-1]
    return vectors[:, order[:k]], values[order] / values.sum(), z @ vectors[:, order[:k]]


def frame(spark, x):
    return spark.createDataFrame([(i, [float(v) for v in row]) for i, row in enumerate(x)], "id long, features array<float>")


@pytest.mark.slow
def test_gram_and_spark_solvers_agree_with_numpy(spark):
    x = low_rank()
    df = frame(spark, x).repartition(3)
    ref_pc, ref_ratio, ref_proj = numpy_reference(x, 5)
    models = {s: fit_pca(df, k=5, solver=s) for s in ("gram", "spark")}
    for solver, m in models.items():
        assert m.components_.shape == (5, 1280) and m.explained_variance_ratio_.shape == (5,)  # sklearn's shapes
        assert m.n_components_ == 5 and m.n_features_in_ == 1280 and m.n_samples_ == 400 and m.solver_ == solver
        sign = np.sign((m.components_.T * ref_pc).sum(axis=0))  # components are defined up to sign
        np.testing.assert_allclose(m.components_.T * sign, ref_pc, atol=2e-4, err_msg=solver)
        np.testing.assert_allclose(m.explained_variance_ratio_, ref_ratio[:5], rtol=1e-4, err_msg=solver)
        out = m.transform(df).orderBy("id").select("pca").collect()
        proj = np.array([r["pca"].toArray() for r in out])
        np.testing.assert_allclose(proj * sign, ref_proj, atol=2e-3 * np.abs(ref_proj).max(), err_msg=solver)
        # The job's numpy projection (mapInArrow) gives the saved Spark pipeline's numbers.
        fast = np.array([r["pca"] for r in m.project(df).orderBy("id").select("pca").collect()])
        assert fast.shape == proj.shape
        np.testing.assert_allclose(fast, proj, rtol=1e-5, atol=1e-5 * np.abs(proj).max(), err_msg=solver)
    # Same sign convention: the two solvers give the same numbers, not only up to sign.
    np.testing.assert_allclose(models["gram"].components_, models["spark"].components_, atol=2e-4)
    assert models["gram"].explained_variance_ratio_.sum() > 0.99


def test_variance_picks_the_smallest_k_and_bad_k_is_explained(spark):
    x = low_rank(n=120, seed=1)
    df = frame(spark, x)
    m = fit_pca(df, variance=0.9)
    cum = np.cumsum(m.spectrum_)
    assert cum[m.n_components_ - 1] >= 0.9 and (m.n_components_ == 1 or cum[m.n_components_ - 2] < 0.9)
    with pytest.raises(PCAInputError, match=r"k=200 must be between 1 and min\(n_features=1280, n_rows=120\) = 120"):
        fit_pca(df, k=200)
    with pytest.raises(PCAInputError, match=r"k=2000 must be between 1 and n_features=1280"):
        fit_pca(df, k=2000)


def test_constant_columns_get_std_exactly_zero_and_no_nan(spark):
    """A constant column (min == max) has std exactly 0 in both solvers (the Gram formula alone leaves
    1e-10..5e-8 of rounding), scales to 0, and never makes NaN."""
    x = low_rank(n=50, seed=2)
    x[:, :10] = 3.0
    x[:, 10] = 1234.5678
    for solver in ("gram", "spark"):
        m = fit_pca(frame(spark, x), k=3, solver=solver)
        assert (m.scale_[:11] == 0).all() and (m.scale_[11:] > 0).all(), solver
        assert np.isfinite(m.components_).all() and (m.components_[:, :11] == 0).all(), solver
        proj = np.array([r["pca"].toArray() for r in m.transform(frame(spark, x)).collect()])
        assert np.isfinite(proj).all()
        fast = np.array([r["pca"] for r in m.project(frame(spark, x)).orderBy("id").collect()])
        assert np.isfinite(fast).all()


def test_degenerate_input_and_bad_requests_are_refused(spark):
    """All rows identical is an error, not "k=1, 100% explained"; k and variance are checked first."""
    same = np.tile(low_rank(n=1, seed=3), (20, 1))
    for solver in ("gram", "spark"):
        with pytest.raises(PCAInputError, match=r"all 20 vectors are equal in every column"):
            fit_pca(frame(spark, same), variance=0.95, solver=solver)
    with pytest.raises(PCAInputError, match=r"variance=1.5 must be in \(0, 1\]"):
        fit_pca(None, variance=1.5)         # no data touched: the request is checked before any
    with pytest.raises(PCAInputError, match=r"k=0 must be between 1 and n_features=1280"):
        fit_pca(None, k=0)


def test_model_saves_and_loads_as_itself_and_as_a_spark_pipeline(spark, tmp_path):
    from cloud_pca.pca import FruitsPCAModel, load_pipeline

    x = low_rank(n=80, seed=4)
    df = frame(spark, x)
    m = fit_pca(df, k=4)
    uri = f"file://{tmp_path}/model"
    m.save(spark, uri)
    back = FruitsPCAModel.load(spark, uri)
    assert back.model_id_ == m.model_id_ and back.n_components_ == 4 and back.choice_ == m.choice_
    np.testing.assert_array_equal(back.components_, m.components_)
    np.testing.assert_array_equal(back.spectrum_, m.spectrum_)
    np.testing.assert_allclose(back.transform_array(x), m.transform_array(x))
    pipeline = load_pipeline(uri)   # the same folder is a Spark ML PipelineModel (written without Spark ML)
    assert [type(st).__name__ for st in pipeline.stages] == ["StandardScalerModel", "PCAModel"]
    np.testing.assert_allclose(pipeline.stages[1].pc.toArray(), m.components_.T)
    np.testing.assert_array_equal(pipeline.stages[0].mean.toArray(), m.mean_)
    np.testing.assert_array_equal(pipeline.stages[0].std.toArray(), m.scale_)
    assert pipeline.stages[0].getWithMean() and pipeline.stages[0].getWithStd() and pipeline.stages[1].getK() == 4
    from pyspark.ml.functions import array_to_vector
    from pyspark.sql import functions as F

    spark_ml = np.stack([r["pca_out"].toArray() for r in pipeline.transform(
        df.withColumn("features_vec", array_to_vector(F.col("features")))).orderBy("id").collect()])
    ours = np.stack([r["pca"] for r in m.project(df).orderBy("id").collect()])
    np.testing.assert_allclose(spark_ml, ours, atol=1e-4 * np.abs(ours).max())   # ours is stored as float32


@pytest.mark.slow
def test_job_over_s3a_with_bad_rows_reconciles(spark, s3, bucket):
    from cloud_pca.pca import load_pipeline

    good = contract_rows(150)
    put_rows(s3, bucket, "v/model=a/part-1.parquet", good)
    put_rows(s3, bucket, "v/model=a/part-1-again.parquet", {k: v[:20] for k, v in good.items()})  # 20 duplicates
    bad = contract_rows(4, seed=3, start=1000)
    bad["features"][0] = bad["features"][0][:100]                   # wrong length
    bad["features"][1][5] = float("nan")                            # NaN
    bad["features"][2][7] = float("inf")                            # infinite
    bad["features"][3] = None                                       # null
    put_rows(s3, bucket, "v/model=a/part-bad.parquet", bad)
    result = run(spark, JobConfig(inputs=[f"s3a://{bucket}/v/"], output=f"s3a://{bucket}/pca", k=4, run_id="t1"))
    s = result.summary
    assert (s["rows_in"], s["projected"], s["rejected"], s["duplicates"]) == (174, 150, 4, 20)
    assert s["reconciles"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="pca/run=t1/")["Contents"]]
    for part in ("projections/", "model/", "rejects/", "plots/scree.png", "plots/pca_3d.png", "plots/pca_2d.png",
                 "explained_variance.json", "explained_variance.csv", "summary.json", "_SUCCESS.json"):
        assert any(k.startswith(f"pca/run=t1/{part}") for k in keys), part
    rejects = spark.read.parquet(f"s3a://{bucket}/pca/run=t1/rejects").collect()
    reasons = sorted(r["reason"] for r in rejects)
    assert reasons == ["NaN or infinite value in features", "NaN or infinite value in features",
                       "features has 100 values, expected 1280", "null features"]
    assert all(r["file"].endswith("part-bad.parquet") for r in rejects)
    proj = spark.read.parquet(f"s3a://{bucket}/pca/run=t1/projections")
    assert proj.count() == 150 and len(proj.first()["pca"]) == 4
    reloaded = load_pipeline(f"s3a://{bucket}/pca/run=t1/model")
    assert [type(st).__name__ for st in reloaded.stages] == ["StandardScalerModel", "PCAModel"]
    png = s3.get_object(Bucket=bucket, Key="pca/run=t1/plots/scree.png")["Body"].read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    explained = json.loads(s3.get_object(Bucket=bucket, Key="pca/run=t1/explained_variance.json")["Body"].read())
    assert explained["k"] == 4 and len(explained["cumulative"]) == 1280


def test_job_refuses_mixed_models_bad_files_and_empty_prefix(spark, s3, bucket, capsys):
    from cloud_pca.cli import main as cloud_main

    put_rows(s3, bucket, "v/a.parquet", contract_rows(30))
    put_rows(s3, bucket, "v/b.parquet", contract_rows(10, model="b" * 64, start=500))
    with pytest.raises(JobError, match=r"2 different models .*aaaaaaaaaaaa\.\.\.: 30 rows.*--model-sha256"):
        run(spark, JobConfig(inputs=[f"s3a://{bucket}/v/"], output=f"s3a://{bucket}/out", k=2, plots=False))
    r = run(spark, JobConfig(inputs=[f"s3a://{bucket}/v/"], output=f"s3a://{bucket}/out", k=2, plots=False,
                             model_sha256="a" * 64, run_id="sel"))
    assert (r.summary["projected"], r.summary["rejected"]) == (30, 10)

    s3.put_object(Bucket=bucket, Key="v/notes.parquet", Body=b"not parquet at all")
    code = cloud_main(["pca", "--input", f"s3a://{bucket}/v/", "--output", f"s3a://{bucket}/out", "--k", "2",
                       "--model-sha256", "a" * 64, "--no-plots"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("Error: s3a://") and "notes.parquet: not a readable Parquet file" in err[-1]
    r = run(spark, JobConfig(inputs=[f"s3a://{bucket}/v/"], output=f"s3a://{bucket}/out", k=2, plots=False,
                             model_sha256="a" * 64, skip_bad_files=True, run_id="skip"))
    assert [b["file"].rsplit("/", 1)[-1] for b in r.summary["bad_files"]] == ["notes.parquet"]
    with pytest.raises(JobError, match="no Parquet files under s3a://.*/empty/"):
        run(spark, JobConfig(inputs=[f"s3a://{bucket}/empty/"], output=f"s3a://{bucket}/out", k=2))


@pytest.mark.slow
def test_edge_vectors_through_s3_to_pca(tmp_path, vectors_file, spark, s3, s3_server, bucket):
    """The architecture end to end: edge upload -> s3a -> PCA job via the CLI, like an EMR step."""
    from cloud_pca.cli import main as cloud_main
    from edge_client.cli import main as edge_main

    assert edge_main(["--quiet", "upload", str(vectors_file), f"s3://{bucket}/team", "--endpoint-url",
                      s3_server.endpoint_url, "--manifest", str(tmp_path / "m.sqlite")]) == 0
    code = cloud_main(["--quiet", "pca", "--input", f"s3://{bucket}/team/vectors/", "--output",
                       f"s3://{bucket}/team/pca", "--variance", "0.9", "--run-id", "e2e"])
    assert code == 0
    summary = json.loads(s3.get_object(Bucket=bucket, Key="team/pca/run=e2e/summary.json")["Body"].read())
    assert summary["projected"] == 60 and summary["cumulative_explained_variance"] >= 0.9
