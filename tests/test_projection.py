"""Edge-side projection and identification: the device projects as the cloud does, refuses another model's
projection, uploads k-d vectors the PCA job keeps apart from raw ones, and identifies held-out photos."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from cloud_pca.job import JobConfig, JobError, run
from cloud_pca.publish import publish
from contract import read_vectors
from contract.layout import latest_projection_key
from contract.projection import Projection, ReferenceIndex
from edge_client.cli import main as edge_main

K = 8


@pytest.fixture(scope="module")
def published(tmp_path_factory, vectors_file, spark):
    """A PCA run on the synthetic vectors (6 classes x 10) and its published projection + index."""
    base = tmp_path_factory.mktemp("published")
    (base / "in").mkdir()
    (base / "in" / "v.parquet").write_bytes(vectors_file.read_bytes())
    result = run(spark, JobConfig(inputs=[f"file://{base}/in"], output=f"file://{base}/pca", k=K, run_id="p",
                                  plots=False))
    projection, index, written = publish(spark, result.run_uri, f"file://{base}/root")
    return base, result, projection, index


@pytest.mark.slow
def test_device_projection_equals_the_cloud_projection(published, vectors_file, spark):
    base, result, projection, index = published
    pid = projection.projection_id
    on_disk = Projection.from_bytes((base / "root" / "models" / f"projection-{pid}.npz").read_bytes())
    assert on_disk.k == K and on_disk.model_sha256 == result.summary["model_sha256"]
    pointer = json.loads((base / "root" / latest_projection_key("", on_disk.model_sha256)).read_text())
    assert pointer["projection_id"] == pid
    edge = read_vectors(vectors_file).to_pydict()
    device = on_disk.project(np.stack(edge["features"]))
    cloud = {r["image_id"]: np.asarray(r["pca"]) for r in spark.read.parquet(f"{result.run_uri}/projections").collect()}
    ref = np.stack([cloud[i] for i in edge["image_id"]])
    # Tolerance: float32 storage of the artifact and of the projections, relative to the spread of the values.
    np.testing.assert_allclose(device, ref, atol=1e-4 * np.abs(ref).max(), rtol=1e-4)
    assert len(index.labels) == 6 and index.centroids.shape == (6, K) and index.counts.sum() == 60


@pytest.mark.slow
def identify_lines(edge_main, capsys, photo, base, pid, top=2):
    code = edge_main(["identify", str(photo), "--projection", str(base / "root" / "models" / f"projection-{pid}.npz"),
                      "--index", str(base / "root" / "models" / f"index-{pid}.npz"), "--top", str(top)])
    assert code == 0
    lines = [re.fullmatch(r"\s*([\d.]+)  (.+)  \(distance ([\d.]+)\)", line)
             for line in capsys.readouterr().out.strip().splitlines()]
    assert all(lines), "each line: score, label, (distance d)"
    return [m.groups() for m in lines]


def test_identify_held_out_photos_beats_chance_widely(published, tmp_path, capsys):
    """Photos never seen by the PCA (another seed): top-1 must be right for >= 80% of them. Chance is 1/6
    (17%); the synthetic classes differ in colour and shape, and nearest-centroid on the full vectors already
    separates them (test_edge), so 80% leaves room for noise but fails a broken projection or index."""
    from models.synthetic import generate

    base, result, projection, index = published
    held_out = generate(tmp_path / "new", per_class=5, n_classes=6, seed=1234)
    right = total = 0
    for photo in sorted(held_out.rglob("*.jpg")):
        lines = identify_lines(edge_main, capsys, photo, base, projection.projection_id)
        scores = [float(line[0]) for line in lines]
        assert len(lines) == 2 and all(0 <= x <= 1 for x in scores)
        nearest = next(line[1] for line in lines if line[1] != "unknown")   # ("unknown": see the next test)
        right += nearest == photo.parent.name
        total += 1
    assert total == 30 and right / total >= 0.8, f"{right}/{total}"


@pytest.fixture(scope="module")
def bigger_index(tmp_path_factory, spark, model_path):
    """An index of 6 synthetic classes x 40 photos (k=8), published from a job run."""
    from edge_client.vectorize import find_photos, vectorize
    from models.synthetic import generate

    base = tmp_path_factory.mktemp("bigger")
    photos = generate(base / "photos", per_class=40, n_classes=6, seed=77)
    (base / "in").mkdir()
    vectorize(find_photos([photos]), base / "in" / "v.parquet", model_path=model_path, threads=2,
              client_id="phone", progress=False)
    result = run(spark, JobConfig(inputs=[f"file://{base}/in"], output=f"file://{base}/pca", k=K, run_id="b",
                                  plots=False))
    projection, index, _ = publish(spark, result.run_uri, f"file://{base}/root")
    return base, projection, index


@pytest.mark.slow
def test_identify_says_unknown_for_fruits_the_index_does_not_hold(bigger_index, tmp_path, capsys):
    """The index holds 6 classes; photos (never seen) of the 4 other synthetic classes must be "unknown" and
    photos of the 6 not. What separates them is mostly the residual off the projection's subspace (a new
    fruit varies in directions the PCA never saw), with the per-label distance thresholds; both calibrated on
    the index's rows. Measured here: 20 of 20 unseen-class photos "unknown", 2 of 30 known ones."""
    from models.synthetic import class_names, generate

    base, projection, index = bigger_index
    assert index.thresholds is not None and (index.thresholds > 0).all() and 0 < index.residual_threshold < 1e12
    photos = generate(tmp_path / "all", per_class=5, n_classes=10, seed=4321)
    known = set(class_names(6))
    rate = {"known": [0, 0], "unseen": [0, 0]}
    for photo in sorted(photos.rglob("*.jpg")):
        lines = identify_lines(edge_main, capsys, photo, base, projection.projection_id)
        kind = "known" if photo.parent.name in known else "unseen"
        rate[kind][0] += lines[0][1] == "unknown"
        rate[kind][1] += 1
        if lines[0][1] == "unknown":
            assert float(lines[0][0]) == 0.0
        elif kind == "known":
            assert lines[0][1] == photo.parent.name and float(lines[0][0]) > 0
    with capsys.disabled():
        print(f"\nunknown: {rate['unseen'][0]}/{rate['unseen'][1]} photos of unseen classes, "
              f"{rate['known'][0]}/{rate['known'][1]} of known ones")
    assert rate["unseen"][1] == 20 and rate["known"][1] == 30
    assert rate["unseen"][0] / 20 >= 0.9 and rate["known"][0] / 30 <= 0.1, rate
    black = tmp_path / "black.jpg"
    Image.new("RGB", (100, 100)).save(black)     # was "Banana 0.90" before thresholds
    assert identify_lines(edge_main, capsys, black, base, projection.projection_id)[0][1] == "unknown"


