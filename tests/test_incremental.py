"""The incremental PCA: three batches uploaded one after the other, a refresh after each; the final model
equals a full fit on all rows, a refresh reads the features of its own batch only, ids seen before are
counted once, and a failed refresh leaves the previous total in force."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cloud_pca import incremental
from cloud_pca.job import JobConfig, JobError, run
from cloud_pca.publish import PublishError, publish
from vectors_for_tests import SHA, contract_rows, layout_key, low_rank, put_rows

# One low-rank population cut into batches (rows of one population: the model is the same whatever the cut).
X = low_rank(n=900, seed=11)


def upload_batch(s3, bucket, name: str, lo: int, hi: int, objects: int = 3, repeat: tuple[int, int] | None = None,
                 day: str | None = None) -> int:
    """Rows lo..hi-1 of X as ``objects`` files under vectors/ (plus rows ``repeat`` of an earlier batch, again),
    filed under ``day`` (default today); returns the bytes uploaded."""
    size = 0
    bounds = np.linspace(lo, hi, objects + 1).astype(int)
    for i in range(objects):
        a, b = bounds[i], bounds[i + 1]
        rows = contract_rows(b - a, start=a, x=X[a:b])
        if repeat and i == 0:
            extra = contract_rows(repeat[1] - repeat[0], start=repeat[0], x=X[repeat[0]:repeat[1]])
            rows = {k: rows[k] + extra[k] for k in rows}
        key = layout_key("team", rows, day=day)
        put_rows(s3, bucket, key, rows)
        size += s3.head_object(Bucket=bucket, Key=key)["ContentLength"]
    return size


def summary(s3, bucket, run_id):
    return json.loads(s3.get_object(Bucket=bucket, Key=f"team/pca/run={run_id}/summary.json")["Body"].read())


def cfg(bucket, run_id, **kw):
    return JobConfig(inputs=[f"s3a://{bucket}/team/vectors/"], output=f"s3a://{bucket}/team/pca", k=5,
                     run_id=run_id, plots=False, **kw)


@pytest.mark.slow
@pytest.mark.parametrize("read_by", ["driver", "spark tasks"])
def test_three_refreshes_equal_a_full_fit_and_read_only_their_batch(spark, s3, bucket, read_by):
    """Each batch read by the driver (the default for a batch of one task's size) or by Spark tasks
    (``driver_batch_bytes=0``). Tolerances: means and scales 1e-9 relative, variance ratios 1e-9 (float64 sums
    in another order), components 1e-7 (the 5 components of this data are well separated: eigengaps > 1% of the
    values)."""
    mode = {"incremental": True} if read_by == "driver" else {"incremental": True, "driver_batch_bytes": 0}
    upload_batch(s3, bucket, "b1", 0, 300)
    r1 = run(spark, cfg(bucket, "i1", **mode)).summary
    upload_batch(s3, bucket, "b2", 300, 600, repeat=(350, 360))           # 10 ids twice in the batch
    r2 = run(spark, cfg(bucket, "i2", **mode)).summary
    assert (r2["duplicates"], r2["incremental"]["already_counted"], r2["reconciles"]) == (10, 0, True)
    size3 = upload_batch(s3, bucket, "b3", 600, 900, repeat=(100, 130))   # 30 ids of batch 1 again
    r3 = run(spark, cfg(bucket, "i3", **mode))
    s3_ = r3.summary
    assert s3_["passes"]["path"].startswith("files read by the driver" if read_by == "driver" else "files read in")
    assert [r["incremental"]["rows_added"] for r in (r1, r2, s3_)] == [300, 300, 300]
    i3 = s3_["incremental"]
    assert (i3["objects_counted_before"], i3["objects_read"], i3["bytes_read"]) == (6, 3, size3), \
        "the third refresh reads its own batch's objects only"
    assert (i3["already_counted"], i3["rows_total"], s3_["duplicates"]) == (30, 900, 30)
    assert s3_["projections_rows"] == 300 and i3["projections"] == "new rows only"
    full = run(spark, cfg(bucket, "full")).model
    inc = r3.model
    np.testing.assert_allclose(inc.mean_, full.mean_, rtol=1e-9)
    np.testing.assert_allclose(inc.scale_, full.scale_, rtol=1e-9)
    np.testing.assert_allclose(inc.explained_variance_ratio_, full.explained_variance_ratio_, atol=1e-9)
    np.testing.assert_allclose(inc.components_, full.components_, atol=1e-7)
    assert inc.n_samples_ == full.n_samples_ == 900
    # No new objects: the same model again, nothing read.
    again = run(spark, cfg(bucket, "i4", **mode))
    assert again.summary["incremental"]["objects_read"] == 0 and again.model.model_id_ == inc.model_id_
    # Publishing needs every row projected: refused for "new rows only", done with --reproject.
    with pytest.raises(PublishError, match="run it with --reproject"):
        publish(spark, f"s3a://{bucket}/team/pca/run=i3", f"s3a://{bucket}/team")
    upload_batch(s3, bucket, "b4", 0, 0, objects=1, repeat=(0, 5))     # only repeats: nothing new to count
    rp = run(spark, cfg(bucket, "i5", reproject=True, **mode))
    assert rp.summary["projections_rows"] == 900 and rp.summary["incremental"]["already_counted"] == 5
    done = publish(spark, rp.run_uri, f"s3a://{bucket}/team")
    projection, index = done.projection, done.index
    assert int(index.counts.sum()) == 900 and projection.k == 5
    # A day with nothing new (the schedule runs anyway): still published (before: "summary.json names no model
    # fingerprint", and the chain stopped).
    quiet = run(spark, cfg(bucket, "i6", reproject=True, **mode))
    assert quiet.summary["incremental"]["objects_read"] == 0 and quiet.summary["model_sha256"] == SHA
    assert int(publish(spark, quiet.run_uri, f"s3a://{bucket}/team").index.counts.sum()) == 900


@pytest.mark.slow
def test_a_failed_refresh_leaves_the_previous_total_in_force(spark, s3, bucket, monkeypatch):
    upload_batch(s3, bucket, "b1", 0, 300)
    first = run(spark, cfg(bucket, "a", incremental=True))
    upload_batch(s3, bucket, "b2", 300, 600)
    real = incremental.commit

    def crash_before_the_pointer(spark_, state, gen, sums, files, unique, **kw):
        monkeypatch.setattr(incremental, "write_bytes", lambda *a, **k: (_ for _ in ()).throw(OSError("killed")))
        real(spark_, state, gen, sums, files, unique, **kw)

    monkeypatch.setattr(incremental, "commit", crash_before_the_pointer)
    with pytest.raises(OSError, match="killed"):
        run(spark, cfg(bucket, "b", incremental=True))
    monkeypatch.undo()
    state = incremental.load_state(spark, f"s3a://{bucket}/team/pca", SHA)
    assert state.generation == first.summary["incremental"]["generation"] and state.sums.n == 300
    again = run(spark, cfg(bucket, "c", incremental=True))
    assert again.summary["incremental"]["rows_total"] == 600 and again.summary["incremental"]["already_counted"] == 0


@pytest.mark.slow
def test_another_model_is_not_mixed_into_the_moments(spark, s3, bucket):
    upload_batch(s3, bucket, "b1", 0, 100, objects=1)
    run(spark, cfg(bucket, "a", incremental=True))
    other = contract_rows(20, start=5000, model="b" * 64)
    put_rows(s3, bucket, layout_key("team", other), other)
    with pytest.raises(JobError, match=r"vectors of model bbbbbbbbbbbb\.\.\. while the state holds model aaaaaaaaaaaa"):
        run(spark, cfg(bucket, "b", incremental=True))
    r = run(spark, cfg(bucket, "c", incremental=True, model_sha256=SHA)).summary
    assert r["rejected"] == 20 and r["incremental"]["rows_total"] == 100


def test_the_row_path_ranks_duplicates_by_tier_and_the_stores_clock(spark):
    """The row path (--solver spark, --images) keeps the copy of a trusted device, then the one the store received
    first, never the one whose vectorized_at says earliest (issue 32: a device claimed 1970 and won)."""
    from datetime import datetime, timezone

    from cloud_pca.inputs import InputFile
    from cloud_pca.job import losers

    phone = "eu-west-3:00000000-0000-4000-8000-000000000001"
    files = [InputFile("s3a://b/team/vectors/x/client=laptop/a.parquet", 1, mtime=5000, owner="laptop"),
             InputFile(f"s3a://b/team/vectors/x/client={phone}/b.parquet", 1, mtime=100, owner=phone, anonymous=True),
             InputFile(f"s3a://b/team/vectors/x/client={phone}/c.parquet", 1, mtime=50, owner=phone, anonymous=True)]
    t1970, now = datetime(1970, 1, 1, tzinfo=timezone.utc), datetime(2026, 1, 1, tzinfo=timezone.utc)
    rows = [(1, "a", files[0].path, now), (2, "a", files[1].path, t1970),      # trusted wins over a 1970 claim
            (3, "b", files[1].path, t1970), (4, "b", files[2].path, now)]      # then the earlier upload
    df = spark.createDataFrame(rows, "_rid long, image_id string, file string, vectorized_at timestamp")
    assert sorted(r["_rid"] for r in losers(df, files).collect()) == [2, 3]


def test_ids_folders_merge_by_size_tiers():
    """Four folders of one size tier become one; folders of other tiers stay; past MAX_PARTS the smallest merge."""
    from cloud_pca.incremental import MAX_PARTS, merge_plan

    def sizes(**kb):
        return {p: {"part-0.parquet": n * 1024} for p, n in kb.items()}

    assert merge_plan(["a", "b", "c"], sizes(a=64, b=1, c=1)) == []
    assert merge_plan(["a", "b", "c", "d", "e"], sizes(a=64, b=1, c=1, d=1, e=1)) == ["b", "c", "d", "e"]
    assert merge_plan(["a", "b", "c", "d", "e"], sizes(a=4, b=4, c=4, d=4, e=1)) == ["a", "b", "c", "d"]
    many = [f"p{i}" for i in range(MAX_PARTS + 1)]
    got = merge_plan(many, {p: {"x": 4 ** (i % 3) * 1000 + i} for i, p in enumerate(many)})
    assert got and len(got) >= 4


@pytest.mark.slow
def test_a_month_of_small_refreshes_keeps_its_state_small_and_counts_each_id_once(spark, s3, bucket):
    """Ten daily refreshes: the ids folders are merged as they accumulate (never one per refresh, never all of them
    rewritten each time), an id counted nine refreshes ago is still recognised, the state objects a refresh reads
    stay few, and every refresh adds to the history (rows, variance, the angle its top components moved)."""
    for day in range(10):
        upload_batch(s3, bucket, f"d{day}", day * 40, day * 40 + 40, objects=1)
        s = run(spark, cfg(bucket, f"d{day}", incremental=True)).summary
        assert s["incremental"]["rows_added"] == 40 and s["incremental"]["state_objects_read"] <= 16, s["incremental"]
    pointer = json.loads(s3.get_object(Bucket=bucket, Key=f"team/pca/state/model={SHA}/current.json")["Body"].read())
    assert 1 < len(pointer["ids"]) <= 4 and any("ids-merged" in p for p in pointer["ids"]), pointer["ids"]
    assert set(pointer["id_sizes"]) == set(pointer["ids"])
    upload_batch(s3, bucket, "again", 400, 420, objects=1, repeat=(0, 10))       # 10 ids of day 0, in a merged folder
    s = run(spark, cfg(bucket, "again", incremental=True)).summary
    assert s["incremental"]["already_counted"] == 10 and s["incremental"]["rows_total"] == 420
    history = s["incremental"]["history"]
    assert [h["rows_added"] for h in history] == [40] * 10 + [20] and history[0]["angle_top10_deg"] is None
    assert all(0 <= h["angle_top10_deg"] <= 90 for h in history[1:]) and len(history[-1]["explained_first"]) == 5


def test_a_refresh_reads_whole_rows_only_of_the_row_groups_a_new_id_may_meet(spark, tmp_path, monkeypatch):
    """Ids files are sorted by key and read by row group: a new id whose key a counted row has (the same id sent
    again, or a device's ids that share a prefix: "000..." is key 0 for all) costs the row group holding that key,
    not the whole file (before: any hit read every column of every row of the file)."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    monkeypatch.setattr(incremental, "IDS_ROW_GROUP", 100)
    honest = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(1000)]
    chosen = ["0" * 15 + hashlib.sha256(f"x{i}".encode()).hexdigest()[15:] for i in range(50)]   # key 0
    ids = honest[:500] + chosen + honest[500:]
    n = len(ids)
    table = pa.table({"image_id": ids, "sig": pa.array(range(n), pa.int64()), "anonymous": [False] * n,
                      "mtime": pa.array([0] * n, pa.int64()), "path": ["s3a://b/v/part-x.parquet"] * n,
                      "row": pa.array(range(n), pa.int32()),
                      "key": pa.array([incremental.id_key(i) for i in ids], pa.int64())})
    folder = f"file://{tmp_path}/gen=g00001-aaaaaa/ids"
    written = incremental.write_ids(spark, folder, table)
    counted = incremental.Counted(SHA, [folder], [], [], {folder: written})
    whole_rows = []
    real_groups, real_read = pq.ParquetFile.read_row_groups, pq.ParquetFile.read

    def read_row_groups(self, groups, columns=None, **kw):
        got = real_groups(self, groups, columns=columns, **kw)
        whole_rows.append(got.num_rows)
        return got

    def read(self, columns=None, **kw):
        got = real_read(self, columns=columns, **kw)
        if columns is None:
            whole_rows.append(got.num_rows)
        return got

    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", read_row_groups)
    monkeypatch.setattr(pq.ParquetFile, "read", read)
    again = counted.rows_for(spark, {honest[700]}, [], [])            # an id counted before
    assert again.column("image_id").to_pylist() == [honest[700]] and again.column("row").to_pylist() == [750]
    assert sum(whole_rows) <= 100, whole_rows
    whole_rows.clear()
    new = "0" * 15 + "f" * 49                                           # a new id with the chosen prefix
    assert counted.rows_for(spark, {new}, [], []).num_rows == 0
    assert 50 <= sum(whole_rows) <= 200, whole_rows                    # the groups of key 0, not the 1,050 rows
    whole_rows.clear()
    assert counted.rows_for(spark, {hashlib.sha256(b"never").hexdigest()}, [], []).num_rows == 0
    assert whole_rows == []                                            # (a key no row has: nothing whole)


@pytest.mark.slow
def test_a_refresh_lists_the_days_since_its_last_listing_not_every_object(spark, s3, bucket, monkeypatch):
    """Devices file vectors under the day they send them: a daily refresh lists the days from its last listing's
    (minus LATE_DAYS) to today's (plus AHEAD_DAYS), so what it lists does not grow with everything ever uploaded
    (it listed every object before: 12 here on day 6). An object filed under a day before that window (a clock days
    behind) waits for the next --full, which lists everything; so does a counted object removed outside the window
    (devices can neither delete nor rewrite one)."""
    from contract.layout import shift_day

    monkeypatch.setattr(incremental, "ARCHIVE_MERGE", 2)      # archive files merged two at a time here
    days = [shift_day("2026-03-01", i) for i in range(7)]
    for i, day in enumerate(days[:5]):
        upload_batch(s3, bucket, f"d{i}", i * 60, i * 60 + 60, objects=2, day=day)
        inc = run(spark, cfg(bucket, f"d{i}", incremental=True, as_of=day)).summary["incremental"]
        assert inc["rows_added"] == 60, inc
    pointer = json.loads(s3.get_object(Bucket=bucket, Key=f"team/pca/state/model={SHA}/current.json")["Body"].read())
    assert pointer["recent_from"] == "2026-03-03" and any(p.endswith("-merged.json") for p in pointer["archive"]), pointer
    assert inc["days_listed"] == ["2026-03-02", "2026-03-06"] and inc["objects_listed"] == 8, inc
    upload_batch(s3, bucket, "late", 400, 430, objects=1, day="2026-02-01")       # a clock a month behind
    upload_batch(s3, bucket, "d5", 300, 360, objects=2, day=days[5])
    old = next(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"team/vectors/model={SHA}/day={days[0]}/")
               ["Contents"])
    s3.delete_object(Bucket=bucket, Key=old)                                       # counted, outside the window
    inc = run(spark, cfg(bucket, "d5", incremental=True, as_of=days[5])).summary["incremental"]
    assert (inc["days_listed"], inc["objects_listed"], inc["rows_added"], inc["rows_total"]) == \
        (["2026-03-03", "2026-03-07"], 8, 60, 360), inc
    # A counted object removed inside the window is refused, as before.
    recent = next(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"team/vectors/model={SHA}/day={days[5]}/")
                  ["Contents"])
    body = s3.get_object(Bucket=bucket, Key=recent)["Body"].read()
    s3.delete_object(Bucket=bucket, Key=recent)
    with pytest.raises(incremental.StateError, match="counted object"):
        run(spark, cfg(bucket, "gone", incremental=True, as_of=days[6]))
    s3.put_object(Bucket=bucket, Key=recent, Body=body)
    full = run(spark, cfg(bucket, "full", full=True, as_of=days[6])).summary
    assert full["incremental"]["rows_total"] == 360 - 30 + 30, full["incremental"]   # the late one in, the removed out
    # The state's objects list holds what a daily listing can meet; the older ones are archived, written once.
    pointer = json.loads(s3.get_object(Bucket=bucket, Key=f"team/pca/state/model={SHA}/current.json")["Body"].read())
    recent = json.loads(s3.get_object(Bucket=bucket, Key=f"team/pca/state/model={SHA}/gen={pointer['generation']}/"
                                                         f"objects.json")["Body"].read())
    assert pointer["objects"] == 12 and len(recent) == 4 and len(pointer["archive"]) == 1, pointer   # days 5-6 recent
    # A month without a refresh: everything is listed again (the archive read), every counted row re-projected.
    later = run(spark, cfg(bucket, "later", incremental=True, as_of="2026-05-01", reproject=True)).summary
    inc = later["incremental"]
    assert inc["days_listed"] == "all" and inc["objects_listed"] == 12 and inc["rows_added"] == 0, inc
    assert later["projections_rows"] == 360
    # One day's folder as the input (listed whole): its objects are archived ones, counted once.
    one = run(spark, JobConfig(inputs=[f"s3a://{bucket}/team/vectors/model={SHA}/day={days[1]}/"],
                               output=f"s3a://{bucket}/team/pca", k=5, run_id="one-day", plots=False, incremental=True,
                               as_of="2026-05-02")).summary["incremental"]
    assert one["objects_listed"] >= 2 and (one["objects_read"], one["rows_added"], one["rows_total"]) == (0, 0, 360), one


