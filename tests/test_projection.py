"""Edge-side projection and identification: the device projects as the cloud does, refuses another model's
projection, uploads k-d vectors the PCA job keeps apart from raw ones, and identifies real photos (the project's
Fruits-360 subset: Test frames of fruits it knows, and fruits never sent) as the issue's goals ask."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud_pca.job import JobConfig, JobError, run
from cloud_pca.publish import publish
from contract import read_vectors
from contract.layout import latest_projection_key
from contract.projection import Projection, ReferenceIndex, pack_arrays
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
    done = publish(spark, result.run_uri, f"file://{base}/root")
    projection, index = done.projection, done.index
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
    assert len(index.labels) == 6 and index.k == K and index.counts.sum() == 60
    assert pointer["index_id"] == index.index_id and (base / "root" / "models" / f"index-{index.index_id}.npz").exists()


def answers_csv(path) -> list[dict]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_identify_real_photos_right_when_known_refused_when_never_sent(real_published, tmp_path, capsys):
    """`fruits-edge identify Test/ --from ROOT --csv` on the project's real Fruits-360 Test frames (other frames of
    the Training films), the fit having withheld NEVER_SENT. The issue's goals: of photos of known fruits >= 93% named
    right and >= 98% of named answers right; of never-sent fruits >= 60% answered "unknown" or "not sure". Measured
    here: 98.5% right, precision 99.6%, 77.5% of never-sent refused (./run bench identify, the same split)."""
    from conftest import NEVER_SENT, REAL

    root, _, projection, index = real_published
    assert not set(NEVER_SENT) & set(index.labels) and len(index.labels) == 18
    code = edge_main(["--quiet", "identify", str(REAL / "Test"), "--from", str(root), "--csv", str(tmp_path / "a.csv")])
    out = capsys.readouterr().out
    assert code == 0
    rows = answers_csv(tmp_path / "a.csv")
    assert len(rows) == 314 and all(r["answer"] for r in rows)
    known = [r for r in rows if r["folder_label"] not in NEVER_SENT]
    never = [r for r in rows if r["folder_label"] in NEVER_SENT]
    named = [r for r in known if r["answer"] == r["label"]]
    right = sum(r["answer"] == r["folder_label"] for r in named)
    refused = sum(r["answer"] == "unknown" or r["answer"].startswith("not sure: ") for r in never)
    assert right / len(known) >= 0.93 and right / len(named) >= 0.98, (right, len(named), len(known))
    assert refused / len(never) >= 0.60, (refused, len(never))
    for r in rows:   # the answer is a label, "unknown", or "not sure: A or B" with A the nearest label
        assert r["answer"] in ("unknown", r["label"], f"not sure: {r['label']} or {r['runner_up']}"), r
    # one line per photo, and the figures from the folders' labels
    assert sum(line.startswith(str(REAL / "Test")) for line in out.splitlines()) == 314
    assert re.search(r"known labels \(\d+ photos\): named right [\d.]+%.*precision of named answers [\d.]+%", out)
    assert re.search(r"never-sent labels \(\d+ photos\): answered unknown or not sure [\d.]+%", out)
    assert "known species" in out


@pytest.mark.slow
def test_identify_from_s3_a_black_photo_is_unknown(real_published, s3, bucket, s3_server, tmp_path, capsys):
    """The same published files in a bucket (`--from s3://`): the same answers as from the local folder; a black
    photo is "unknown"; a photo that cannot be read is named with its reason and the exit code says so (3)."""
    from conftest import REAL

    root, _, projection, index = real_published
    for path in (root / "models").iterdir():
        s3.upload_file(str(path), bucket, f"team/models/{path.name}")
    photos = sorted((REAL / "Test" / "Kaki").iterdir())[:3]
    for i, p in enumerate(photos):
        (tmp_path / f"{i}.jpg").write_bytes(p.read_bytes())
    Image.new("RGB", (100, 100)).save(tmp_path / "black.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"not a photo")
    args = ["--quiet", "identify", str(tmp_path), "--csv"]
    assert edge_main([*args, str(tmp_path / "s3.csv"), "--from", f"s3://{bucket}/team",
                      "--endpoint-url", s3_server.endpoint_url]) == 3
    assert edge_main([*args, str(tmp_path / "local.csv"), "--from", str(root)]) == 3
    capsys.readouterr()
    by_s3, by_local = answers_csv(tmp_path / "s3.csv"), answers_csv(tmp_path / "local.csv")
    assert by_s3 == by_local
    got = {Path(r["path"]).name: r for r in by_s3}
    assert got["black.jpg"]["answer"] == "unknown"
    assert got["broken.jpg"]["answer"] == "" and got["broken.jpg"]["not_read"]
    assert [got[f"{i}.jpg"]["answer"] for i in range(3)] == ["Kaki"] * 3


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
                      "--index", str(base / "root" / "models" / f"index-{index.index_id}.npz")])
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
    # An index of two labels in k=2 (whiten = identity): a photo at angle a answers by cosine to the prototypes.
    idx = ReferenceIndex(["x", "y"], np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), np.array([0, 0, 1]),
                         np.eye(2), np.array([3, 4]), p.projection_id, unknown_distance=0.1, not_sure_ratio=0.8,
                         calibration={"refusal": 0.05})
    back = ReferenceIndex.from_bytes(idx.to_bytes(), index_id=idx.index_id)
    assert back.labels == ["x", "y"] and back.index_id == idx.index_id

    def at(deg, scale=3.0):
        return scale * np.array([np.cos(np.radians(deg)), np.sin(np.radians(deg))])

    near_x = back.answer(at(5))               # 1 - cos 5 = 0.0038 from x, 1 - cos 85 = 0.91 from y: x
    assert near_x.answer == "x" and near_x.runner_up == "y" and near_x.score == pytest.approx(1 - (1 - np.cos(np.radians(5))) / 0.1)
    assert back.answer(at(5, scale=100)).answer == "x"        # cosine: the length does not count
    assert back.answer(at(30)).answer == "unknown"            # 0.134 from x: beyond 0.1
    assert back.answer(at(45, 1)).answer == "unknown"         # 0.29 from both
    both = ReferenceIndex(["x", "y"], np.array([[1.0, 0.0], [np.cos(0.2), np.sin(0.2)]]), np.array([0, 1]), np.eye(2),
                          np.array([3, 4]), p.projection_id, 0.1, 0.8, {})
    assert both.answer(at(np.degrees(0.098))).answer == "not sure: x or y"   # 0.0048 vs 0.0051: ratio 0.94 > 0.8
    assert both.answer(at(np.degrees(0.02))).answer == "x"                   # 0.0002 vs 0.0162
    assert back.answer(np.zeros(2)).answer == "unknown"      # no direction at all: distance 1 from everything
    with pytest.raises(ContractError, match="does not match its index id"):
        ReferenceIndex.from_bytes(idx.to_bytes(), index_id="0" * 16)
    with pytest.raises(ContractError, match="format 1"):
        ReferenceIndex.from_bytes(pack_arrays({"labels": ["x"]}, centroids=np.zeros((1, 2), np.float32)))


@pytest.mark.slow
def test_a_small_run_is_published_and_reported_by_the_driver_as_spark_would(published, spark, monkeypatch, tmp_path):
    """A small run's index and its report's tables are computed by the driver from the projections read with pyarrow
    (no Spark job: the local stack's refresh never starts Spark's JVM); the same as Spark's of the same run. Here
    every label is one film (10 consecutive frames), so the thresholds are calibrated on photos held out one by one,
    and the index says so."""
    from cloud_pca import publish as pub
    from cloud_pca import report, storage

    base, result, projection, _ = published
    driver, _ = pub.index_from_run(spark, result.run_uri, K, projection.projection_id)
    assert driver.calibration["split"] == "photo" and driver.calibration["held_out"] == 60
    proj = spark.read.parquet(f"{result.run_uri}/projections")
    shares_driver = report.device_shares(spark, storage.small_table(spark, f"{result.run_uri}/projections"))
    sample_driver = report.sample_3d(spark, storage.small_table(spark, f"{result.run_uri}/projections"), 30)
    (base / "pca" / "run=p" / "rejects").mkdir(exist_ok=True)
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"reason": ["row 12: 'a' is 3 wide", "row 7: 'bb' is 30 wide", None, "x٣ 4"]}),
                   base / "pca" / "run=p" / "rejects" / "part-extra.parquet")
    reasons_driver = report.reason_groups(spark, f"{result.run_uri}/rejects")
    monkeypatch.setattr(storage, "DRIVER_READ_BYTES", 0)           # everything through Spark
    assert storage.small_table(spark, f"{result.run_uri}/projections") is None
    same_index(driver, pub.index_from_run(spark, result.run_uri, K, projection.projection_id)[0])
    assert shares_driver == report.device_shares(spark, proj)
    rows, total, labels = report.sample_3d(spark, proj, 30)
    assert (total, labels, len(rows)) == sample_driver[1:] + (len(sample_driver[0]),)
    assert sorted(r["label"] for r in rows) == sorted(r["label"] for r in sample_driver[0])
    def key(r):   # (Spark orders equal counts as they come)
        return -r["rows"], r["reason"] is None, r["reason"] or ""

    assert reasons_driver == sorted(report.reason_groups(spark, f"{result.run_uri}/rejects"), key=key)
    assert reasons_driver[0] == {"reason": "row N: '…' is N wide", "rows": 2}


def same_index(a: ReferenceIndex, b: ReferenceIndex) -> None:
    """Two fits of one index (the driver's and Spark's), as published: the same labels, counts, prototypes and
    calibration; arrays within 1e-6 (stored as float32: a sum of the same rows in another order, or another machine's
    BLAS, may round to the neighbouring float32), thresholds within 1e-9."""
    a, b = (ReferenceIndex.from_bytes(x.to_bytes()) for x in (a, b))
    assert a.labels == b.labels and list(a.counts) == list(b.counts) and list(a.owner) == list(b.owner)
    np.testing.assert_allclose(a.prototypes, b.prototypes, atol=1e-6)
    np.testing.assert_allclose(a.whiten, b.whiten, rtol=1e-6, atol=1e-6 * np.abs(a.whiten).max())
    assert a.unknown_distance == pytest.approx(b.unknown_distance, abs=1e-9)
    assert a.not_sure_ratio == pytest.approx(b.not_sure_ratio, abs=1e-9)
    assert {k: v for k, v in a.calibration.items() if not isinstance(v, float)} == \
        {k: v for k, v in b.calibration.items() if not isinstance(v, float)}


@pytest.mark.slow
def test_the_index_of_a_large_run_is_fitted_in_spark_as_the_driver_fits_a_small_one(real_published, spark):
    """Real photos, held out by film: the index fitted in Spark (per-label samples, moments and prototypes in
    applyInPandas, held-out answers in mapInArrow) equals the driver's. The calibration holds out whole films: no
    label's held-out rows share a film with its fitted ones, and every row is held out once."""
    from cloud_pca import identifier
    from cloud_pca.publish import index_from_run

    root, run_uri, projection, index = real_published
    assert index.calibration["split"] == "film" and index.calibration["held_out"] == index.counts.sum()
    same_index(index, index_from_run(spark, run_uri, 32, projection.projection_id, driver_read_bytes=0)[0])
    rows = spark.read.parquet(f"{run_uri}/projections").select("label", "source", "image_id").collect()
    films = {}
    for r in rows:
        film = identifier.film_of(r["source"], r["image_id"])
        films.setdefault((r["label"], film), set()).add(identifier.fold_of(r["label"], film))
    assert all(len(folds) == 1 for folds in films.values())
    assert len(films) < len(rows) / 2, "frames of one film share a fold (2 or 3 photos a film here)"