@pytest.mark.slow
def test_sync_project_uploads_kd_vectors_and_the_job_keeps_them_apart(published, tmp_path, photos, spark, s3,
                                                                    s3_server, bucket, model_path, capsys):
    base, result, projection, index = published
    for path in (base / "root" / "models").iterdir():   # publish to the bucket as the cloud would
        s3.upload_file(str(path), bucket, f"team/models/{path.name}")
    common = ["--endpoint-url", s3_server.endpoint_url, "--manifest", str(tmp_path / "m.sqlite")]
    # Another model's device is refused, with the reason, before anything is uploaded.
    code = edge_main(["--quiet", "sync", str(photos), f"s3://{bucket}/team", "--project", "--model",
                      str(model_path.with_name("mobilenetv2_160_fp16.tflite")), *common])
    err = capsys.readouterr().err
    assert code == 1 and "no projection published for model" in err  # projections are looked up by fingerprint
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="team/projected/")
    # ... and a projection file of another model, handed over directly, is refused by its fingerprint.
    pid = projection.projection_id
    photo = next(photos.rglob("*.jpg"))
    code = edge_main(["identify", str(photo), "--model", str(model_path.with_name("mobilenetv2_160_fp16.tflite")),
                      "--projection", str(base / "root" / "models" / f"projection-{pid}.npz"),
                      "--index", str(base / "root" / "models" / f"index-{pid}.npz")])
    err = capsys.readouterr().err
    assert code == 1 and "was fitted on vectors of model" in err and "this device's model is" in err
    # The same model: k-d rows under projected/, in the contract's projected form.
    assert edge_main(["--quiet", "sync", str(photos), f"s3://{bucket}/team", "--project", *common]) == 0
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="team/projected/")["Contents"]]
    assert len(keys) == 1 and f"/projection={projection.projection_id}/" in keys[0]
    local = tmp_path / "p.parquet"
    s3.download_file(bucket, keys[0], str(local))
    table = read_vectors(local)
    assert table.num_rows == 60 and {len(f) for f in table.column("features").to_pylist()} == {K}
    assert set(table.column("projection_id").to_pylist()) == {projection.projection_id}
    # Raw 1280-d vectors next to them: one fit of both is refused; the projected ones alone are accepted.
    assert edge_main(["--quiet", "sync", str(photos), f"s3://{bucket}/team", *common]) == 0
    with pytest.raises(JobError, match="refusing to mix projected vectors"):
        run(spark, JobConfig(inputs=[f"s3a://{bucket}/team/projected/", f"s3a://{bucket}/team/vectors/"],
                             output=f"s3a://{bucket}/team/pca", k=2, plots=False))
    alone = run(spark, JobConfig(inputs=[f"s3a://{bucket}/team/projected/"], output=f"s3a://{bucket}/team/pca",
                                 k=2, plots=False, run_id="projected"))
    assert alone.summary["projected"] == 60 and alone.model.components_.shape == (2, K)   # (k, d): sklearn's shape