def test_the_python_listing_is_hadoops(spark, s3, bucket, tmp_path):
    """s3a:// and file: are listed in Python (py4j cost 3-6 ms a file: a year of daily inputs made a refresh seconds
    slower); the paths, sizes, versions (ETag, modification time) and times are those Hadoop gives, so a state
    recorded by either is checked by the other."""
    from cloud_pca.storage import list_files, list_hadoop

    upload_batch(s3, bucket, "l", 0, 30, objects=3)
    s3.put_object(Bucket=bucket, Key="team/vectors/_SUCCESS", Body=b"")
    s3.put_object(Bucket=bucket, Key="team/vectors/sub/", Body=b"")            # a folder marker
    for uri in (f"s3a://{bucket}/team/vectors/", f"s3a://{bucket}/team/vectors", f"s3://{bucket}/team/vectors/"):
        got = list_files(spark, uri)   # (s3:// is S3A here, as in local mode and on a standalone cluster)
        assert len(got) == 3 and got == list_hadoop(spark, uri), (got, list_hadoop(spark, uri))
    got = list_files(spark, f"s3a://{bucket}/team/vectors/")
    one = got[0].path
    assert list_files(spark, one) == list_hadoop(spark, one) == [got[0]]
    assert list_files(spark, f"s3a://{bucket}/nothing/") == list_hadoop(spark, f"s3a://{bucket}/nothing/") == []
    (tmp_path / "d" / "e").mkdir(parents=True)
    for name in ("a.parquet", "e/b.parquet", ".a.parquet.crc", "_SUCCESS", "e/c.txt"):
        (tmp_path / "d" / name).write_bytes(b"x" * 10)
    for uri in (f"file://{tmp_path}/d", f"file:{tmp_path}/d/", f"file://{tmp_path}/d/a.parquet"):
        assert list_files(spark, uri) == list_hadoop(spark, uri) and list_files(spark, uri), uri
    assert list_files(spark, f"file://{tmp_path}/d", None) == list_hadoop(spark, f"file://{tmp_path}/d", None)
    # Some days of a model's folder: on S3 one listing from the first day to the last (StartAfter), what Hadoop
    # lists of each day's folder.
    from cloud_pca.storage import list_days

    for day in ("2026-02-27", "2026-02-28", "2026-03-01", "2026-03-02"):
        upload_batch(s3, bucket, day, 100, 102, objects=1, day=day)
    model = f"s3a://{bucket}/team/vectors/model={SHA}/"
    want = sorted(f for d in ("2026-02-28", "2026-03-01") for f in list_hadoop(spark, f"{model}day={d}/"))
    assert len(want) == 2 and list_days(spark, model, ["2026-02-28", "2026-03-01"]) == want
    assert list_days(spark, model, ["2026-03-05", "2026-03-06"]) == []
    # Folders, existence and byte ranges (a refresh that starts no JVM reads its state and footers with them).
    from cloud_pca.inputs import _read_range
    from cloud_pca.storage import list_dirs, list_dirs_hadoop, path_exists, read_range

    for uri in (f"s3a://{bucket}/team/vectors/", f"s3a://{bucket}/team", f"s3a://{bucket}/nothing",
                f"file://{tmp_path}/d", f"file:{tmp_path}/d/e", f"file://{tmp_path}/none"):
        assert list_dirs(spark, uri) == list_dirs_hadoop(spark, uri), uri
    assert list_dirs(spark, f"s3a://{bucket}/team/vectors/") == [f"model={SHA}", "sub"]   # a marker is a folder
    assert list_dirs(spark, f"file://{tmp_path}/d") == ["e"]
    for uri, exists in ((one, True), (f"s3a://{bucket}/team/vectors", True), (f"s3a://{bucket}/team/nope", False),
                        (f"file://{tmp_path}/d/a.parquet", True), (f"file://{tmp_path}/d/e", True),
                        (f"file://{tmp_path}/none", False)):
        assert path_exists(spark, uri) is exists, uri
    size = got[0].size
    assert read_range(spark, one, size - 4, 4) == b"PAR1" == _read_range(spark, one.replace("s3a://", "s3://"),
                                                                           size - 4, 4)
    assert read_range(spark, f"file://{tmp_path}/d/a.parquet", 2, 3) == b"xxx"
    # A missing file is FileNotFoundError on every path (boto3, the local filesystem, Hadoop for a path without
    # a scheme): the state's reads tell "missing" from "damaged" by it.
    from cloud_pca.storage import read_bytes

    for uri in (f"s3a://{bucket}/team/nope.json", f"file://{tmp_path}/none.json", f"{tmp_path}/none.json"):
        with pytest.raises(FileNotFoundError):
            read_bytes(spark, uri)
    assert read_bytes(spark, str(tmp_path / "d" / "a.parquet")) == b"x" * 10   # (that last path is Hadoop's)



