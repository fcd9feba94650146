"""Server-side featurization: same vectors as the edge client, bad photos, and raw + vectors in one PCA run."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from badphotos import bad_photo_folder
from cloud_pca.featurize import SERVER_CLIENT_ID, FeaturizeError, featurize, write_featurized
from contract import VECTOR_COLUMNS, read_vectors
from contract.vectors import cosine


def by_id(rows):
    return {r["image_id"]: r for r in rows}


@pytest.mark.slow
def test_server_vectors_equal_the_edge_vectors(tmp_path, photos, vectors_file, model_path, spark):
    edge = by_id(read_vectors(vectors_file).to_pylist())
    feat = featurize(spark, str(photos), model_path=str(model_path))
    try:
        assert feat.counts == {"files": 60, "not_image": 0, "photos": 60, "ok": 60, "rejected": 0}
        server = by_id(r.asDict() for r in feat.vectors.collect())
        assert set(server) == set(edge)  # same image_id for the same photo
        worst = min(cosine(server[i]["features"], edge[i]["features"]) for i in edge)
        assert worst >= 0.99999, worst
        for i, row in server.items():
            assert (row["label"], row["source"], row["width"], row["height"]) == \
                (edge[i]["label"], edge[i]["source"], edge[i]["width"], edge[i]["height"])
            assert row["client_id"] == SERVER_CLIENT_ID and row["model_sha256"] == edge[i]["model_sha256"]
        # What it writes is the data contract: every part file passes the edge side's own validator.
        uri = write_featurized(feat, f"file://{tmp_path}/root")
        parts = sorted((tmp_path / "root").rglob("part-*.parquet"))
        assert parts and "/vectors/model=" in uri
        assert sum(read_vectors(p).num_rows for p in parts) == 60
        assert tuple(pq.read_schema(parts[0]).names) == VECTOR_COLUMNS
    finally:
        feat.unpersist()


@pytest.mark.slow
def test_bad_photos_become_rejects_and_the_run_goes_on(tmp_path, photos, model_path, spark):
    root = bad_photo_folder(tmp_path / "in", photos, local_only=False)
    feat = featurize(spark, str(root), model_path=str(model_path))
    try:
        rejects = {r["source"]: r["reason"] for r in feat.rejects.collect()}
        assert set(rejects) == {f"Mixed/{n}" for n in ("zero.jpg", "truncated.jpg", "text.jpg", "bomb.png")}
        assert "empty" in rejects["Mixed/zero.jpg"] and "not an image" in rejects["Mixed/text.jpg"]
        assert "decompression bomb" in rejects["Mixed/bomb.png"]
        c = feat.counts
        assert c["not_image"] == 1 and c["rejected"] == 4 and c["ok"] + c["rejected"] == c["photos"]
        rows = {r["source"]: r for r in feat.vectors.collect()}
        for name in ("alpha.png", "gray.jpg", "cmyk.jpg", "sixteen.png", "rotated.png"):
            assert f"Mixed/{name}" in rows, name
        # Identical bytes under two names: two rows with one image_id here; the PCA job deduplicates.
        assert rows["Mixed/good.jpg"]["image_id"] == rows["Mixed/same photo, other name.jpg"]["image_id"]
        rot, up = rows["Mixed/rotated.png"], rows["Mixed/upright.png"]
        assert (rot["width"], rot["height"]) == (up["width"], up["height"])
        assert cosine(rot["features"], up["features"]) >= 0.99999
        assert cosine(rows["Mixed/gray.png"]["features"], rows["Mixed/sixteen.png"]["features"]) >= 0.99999
    finally:
        feat.unpersist()


def test_featurize_refuses_clearly(tmp_path, model_path, spark):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no photos here")
    with pytest.raises(FeaturizeError, match=r"no photos under .*empty \(1 other file"):
        featurize(spark, str(tmp_path / "empty"), model_path=str(model_path))
    with pytest.raises(FeaturizeError, match="expected a .tflite file"):
        featurize(spark, str(tmp_path / "empty"), model_path=str(tmp_path / "model.bin"))


@pytest.mark.slow
def test_pca_fits_uploaded_vectors_and_raw_photos_together(tmp_path, photos, model_path, spark, s3, s3_server,
                                                           bucket):
    """Half the photos go up as vectors, half as raw photos; the model itself is read from the bucket (as on
    EMR); one PCA run featurizes the raw ones and fits on all of them."""
    from cloud_pca.cli import main as cloud_main
    from edge_client.cli import main as edge_main

    classes = sorted(p for p in photos.iterdir() if p.is_dir())
    edge_dir, raw_dir = tmp_path / "edge", tmp_path / "raw"
    for cls in classes:
        for j, f in enumerate(sorted(cls.glob("*.jpg"))):
            target = (edge_dir if j % 2 == 0 else raw_dir) / cls.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(f.read_bytes())
    raw_first = sorted((raw_dir / classes[0].name).glob("*.jpg"))[0]
    (edge_dir / classes[0].name / "again.jpg").write_bytes(raw_first.read_bytes())  # on both sides: 1 duplicate
    (raw_dir / "broken.jpg").write_bytes(b"")
    common = ["--endpoint-url", s3_server.endpoint_url, "--manifest", str(tmp_path / "m.sqlite")]
    assert edge_main(["--quiet", "sync", str(edge_dir), f"s3://{bucket}/team", *common]) == 0
    assert edge_main(["--quiet", "upload-raw", str(raw_dir), f"s3://{bucket}/team", *common]) == 0
    for suffix in (".tflite", ".json"):
        s3.upload_file(str(model_path.with_suffix(suffix)), bucket, f"team/models/{model_path.stem}{suffix}")

    code = cloud_main(["--quiet", "pca", "--input", f"s3://{bucket}/team/vectors/", "--images",
                       f"s3://{bucket}/team/raw/", "--model", f"s3a://{bucket}/team/models/{model_path.name}",
                       "--output", f"s3://{bucket}/team/pca", "--k", "5", "--run-id", "both"])
    assert code == 0
    summary = json.loads(s3.get_object(Bucket=bucket, Key="team/pca/run=both/summary.json")["Body"].read())
    assert summary["photos"] == {"files": 31, "not_image": 0, "photos": 31, "ok": 30, "rejected": 1}
    # 31 uploaded vector rows + 31 photos = 60 projected + 1 rejected (empty photo) + 1 duplicate.
    assert (summary["rows_in"], summary["projected"], summary["rejected"], summary["duplicates"]) == (62, 60, 1, 1)
    proj = spark.read.parquet(f"s3a://{bucket}/team/pca/run=both/projections").toPandas()
    # The duplicate keeps its earlier (edge) vectorization: 29 rows come from the server, 31 from the device.
    per_client = proj["client_id"].value_counts()
    assert per_client[SERVER_CLIENT_ID] == 29 and per_client.drop(SERVER_CLIENT_ID).sum() == 31
    assert (proj.groupby("label").size() == 10).all() and len(proj) == 60
    assert np.isfinite(np.stack(proj["pca"].to_numpy())).all()


@pytest.mark.slow
def test_incremental_featurize_reads_only_new_photos_and_the_model_equals_a_full_refit(spark, photos, model_path,
                                                                                          tmp_path, capsys):
    """The daily refresh's featurize: a second run over the same raw photos reads none, a run after 5 new photos
    reads those 5 (vectors appended), and the incremental PCA over the result equals a full refit on all of it
    (means rtol 1e-9, variance ratios atol 1e-9, components atol 1e-7, as the PCA's own incremental test)."""
    import shutil

    import numpy as np

    from cloud_pca.cli import main as cloud_main
    from cloud_pca.job import JobConfig, run
    from cloud_pca.pca import FruitsPCAModel

    raw = tmp_path / "raw-photos"
    files = sorted(photos.rglob("*.jpg"))
    for p in files[:30]:
        (raw / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, raw / p.parent.name / p.name)
    root = f"file://{tmp_path}/pca/featurized"     # where the EMR chain writes (the job may not write vectors/)

    def featurize_run(*flags) -> str:
        assert cloud_main(["featurize", "--images", str(raw), "--output", root, "--model", str(model_path),
                           *flags]) == 0
        return capsys.readouterr().out

    def pca(run_id: str, **kw):
        return run(spark, JobConfig(inputs=[f"{root}/vectors/"], output=f"file://{tmp_path}/pca/runs", k=4, run_id=run_id,
                                    plots=False, **kw))

    assert "photos read: 30\n" in featurize_run("--incremental")
    pca("a", incremental=True)
    assert "photos read: 0 (30 featurized before, not read)" in featurize_run("--incremental")
    for p in files[30:35]:
        (raw / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, raw / p.parent.name / p.name)
    assert "photos read: 5 (30 featurized before, not read)" in featurize_run("--incremental")
    inc = pca("b", incremental=True)
    assert inc.summary["incremental"]["rows_total"] == 35 and inc.summary["incremental"]["rows_added"] == 5
    full = pca("c")
    a, b = inc.model, full.model
    np.testing.assert_allclose(a.mean_, b.mean_, rtol=1e-9)
    np.testing.assert_allclose(a.explained_variance_ratio_, b.explained_variance_ratio_, atol=1e-9)
    np.testing.assert_allclose(a.components_, b.components_, atol=1e-7)
    assert "photos read: 35\n" in featurize_run("--full")
    assert spark.read.parquet(f"{root}/vectors/").count() == 35
    assert isinstance(a, FruitsPCAModel)