def test_the_prototypes_start_from_rows_drawn_by_their_ids_not_their_positions():
    """k-means' start is drawn by each row's key (its image id): the rows in another order give the same prototypes,
    and a row that was not drawn, left out, changes no draw (a refresh with a few rows more or less keeps the start)."""
    from cloud_pca import identifier
    from contract.projection import unit_rows

    rng = np.random.default_rng(7)
    u = unit_rows(rng.normal(size=(300, 8)) + np.repeat(rng.normal(size=(6, 8)) * 3, 50, axis=0))
    ids = [f"photo-{i}" for i in range(len(u))]
    keys = identifier.row_keys(ids)
    start = identifier.start_rows(u, 16, 5, keys)
    assert len(set(start)) == 16
    order = rng.permutation(len(u))
    assert sorted(ids[order[i]] for i in identifier.start_rows(u[order], 16, 5, keys[order])) == \
        sorted(ids[i] for i in start)
    c = identifier.spherical_kmeans(u, 16, 5, keys)
    shuffled = identifier.spherical_kmeans(u[order], 16, 5, keys[order])
    assert np.allclose(np.sort(c, axis=0), np.sort(shuffled, axis=0), atol=1e-9)
    not_drawn = [i for i in range(len(u)) if i not in set(start)][:20]
    keep = np.setdiff1d(np.arange(len(u)), not_drawn)
    assert [ids[keep[i]] for i in identifier.start_rows(u[keep], 16, 5, keys[keep])] == [ids[i] for i in start]
    # and a row that was drawn, left out, changes the draws from it on only
    gone = np.setdiff1d(np.arange(len(u)), [start[3]])
    again = [ids[gone[i]] for i in identifier.start_rows(u[gone], 16, 5, keys[gone])]
    assert again[:3] == [ids[i] for i in start[:3]] and ids[start[3]] not in again
