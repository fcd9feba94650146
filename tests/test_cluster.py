"""The EMR steps as a cluster runs them: spark-submit to a standalone cluster on 127.0.0.1 (master, two
workers, their executors: separate JVMs), with Spark's defaults, against the local S3 server; and a Gram
solver whose driver traffic does not grow with the partitions."""
from __future__ import annotations

import json

import numpy as np
import pytest

from bootstrap.emr import ClusterSpec
from bootstrap.rehearse import rehearse
from contract.layout import upload_day
from cloud_pca.pca import GramSums, gram_sums, tree_sum
from cloud_pca.spark import driver_traffic

PREFIX = "fruits"
K = 16
PACKED_1280 = (1280 + 1280 * 1281 // 2) * 8      # one packed partial: n, sum and the upper triangle, float64


def run_step(argv: list[str], workdir):
    """One step's spark-submit command line as the rehearsal ran it (its environment: loopback, this Python)."""
    import sys

    from cloud_pca.standalone import loopback_env, run_group

    env = loopback_env(None)
    env.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    return run_group(argv, timeout=600, env=env, cwd=workdir)


def get_json(s3, bucket, key):
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def uploaded(tmp_path_factory, s3_server, model_path):
    """360 synthetic photos of 6 fruits: 300 vectorized and uploaded by a 'device', 60 uploaded raw."""
    import boto3

    from models.synthetic import generate
    from edge_client.cli import main as edge_main

    base = tmp_path_factory.mktemp("cluster-data")
    photos = generate(base / "photos", per_class=60, n_classes=6, seed=31)
    edge, raw = base / "edge", base / "raw"
    for i, f in enumerate(sorted(photos.rglob("*.jpg"))):
        target = (raw if i % 6 == 5 else edge) / f.parent.name / f.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(f.read_bytes())
    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    bucket = "fruits-cluster-test"
    s3.create_bucket(Bucket=bucket)
    common = ["--endpoint-url", s3_server.endpoint_url, "--manifest", str(base / "m.sqlite")]
    assert edge_main(["--quiet", "sync", str(edge), f"s3://{bucket}/{PREFIX}", *common]) == 0
    assert edge_main(["--quiet", "upload-raw", str(raw), f"s3://{bucket}/{PREFIX}", *common]) == 0
    # A hostile phone's junk, as IAM lets it write: a 0-byte object and a key of 32 dots. The chain passes no
    # --skip-bad-files: one device's bad objects must stop only that device (issue 32).
    junk = f"{PREFIX}/vectors/model={'0' * 64}/day={upload_day()}/client=eu-west-3:00000000-0000-4000-8000-0000000000ff"
    s3.put_object(Bucket=bucket, Key=f"{junk}/part-{'e' * 32}.parquet", Body=b"")
    s3.put_object(Bucket=bucket, Key=f"{junk}/part-{'.' * 32}.parquet", Body=b"not parquet")
    return s3, bucket


@pytest.fixture(scope="module")
def cluster_run(cluster, uploaded, s3_server, tmp_path_factory):
    """featurize -> pca -> evaluate -> publish, the request's own steps, with Spark's defaults."""
    s3, bucket = uploaded
    spec = ClusterSpec(bucket=bucket, prefix=PREFIX, images=True, k=K, evaluate=True, publish_k=8, run_id="cluster")
    steps = rehearse(spec, master=cluster.master_url, endpoint_url=s3_server.endpoint_url, s3_client=s3,
                     workdir=tmp_path_factory.mktemp("rehearsal"))
    print("step seconds:", {s.name: round(s.seconds, 1) for s in steps.steps})
    return spec, steps


@pytest.mark.slow
def test_emr_steps_on_a_cluster_give_local_modes_results(cluster_run, uploaded, spark):
    """The five steps pass on the cluster (the last writes the run's report next to it), and equal the project's local mode (local[2], one JVM) on the
    same inputs. Tolerances: variance ratios 1e-9 (float64 sums in another order); components 1e-6 where
    the eigengap makes them identifiable (relative gap > 1e-3; near-equal eigenvalues may rotate);
    projections 1e-4 of their range (stored as float32)."""
    from cloud_pca.cli import main as cloud_main
    from cloud_pca.pca import load_pipeline

    spec, steps = cluster_run
    s3, bucket = uploaded
    assert [s.name for s in steps.steps] == ["fruits: featurize raw photos", "fruits: StandardScaler + PCA",
                                             "fruits: evaluate (accuracy vs bytes per image)",
                                             "fruits: publish projection + index for the devices",
                                             "fruits: report"]
    page = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/pca/run=cluster/report.html")["Body"].read().decode()
    assert "Plotly.newPlot(\"pca3d\"" in page and "Published for the devices" in page and "evaluate" in page
    pca_argv = steps.steps[1].argv
    assert "spark.sql.shuffle.partitions" not in " ".join(pca_argv), "Spark's default 200 partitions"
    remote = get_json(s3, bucket, f"{PREFIX}/pca/run=cluster/summary.json")
    assert (remote["rows_in"], remote["projected"], remote["rejected"]) == (360, 360, 0)
    assert remote["contributions"]["quarantined"] == 2, remote["contributions"]   # listed, never fatal
    # Local mode: the same inputs, featurizing the raw photos itself.
    model = f"s3a://{bucket}/{PREFIX}/models/{spec.model}"
    assert cloud_main(["--quiet", "pca", "--input", f"s3://{bucket}/{PREFIX}/vectors/", "--images",
                       f"s3://{bucket}/{PREFIX}/raw/", "--model", model, "--output", f"s3://{bucket}/{PREFIX}/local",
                       "--k", str(K), "--run-id", "local", "--no-plots"]) == 0
    local = get_json(s3, bucket, f"{PREFIX}/local/run=local/summary.json")
    for key in ("rows_in", "projected", "rejected", "duplicates", "k"):
        assert remote[key] == local[key], key
    ratios = {}
    for name, run in (("cluster", f"{PREFIX}/pca/run=cluster"), ("local", f"{PREFIX}/local/run=local")):
        ratios[name] = np.array(get_json(s3, bucket, f"{run}/explained_variance.json")["explained_variance_ratio"])
    np.testing.assert_allclose(ratios["cluster"], ratios["local"], atol=1e-9)
    r = ratios["local"]
    gap = np.minimum(np.r_[np.inf, r[:-1] - r[1:]][:K], (r[:K] - r[1:K + 1])) / r[:K]
    clear = np.flatnonzero(gap > 1e-3)
    assert len(clear) >= K // 2, f"only {len(clear)} of {K} components are identifiable"
    comps = {name: load_pipeline(f"s3a://{bucket}/{run}/model").stages[1].pc.toArray()
             for name, run in (("cluster", f"{PREFIX}/pca/run=cluster"), ("local", f"{PREFIX}/local/run=local"))}
    np.testing.assert_allclose(comps["cluster"][:, clear], comps["local"][:, clear], atol=1e-6)
    proj = {}
    for name, run in (("cluster", f"{PREFIX}/pca/run=cluster"), ("local", f"{PREFIX}/local/run=local")):
        rows = spark.read.parquet(f"s3a://{bucket}/{run}/projections").select("image_id", "pca").collect()
        proj[name] = {row["image_id"]: np.asarray(row["pca"], np.float64) for row in rows}
    assert set(proj["cluster"]) == set(proj["local"]) and len(proj["local"]) == 360
    ids = sorted(proj["local"])
    a = np.stack([proj["cluster"][i] for i in ids])[:, clear]
    b = np.stack([proj["local"][i] for i in ids])[:, clear]
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
    # The fit's driver traffic on the cluster: one packed partial, not one per partition.
    assert remote["driver_result_bytes"]["fit"] < 1.5 * PACKED_1280, remote["driver_result_bytes"]


@pytest.mark.slow
def test_cluster_evaluate_and_publish_steps(cluster_run, uploaded, s3_server, spark, model_path, tmp_path):
    """The run ends with what devices download: a projection and an index under models/, fitted by the run."""
    from cloud_pca.evaluate import evaluate
    from contract.projection import Projection
    from models.synthetic import class_names
    from edge_client.project import Published
    from featurizer.runtime import Model

    spec, _ = cluster_run
    s3, bucket = uploaded
    remote = get_json(s3, bucket, f"{PREFIX}/pca/run=cluster/evaluation/evaluation.json")
    assert remote["classes"] == 6 and remote["n_train"] + remote["n_test"] == 360
    local = evaluate(spark, [f"s3a://{bucket}/{PREFIX}/vectors/", f"s3a://{bucket}/{PREFIX}/pca/featurized/run=cluster/vectors/"],
                     ks=(8, 16, 32, 64, 128, 256, 512))
    assert (local.n_train, local.n_test) == (remote["n_train"], remote["n_test"])
    by_key = {(r["form"], r["dtype"], r["classifier"]): r["accuracy"] for r in remote["results"]}
    for row in local.rows:   # same split and data: at most one held-out photo differs (near-ties)
        assert abs(by_key[(row["form"], row["dtype"], row["classifier"])] - row["accuracy"]) <= 1 / local.n_test + 1e-9

    model = Model(model_path)
    projection, index = Published(f"s3://{bucket}/{PREFIX}", client=s3,
                                  endpoint_url=s3_server.endpoint_url).identifier(model.sha256)
    assert isinstance(projection, Projection) and projection.k == 8 and projection.run == "cluster"
    from cloud_pca.pca import load_pipeline

    pc = load_pipeline(f"s3a://{bucket}/{PREFIX}/pca/run=cluster/model").stages[1].pc.toArray()
    np.testing.assert_allclose(projection.components, pc[:, :8], atol=1e-6)   # float32 storage
    assert index.labels == sorted(class_names(6)) and int(index.counts.sum()) == 360
    # The publish step again, its index fitted in Spark on the cluster (as for a run too large for the driver):
    # the same index as the driver's.
    spec, steps = cluster_run
    publish_step = next(s for s in steps.steps if s.name.startswith("fruits: publish"))
    argv = list(publish_step.argv)
    argv[argv.index("--root") + 1] = f"s3a://{bucket}/{PREFIX}/in-spark"
    proc = run_step(argv + ["--driver-read-mb", "0"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, in_spark = Published(f"s3://{bucket}/{PREFIX}/in-spark", client=s3,
                            endpoint_url=s3_server.endpoint_url).identifier(model.sha256)
    from test_projection import same_index

    same_index(index, in_spark)


@pytest.mark.slow
def test_pca_step_with_1000_shuffle_partitions_and_a_64m_result_limit(cluster, uploaded, s3_server, tmp_path):
    """Before the fix, each of the ~170 non-empty dedup partitions sent a 13 MB Gram partial to the driver
    and the step failed (over 1 GiB of results; "unread block data" with the default driver)."""
    s3, bucket = uploaded
    spec = ClusterSpec(bucket=bucket, prefix=PREFIX, k=K, run_id="p1000")
    rehearse(spec, master=cluster.master_url, endpoint_url=s3_server.endpoint_url, workdir=tmp_path,
             conf={"spark.sql.shuffle.partitions": "1000", "spark.driver.maxResultSize": "64m"})
    summary = get_json(s3, bucket, f"{PREFIX}/pca/run=p1000/summary.json")
    assert summary["projected"] == 300 and summary["k"] == K
    assert summary["driver_result_bytes"]["fit"] < 1.5 * PACKED_1280, summary["driver_result_bytes"]


def test_driver_receives_one_partial_whatever_the_partitions(spark):
    """gram_sums on 10 and on 1,000 partitions: the same statistics, and the driver receives the same bytes
    (one packed partial), measured with Spark's resultSize metric."""
    rng = np.random.RandomState(0)
    x = rng.rand(400, 1280).astype(np.float32)
    df = spark.createDataFrame([(row.tolist(),) for row in x], "features array<float>").cache()
    received, sums = {}, {}
    for parts in (10, 1000):
        with driver_traffic(spark, "test-gram") as traffic:
            sums[parts] = gram_sums(df.repartition(parts))
        received[parts] = traffic["bytes"]
    assert sums[10].n == sums[1000].n == 400
    np.testing.assert_allclose(sums[1000].upper, sums[10].upper, rtol=1e-12)
    np.testing.assert_allclose(sums[10].gram(), x.astype(np.float64).T @ x.astype(np.float64), rtol=1e-10)
    assert PACKED_1280 <= received[10] < 1.2 * PACKED_1280, received
    assert abs(received[1000] - received[10]) < 0.05 * received[10], received


def test_tree_sum_sends_one_partial_from_hundreds_of_partitions(spark):
    """The executors add the partials fan_in at a time (240 -> 30 -> 4 -> 1). Reference, same run: collecting
    the 240 partials."""
    d, parts = 128, 240
    rdd = spark.sparkContext.parallelize(range(parts), parts).map(
        lambda i: GramSums.of(np.full((1, d), float(i)))).cache()
    with driver_traffic(spark, "test-collect") as reference:
        assert len(rdd.collect()) == parts
    with driver_traffic(spark, "test-tree") as traffic:
        total = tree_sum(rdd, fan_in=8)
    values = np.arange(parts, dtype=np.float64)
    assert total.n == parts and np.allclose(total.total, values.sum())
    assert np.isclose(total.gram()[0, 0], (values ** 2).sum())
    assert reference["bytes"] > parts * total.nbytes
    # What remains is Spark's per-task bookkeeping (metrics, map statuses) of the ~275 tasks, and one partial.
    assert traffic["bytes"] < reference["bytes"] / 8, (traffic.totals, reference.totals)


@pytest.mark.slow
def test_the_incremental_pca_step_on_a_cluster(cluster, s3_server, spark, tmp_path):
    """The EMR step with --incremental, twice on the cluster: the second reads the second batch only, and the
    result equals a full fit in local mode (tolerances as in test_incremental)."""
    import boto3

    from cloud_pca.job import JobConfig, run
    from vectors_for_tests import contract_rows, layout_key, low_rank, put_rows

    from bootstrap.emr import model_sha256

    s3 = boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    bucket = "fruits-incremental-test"
    s3.create_bucket(Bucket=bucket)
    x = low_rank(n=400, seed=5)
    fp32 = "mobilenetv2_160_fp32.tflite"     # the chain fits the launch model's vectors only (--model-sha256)
    for run_id, lo, hi in (("d1", 0, 200), ("d2", 200, 400)):
        for i, (a, b) in enumerate(((lo, lo + 100), (lo + 100, hi))):
            rows = contract_rows(b - a, start=a, x=x[a:b], model=model_sha256(fp32))
            put_rows(s3, bucket, layout_key(PREFIX, rows), rows)
        rehearse(ClusterSpec(bucket=bucket, prefix=PREFIX, k=5, incremental=True, run_id=run_id, model=fp32),
                 master=cluster.master_url, endpoint_url=s3_server.endpoint_url, workdir=tmp_path / run_id)
    second = get_json(s3, bucket, f"{PREFIX}/pca/run=d2/summary.json")["incremental"]
    assert (second["objects_counted_before"], second["objects_read"], second["rows_total"]) == (2, 2, 400)
    full = run(spark, JobConfig(inputs=[f"s3a://{bucket}/{PREFIX}/vectors/"], output=f"s3a://{bucket}/local",
                                k=5, run_id="full", plots=False)).model
    from cloud_pca.pca import FruitsPCAModel

    inc = FruitsPCAModel.load(spark, f"s3a://{bucket}/{PREFIX}/pca/run=d2/model")
    np.testing.assert_allclose(inc.mean_, full.mean_, rtol=1e-9)
    np.testing.assert_allclose(inc.explained_variance_ratio_, full.explained_variance_ratio_, atol=1e-9)
    np.testing.assert_allclose(inc.components_, full.components_, atol=1e-7)


@pytest.mark.slow
def test_the_serverless_job_runs_on_a_cluster(cluster, uploaded, s3_server, tmp_path):
    """The EMR Serverless chain (the incremental daily refresh: featurize only new photos, pca --incremental
    --reproject, publish, report), each job run as spark-submit of its own parameters, entry point and
    arguments, on the standalone cluster with Spark's defaults."""
    from bootstrap.rehearse import rehearse_job_runs

    s3, bucket = uploaded
    spec = ClusterSpec(bucket=bucket, prefix=PREFIX, images=True, incremental=True, k=K, publish_k=8,
                       run_id="serverless")
    done = rehearse_job_runs(spec, master=cluster.master_url, endpoint_url=s3_server.endpoint_url, s3_client=s3,
                             workdir=tmp_path)
    assert [s.name for s in done.steps] == ["fruits: featurize raw photos", "fruits: StandardScaler + PCA",
                                            "fruits: publish projection + index for the devices", "fruits: report"]
    assert all(s.returncode == 0 for s in done.steps)
    summary = get_json(s3, bucket, f"{PREFIX}/pca/run=serverless/summary.json")
    assert summary["incremental"]["rows_total"] == 360 and summary["incremental"]["projections"] == "all rows"
    assert summary["contributions"]["quarantined"] == 2, "the hostile device's junk is listed, never fatal"
    state = get_json(s3, bucket, f"{PREFIX}/pca/featurized/run=incremental/state/model={summary['model_sha256']}/current.json")
    assert state["count"] == 60, "the 60 raw photos are recorded as featurized"
    assert "photos read: 60" in done.steps[0].stdout