def test_a_run_asks_the_jvm_for_its_settings_once(spark):
    """Within a job (``settings_held``) the session's Hadoop settings are asked of the JVM once and kept (a daily
    refresh asked for the same 7 settings 46 times over py4j: 0.09 s); outside it, each call asks the JVM."""
    from cloud_pca.spark import hadoop_settings, settings_held

    conf = spark.sparkContext._jsc.hadoopConfiguration()
    key, before = "fs.s3a.endpoint", conf.get("fs.s3a.endpoint")
    try:
        with settings_held():
            held = hadoop_settings(spark, [key])
            conf.set(key, "http://127.0.0.1:9")
            assert hadoop_settings(spark, [key]) == held == {key: before}
        assert hadoop_settings(spark, [key]) == {key: "http://127.0.0.1:9"}
    finally:
        conf.set(key, before)


LAZY_CHILD = r"""
import json, sys
import boto3
from cloud_pca.cli import main
from pyspark import SparkContext

endpoint, bucket = sys.argv[1:3]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
out = {}
for run_id, inputs, extra in (("small", ["team"], []), ("tasks", ["team", "more"], ["--driver-batch-mb", "0"])):
    code = main(["--quiet", "--endpoint-url", endpoint, "pca", *[a for r in inputs for a in
                 ("--input", f"s3a://{bucket}/{r}/vectors/")], "--output", f"s3a://{bucket}/team/pca", "--k", "5",
                 "--no-plots", "--incremental", "--run-id", run_id, *extra])
    summary = json.loads(s3.get_object(Bucket=bucket, Key=f"team/pca/run={run_id}/summary.json")["Body"].read())
    out[run_id] = {"code": code, "jvm": SparkContext._gateway is not None, "jobs": summary["spark"]["jobs"],
                   "added": summary["incremental"]["rows_added"], "already": summary["incremental"]["already_counted"]}
print(json.dumps(out))
"""