def test_a_corrupt_or_foreign_artifact_is_refused(tmp_path):
    from contract import ContractError

    p = Projection(np.zeros(1280), np.ones(1280), np.eye(1280)[:, :2], "a" * 64, "m")
    data = bytearray(p.to_bytes())
    assert Projection.from_bytes(bytes(data)).projection_id == p.projection_id
    with pytest.raises(ContractError, match="not a projection artifact"):
        Projection.from_bytes(b"not an npz")
    with pytest.raises(ContractError, match="was fitted on vectors of model aaaaaaaaaaaa"):
        p.check_model("b" * 64)
    idx = ReferenceIndex(["x", "y"], np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([3, 4]), p.projection_id)
    back = ReferenceIndex.from_bytes(idx.to_bytes())
    assert back.rank(np.array([9.0, 9.0]))[0][0] == "y" and back.labels == ["x", "y"]
    # With thresholds: near a centroid -> that label, scored by distance; far from all -> "unknown" first.
    idx.thresholds = np.array([2.0, 2.0])
    back = ReferenceIndex.from_bytes(idx.to_bytes())
    (label, score, distance), _ = back.rank(np.array([10.0, 11.0]), top=2)
    assert label == "y" and distance == 1.0 and score == 0.5
    assert back.rank(np.array([50.0, 50.0]), top=2)[0][:2] == ("unknown", 0.0)


@pytest.mark.slow
def test_a_small_run_is_published_and_reported_by_the_driver_as_spark_would(published, spark, monkeypatch, tmp_path):
    """A small run's index (centroids, counts, per-label thresholds, the residual threshold) and its report's tables
    are computed by the driver from the projections read with pyarrow (no Spark job: the local stack's refresh never
    starts Spark's JVM); the same numbers as Spark's aggregations of the same run. Tolerance: 1e-12 relative (sums in
    another order); the quantiles are equal (60 rows: Spark's percentile summary is exact below 5,000)."""
    from cloud_pca import publish as pub
    from cloud_pca import report, scan

    base, result, projection, _ = published
    driver = pub.centroids(spark, result.run_uri, K, projection.projection_id)
    proj = spark.read.parquet(f"{result.run_uri}/projections")
    shares_driver = report.device_shares(spark, scan.small_table(spark, f"{result.run_uri}/projections"))
    sample_driver = report.sample_3d(spark, scan.small_table(spark, f"{result.run_uri}/projections"), 30)
    (base / "pca" / "run=p" / "rejects").mkdir(exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"reason": ["row 12: 'a' is 3 wide", "row 7: 'bb' is 30 wide", None, "x٣ 4"]}),
                   base / "pca" / "run=p" / "rejects" / "part-extra.parquet")
    reasons_driver = report.reason_groups(spark, f"{result.run_uri}/rejects")
    monkeypatch.setattr(scan, "DRIVER_READ_BYTES", 0)           # everything through Spark
    assert scan.small_table(spark, f"{result.run_uri}/projections") is None
    spark_index = pub.centroids(spark, result.run_uri, K, projection.projection_id)
    assert driver.labels == spark_index.labels and list(driver.counts) == list(spark_index.counts)
    np.testing.assert_allclose(driver.centroids, spark_index.centroids, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(driver.thresholds, spark_index.thresholds, rtol=1e-12)
    assert driver.residual_threshold == pytest.approx(spark_index.residual_threshold, rel=1e-12)
    assert shares_driver == report.device_shares(spark, proj)
    rows, total, labels = report.sample_3d(spark, proj, 30)
    assert (total, labels, len(rows)) == sample_driver[1:] + (len(sample_driver[0]),)
    assert sorted(r["label"] for r in rows) == sorted(r["label"] for r in sample_driver[0])
    def key(r):   # (Spark orders equal counts as they come)
        return -r["rows"], r["reason"] is None, r["reason"] or ""

    assert reasons_driver == sorted(report.reason_groups(spark, f"{result.run_uri}/rejects"), key=key)
    assert reasons_driver[0] == {"reason": "row N: '…' is N wide", "rows": 2}