@pytest.mark.slow
def test_a_small_refresh_from_the_command_line_starts_no_jvm(s3_server, s3, bucket, tmp_path):
    """A cold ``fruits-cloud pca --incremental`` of a small batch (what the schedule runs daily) reads and writes in
    Python and never starts Spark's JVM (4.6-5.2 s of a cold run here); a run that needs Spark tasks
    (``--driver-batch-mb 0``) in the same process starts it then, and its Spark jobs are counted in its summary."""
    import os
    import subprocess
    import sys

    from demo.s3server import TEST_CREDENTIALS

    upload_batch(s3, bucket, "b1", 0, 120, objects=2)
    rows = contract_rows(60, start=120, x=X[120:180])
    again = contract_rows(10, start=0, x=X[0:10])                        # 10 ids the first run counts
    rows = {k: rows[k] + again[k] for k in rows}
    put_rows(s3, bucket, layout_key("more", rows), rows)                 # read by the second run only
    env = {**os.environ, **TEST_CREDENTIALS, "PYSPARK_PYTHON": sys.executable}
    done = subprocess.run([sys.executable, "-c", LAZY_CHILD, s3_server.endpoint_url, bucket], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["small"] == {"code": 0, "jvm": False, "jobs": 0, "added": 120, "already": 0}, out
    assert out["tasks"]["code"] == 0 and out["tasks"]["jvm"] is True and out["tasks"]["jobs"] > 0, out
    assert (out["tasks"]["added"], out["tasks"]["already"]) == (60, 10), out
