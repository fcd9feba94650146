"""Reliability and security, round 3 (issue 23): keys one device may write cannot stop the job for everyone,
incremental state notices changed inputs, damaged state and published files are one `Error:` line, the device's
credentials renew themselves, keys stay within S3's limits. Each case failed before its fix."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bootstrap import policies
from bootstrap.policies import Request, allowed
from contract import layout
from models import DEFAULT_MODEL
from vectors_for_tests import SHA, contract_rows, layout_key, put_rows

ROOT = "team"
ME = "eu-west-3:00000000-0000-4000-8000-000000000001"
OTHER = "eu-west-3:00000000-0000-4000-8000-000000000002"
PID = "c" * 16
IID = "d" * 64
DAY = "2026-12-02"


def off_layout_keys(me: str = ME) -> dict[str, str]:
    """Keys a device's allowed globs used to take (IAM's ? and * match '/' and '.'), of each device area."""
    vec = f"{ROOT}/vectors/model={SHA}/day={DAY}/client={me}/part-"
    return {
        "'//' in the content name": vec + "//" + "e" * 30 + ".parquet",
        "'/../../client=OTHER/' in the content name": vec + ("/../../client=" + OTHER + "/part-")[:32] + ".parquet",
        "'/./' in the content name": vec + "/./" + "e" * 29 + ".parquet",
        "'/' in the fingerprint": f"{ROOT}/vectors/model={'a' * 31}/{'a' * 32}/day={DAY}/client={me}/part-{'e' * 32}.parquet",
        "'/' in the day": f"{ROOT}/vectors/model={SHA}/day=2026/12/02/client={me}/part-{'e' * 32}.parquet",
        "'/../' in the projection id": f"{ROOT}/projected/model={SHA}/projection=/../{'c' * 12}/day={DAY}/client={me}/"
                                       f"part-{'e' * 32}.parquet",
        "'//' in the image id": f"{ROOT}/raw/client={me}/label=Lime/{'d' * 31}//{'d' * 31}.jpg",
        "'/../' in the label": f"{ROOT}/raw/client={me}/label=a/../../x/{IID}.jpg",
    }


# ------------------------------------------------------------------------------------------ policies
def test_keys_off_the_layout_are_denied_to_devices_and_to_everyone():
    docs = policies.policy_documents("fruits-data", ROOT)
    ctx = {"cognito-identity.amazonaws.com:sub": ME}
    anyone = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}   # an admin's identity
    for what, key in off_layout_keys().items():
        assert not allowed(docs["device-identity"], docs["bucket-policy"], Request.put("fruits-data", key, **ctx)), what
        assert not allowed(docs["edge-uploader"], {}, Request.put("fruits-data", key)), what
        assert not allowed(anyone, docs["bucket-policy"], Request.put("fruits-data", key)), what
    good = [layout.vectors_object_key(ROOT, SHA, ME, ["x"]), layout.projected_object_key(ROOT, SHA, PID, ME, ["x"]),
            layout.raw_object_key(ROOT, ME, "Apple Red", IID, ".jpg"), layout.raw_object_key(ROOT, ME, None, IID, "")]
    for key in good:
        assert allowed(docs["device-identity"], docs["bucket-policy"], Request.put("fruits-data", key, **ctx)), key
    def under(key: str) -> str:     # the area folder a job lists
        return f"s3a://fruits-data/{ROOT}/{key.split('/')[1]}/"

    for key in off_layout_keys().values():
        assert layout.device_key_problem(f"s3a://fruits-data/{key}", under(key)) is not None, key
    assert all(layout.device_key_problem(f"s3a://fruits-data/{k}", under(k)) is None for k in good)


def test_keys_longer_than_s3_takes_and_labels_that_are_paths():
    with pytest.raises(layout.LayoutError, match="over S3's limit of 1024"):
        layout.raw_object_key(ROOT, ME, "x" * 2000, IID, ".jpg")
    assert layout.label_from_path(f"raw/client=p/label=%2F/{IID}.jpg") == "%2F"
    assert layout.label_from_path(f"raw/client=p/label=a%2F..%2Fb/{IID}.jpg") == "a%2F..%2Fb"
    assert layout.label_from_path(f"raw/client=p/label=Pomme%20%2F%20rouge/{IID}.jpg") == "Pomme %2F rouge"
    assert layout.label_from_path(f"raw/client=p/label=%2E%2E/{IID}.jpg") == "%2E%2E"
    assert layout.label_from_path(f"raw/client=p/label=Apple%20Red/{IID}.jpg") == "Apple Red"


def test_upload_raw_refuses_a_label_too_long_for_a_key_before_any_work(tmp_path, photos, s3_server, bucket, s3, capsys):
    from edge_client.cli import main as edge_main

    code = edge_main(["upload-raw", str(photos / "Lime"), f"s3://{bucket}/{ROOT}", "--label", "L" * 2000,
                      "--endpoint-url", s3_server.endpoint_url, "--manifest", str(tmp_path / "m.sqlite"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    # (the label rules refuse it first: at most 64 characters; contract.labels)
    assert code == 1 and len(err) == 1 and "--label: longer than 64 characters (2000)" in err[0], err
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


# ----------------------------------------------------------------------------------------- the job
def one_error(capsys) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith(("Error", "Traceback"))]
    assert len(err) == 1 and err[0].startswith("Error: "), err
    return err[0]


@pytest.mark.slow
def test_a_device_key_off_the_layout_is_a_bad_file_not_a_crash(spark, s3, s3_server, bucket, capsys):
    """S3A turns each listed key into a Hadoop path (collapsing '//', resolving '..'): before, the footer read
    of such a key raised FileNotFoundException and `pca --skip-bad-files` died with a traceback. Such a key lies in
    a device area: it is quarantined and listed, and never fails the run, with or without --skip-bad-files (issue
    32: one device's bad object stops only that device)."""
    from bootstrap.cli import main as cloud_main

    good = contract_rows(60, start=0)
    put_rows(s3, bucket, layout_key(ROOT, good, client="phone-1"), good)
    bad = contract_rows(10, start=1000)
    for key in list(off_layout_keys("phone-2").values())[:3]:
        put_rows(s3, bucket, key, bad)
    common = ["--quiet", "pca", "--input", f"s3://{bucket}/{ROOT}/vectors/", "--k", "3"]
    for run_id, extra in (("strict", []), ("skip", ["--skip-bad-files"])):
        assert cloud_main(common + ["--output", f"s3://{bucket}/{ROOT}/pca", "--run-id", run_id, *extra]) == 0
        summary = json.loads(s3.get_object(Bucket=bucket, Key=f"{ROOT}/pca/run={run_id}/summary.json")["Body"].read())
        assert summary["projected"] == 60 and len(summary["bad_files"]) == 3
        assert all("not of the layout's shape" in b["reason"] for b in summary["bad_files"])
        assert summary["contributions"]["quarantined"] == 3


@pytest.mark.slow
def test_featurize_leaves_raw_keys_off_the_layout_unread(spark, s3, s3_server, bucket, photos, model_path, capsys):
    from bootstrap.cli import main as cloud_main

    lime = sorted((photos / "Lime").glob("*.jpg"))
    for p in lime[:3]:
        key = layout.raw_object_key(ROOT, "phone-1", "Lime", __import__("hashlib").sha256(p.read_bytes()).hexdigest(), ".jpg")
        s3.put_object(Bucket=bucket, Key=key, Body=p.read_bytes())
    for key in list(off_layout_keys("phone-2").values())[5:]:
        s3.put_object(Bucket=bucket, Key=key, Body=lime[4].read_bytes())
    code = cloud_main(["--quiet", "featurize", "--images", f"s3://{bucket}/{ROOT}/raw/", "--output",
                       f"s3://{bucket}/{ROOT}/pca/featurized/run=f", "--model", str(model_path)])
    out = capsys.readouterr()
    assert code in (0, 3), out.err
    rejects = spark.read.option("recursiveFileLookup", "true").parquet(
        f"s3a://{bucket}/{ROOT}/pca/featurized/run=f/rejects/").collect()
    assert len(rejects) == 2 and all("not of the layout's shape" in r["reason"] for r in rejects)
    vectors = spark.read.parquet(f"s3a://{bucket}/{ROOT}/pca/featurized/run=f/vectors/")
    assert vectors.count() == 3


# ----------------------------------------------------------------------------------- incremental
def _inc(cloud_main, bucket, endpoint, run_id, *extra):
    """An incremental run through the CLI (the test session's Spark is already pointed at ``endpoint``)."""
    return cloud_main(["--quiet", "pca", "--input", f"s3://{bucket}/{ROOT}/vectors/", "--output",
                       f"s3://{bucket}/{ROOT}/pca", "--k", "3", "--run-id", run_id, "--incremental", *extra])


def _two_objects(s3, bucket):
    keys = []
    for lo in (0, 100):
        rows = contract_rows(100, start=lo, seed=lo)
        keys.append(layout_key(ROOT, rows))
        put_rows(s3, bucket, keys[-1], rows)
    return keys


@pytest.mark.slow
@pytest.mark.parametrize("change", ["deleted", "rewritten"])
def test_a_counted_object_gone_or_rewritten_is_refused(spark, s3, s3_server, bucket, capsys, change):
    """Before: the state kept the moments of a deleted object (4,600 rows where a full refit held 3,630), or of
    an object rewritten under the same key, without a word."""
    from bootstrap.cli import main as cloud_main

    keys = _two_objects(s3, bucket)
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "a") == 0
    if change == "deleted":
        s3.delete_object(Bucket=bucket, Key=keys[0])
    else:
        put_rows(s3, bucket, keys[0], contract_rows(100, start=5000, seed=9))
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "b") == 1
    line = one_error(capsys)
    assert keys[0] in line and "--full" in line and ("gone" if change == "deleted" else "rewritten") in line
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{ROOT}/pca/run=b/_SUCCESS.json").get("KeyCount")
    assert cloud_main(["--quiet", "pca", "--input", f"s3://{bucket}/{ROOT}/vectors/", "--output",
                       f"s3://{bucket}/{ROOT}/pca", "--k", "3", "--run-id", "d", "--full"]) == 0
    s = json.loads(s3.get_object(Bucket=bucket, Key=f"{ROOT}/pca/run=d/summary.json")["Body"].read())
    assert s["incremental"]["rows_total"] == (100 if change == "deleted" else 200)
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "e") == 0


def _state(s3, bucket) -> tuple[str, dict]:
    base = f"{ROOT}/pca/state/model={SHA}"
    return base, json.loads(s3.get_object(Bucket=bucket, Key=f"{base}/current.json")["Body"].read())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["no number", "objects is {}", "ids missing", "ids truncated", "moments missing"])
def test_damaged_state_is_one_error_naming_the_file(spark, s3, s3_server, bucket, capsys, damage):
    """Before: KeyError, TypeError (after _SUCCESS.json was written), AnalysisException, Py4JJavaError, and
    "An error occurred while calling z:...FileUtil.copy"."""
    from bootstrap.cli import main as cloud_main

    _two_objects(s3, bucket)
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "a") == 0
    base, pointer = _state(s3, bucket)
    gen = f"{base}/gen={pointer['generation']}"
    ids = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{gen}/ids/")["Contents"]
           if o["Key"].endswith(".parquet")]
    if damage == "no number":
        del pointer["number"]
        s3.put_object(Bucket=bucket, Key=f"{base}/current.json", Body=json.dumps(pointer).encode())
        named = "current.json"
    elif damage == "objects is {}":
        s3.put_object(Bucket=bucket, Key=f"{gen}/objects.json", Body=b"{}")
        named = "objects.json"
    elif damage == "ids missing":
        for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{gen}/ids/")["Contents"]:
            s3.delete_object(Bucket=bucket, Key=o["Key"])
        named = "ids"
    elif damage == "ids truncated":
        data = s3.get_object(Bucket=bucket, Key=ids[0])["Body"].read()
        s3.put_object(Bucket=bucket, Key=ids[0], Body=data[: len(data) // 2])
        named = ids[0].rsplit("/", 1)[1]
    else:
        s3.delete_object(Bucket=bucket, Key=f"{gen}/moments.npz")
        named = "moments.npz"
    rows = contract_rows(50, start=500, seed=3)
    put_rows(s3, bucket, layout_key(ROOT, rows), rows)
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "b") == 1
    line = one_error(capsys)
    assert named in line and "--full" in line, line
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{ROOT}/pca/run=b/_SUCCESS.json").get("KeyCount")


@pytest.mark.slow
@pytest.mark.parametrize("swap", ["older moments.npz", "older objects.json", "current.json rolled back"])
def test_a_swapped_or_rolled_back_state_is_one_error_and_full_rebuilds_it(spark, s3, s3_server, bucket, capsys,
                                                                           swap):
    """Two refreshes (200 rows, then 250); then an older generation's file put over the current one's, or current.json
    replaced by the one before: the next refresh is one error naming the file (before: rc 0, the model fitted on the
    older total, silently wrong). `--full` rebuilds the state from what is there, after every generation."""
    from bootstrap.cli import main as cloud_main

    _two_objects(s3, bucket)
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "a") == 0
    base, first = _state(s3, bucket)
    first_pointer = s3.get_object(Bucket=bucket, Key=f"{base}/current.json")["Body"].read()
    rows = contract_rows(50, start=500, seed=3)
    put_rows(s3, bucket, layout_key(ROOT, rows), rows)
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "b") == 0
    _, second = _state(s3, bucket)
    assert second["rows"] == 250 and second["files"][f"gen={second['generation']}/moments.npz"]["rows"] == 250
    old, new = f"{base}/gen={first['generation']}", f"{base}/gen={second['generation']}"
    if swap == "current.json rolled back":
        s3.put_object(Bucket=bucket, Key=f"{base}/current.json", Body=first_pointer)
        named = f"gen={second['generation']}/sealed.json"
    else:
        name = swap.split()[1]
        s3.put_object(Bucket=bucket, Key=f"{new}/{name}", Body=s3.get_object(Bucket=bucket, Key=f"{old}/{name}")["Body"].read())
        named = f"gen={second['generation']}/{name}"
    capsys.readouterr()
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "c") == 1
    line = one_error(capsys)
    assert named in line and "--full" in line, line
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{ROOT}/pca/run=c/_SUCCESS.json").get("KeyCount")
    assert cloud_main(["--quiet", "pca", "--input", f"s3://{bucket}/{ROOT}/vectors/", "--output",
                       f"s3://{bucket}/{ROOT}/pca", "--k", "3", "--run-id", "d", "--full"]) == 0
    _, rebuilt = _state(s3, bucket)
    assert rebuilt["rows"] == 250 and rebuilt["number"] > second["number"]
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "e") == 0


@pytest.mark.slow
@pytest.mark.parametrize("what", ["every row invalid", "only a 0-byte file"])
def test_a_first_incremental_run_with_nothing_valid_is_one_error(spark, s3, s3_server, bucket, capsys, what):
    """Before: StopIteration in incremental_stage, while the same run without --incremental said "no rows to fit"."""
    from bootstrap.cli import main as cloud_main

    if what == "every row invalid":
        rows = contract_rows(5)
        rows["features"] = [[float("nan")] * 1280] * 5
        put_rows(s3, bucket, layout_key(ROOT, rows), rows)
        extra = []
    else:
        s3.put_object(Bucket=bucket, Key=layout.vectors_object_key(ROOT, SHA, "phone", ["z"]), Body=b"")
        extra = ["--skip-bad-files"]
    assert _inc(cloud_main, bucket, s3_server.endpoint_url, "a", *extra) == 1
    assert "no rows to fit" in one_error(capsys)


@pytest.mark.slow
def test_a_run_killed_before_its_state_commit_leaves_no_marker(spark, s3, s3_server, bucket, monkeypatch):
    """Before: _SUCCESS.json was written first, naming a generation that never came into force."""
    from cloud_pca import incremental
    from cloud_pca.job import JobConfig, run

    _two_objects(s3, bucket)
    cfg = dict(inputs=[f"s3a://{bucket}/{ROOT}/vectors/"], output=f"s3a://{bucket}/{ROOT}/pca", k=3, plots=False,
               incremental=True)
    run(spark, JobConfig(run_id="a", **cfg))
    base, before = _state(s3, bucket)
    rows = contract_rows(50, start=500, seed=3)
    put_rows(s3, bucket, layout_key(ROOT, rows), rows)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(incremental, "commit", killed)
    with pytest.raises(KeyboardInterrupt):
        run(spark, JobConfig(run_id="b", **cfg))
    assert not s3.list_objects_v2(Bucket=bucket, Prefix=f"{ROOT}/pca/run=b/_SUCCESS.json").get("KeyCount")
    assert _state(s3, bucket)[1] == before, "the state in force is unchanged"
    monkeypatch.undo()
    r = run(spark, JobConfig(run_id="c", **cfg)).summary
    assert r["incremental"]["rows_total"] == 250


# ------------------------------------------------------------------------------ published files
def _published(tmp_path):
    from contract.projection import Projection, ReferenceIndex, unit_rows

    rng = np.random.RandomState(0)
    p = Projection(rng.rand(1280), np.ones(1280), np.linalg.qr(rng.randn(1280, 4))[0], SHA, "m")
    idx = ReferenceIndex(["apple", "lime", "pear"], unit_rows(rng.randn(5, 4)), np.array([0, 0, 1, 2, 2]), np.eye(4),
                         np.array([5, 5, 5]), p.projection_id, 0.3, 0.9, {"refusal": 0.05})
    return p, idx


def _index(idx, **change):
    from contract.projection import ReferenceIndex

    fields = {name: getattr(idx, name) for name in ("labels", "prototypes", "owner", "whiten", "counts",
                                                     "projection_id", "unknown_distance", "not_sure_ratio",
                                                     "calibration")}
    return ReferenceIndex(**{**fields, **change}).to_bytes()


def bad_artifacts(tmp_path) -> dict[str, tuple[bytes, bytes, str]]:
    """(projection bytes, index bytes, what the error says) of each damage."""
    from contract.projection import Projection

    p, idx = _published(tmp_path)
    good_p, good_i = p.to_bytes(), idx.to_bytes()
    p1279 = Projection(p.mean[:1279], p.scale[:1279], p.components[:1279], SHA, "m")
    nan = Projection(p.mean.copy(), p.scale.copy(), p.components.copy(), SHA, "m")
    nan.components[0, 0] = np.nan
    nan_proto = idx.prototypes.copy()
    nan_proto[1, 2] = np.nan
    return {
        "projection truncated": (good_p[: len(good_p) // 2], good_i, "not a projection artifact"),
        "projection empty": (b"", good_i, "not a projection artifact"),
        "index truncated": (good_p, good_i[:100], "not a reference index"),
        "projection of d=1279": (p1279.to_bytes(), good_i, "1279-d"),
        "NaN in the projection": (nan.to_bytes(), good_i, "NaN"),
        "index of another k": (good_p, _index(idx, prototypes=idx.prototypes[:, :3], whiten=np.eye(3)), "k=3"),
        "index with no labels": (good_p, _index(idx, labels=[], counts=np.zeros(0)), "no labels"),
        "3 labels, 2 with prototypes": (good_p, _index(idx, owner=np.array([0, 0, 1, 1, 1])), "grouped by label"),
        "NaN in the index": (good_p, _index(idx, prototypes=nan_proto), "NaN"),
        "unknown distance out of range": (good_p, _index(idx, unknown_distance=7.0), "out of range"),
        "index of another projection": (good_p, _index(idx, projection_id="0" * 16), "belongs to projection"),
    }


@pytest.mark.parametrize("damage", ["projection truncated", "projection empty", "index truncated",
                                    "projection of d=1279", "NaN in the projection", "index of another k",
                                    "index with no labels", "3 labels, 2 with prototypes", "NaN in the index",
                                    "unknown distance out of range", "index of another projection"])
def test_identify_with_a_bad_published_file_is_one_error(tmp_path, photos, capsys, damage, monkeypatch):
    """Before: zipfile.BadZipFile, EOFError, ValueError, IndexError, or an answer "apple (distance nan)"; each damage
    is one Error: line naming the problem, and the exit code 1."""
    from edge_client.cli import main as edge_main
    from featurizer import runtime

    p_bytes, i_bytes, says = bad_artifacts(tmp_path)[damage]
    (tmp_path / "p.npz").write_bytes(p_bytes)
    (tmp_path / "i.npz").write_bytes(i_bytes)
    monkeypatch.setattr(runtime.Model, "sha256", SHA, raising=False)   # the test artifacts' model
    original = runtime.Model.__init__

    def init(self, *a, **k):
        original(self, *a, **k)
        self.sha256 = SHA

    monkeypatch.setattr(runtime.Model, "__init__", init)
    photo = sorted((photos / "Lime").glob("*.jpg"))[0]
    code = edge_main(["identify", str(photo), "--projection", str(tmp_path / "p.npz"), "--index", str(tmp_path / "i.npz")])
    line = one_error(capsys)
    assert code == 1 and says in line, line


def test_identify_with_a_pointer_that_is_not_an_object_is_one_error(tmp_path, photos, s3, s3_server, bucket, capsys,
                                                                     model_path):
    from contract import load_model_card
    from edge_client.cli import main as edge_main

    sha = load_model_card(model_path).sha256
    s3.put_object(Bucket=bucket, Key=layout.latest_projection_key(ROOT, sha), Body=b'["0123456789abcdef"]')
    photo = sorted((photos / "Lime").glob("*.jpg"))[0]
    code = edge_main(["identify", str(photo), "--from", f"s3://{bucket}/{ROOT}", "--endpoint-url", s3_server.endpoint_url])
    assert code == 1 and "not a projection pointer" in one_error(capsys)


# ---------------------------------------------------------------------------------- credentials
def test_device_credentials_renew_themselves_during_an_upload(tmp_path, photos, s3_server, bucket, monkeypatch):
    """Credentials that expire 2 s after they are handed out: a sync that uploads one object every second keeps
    working, each request signed with fresh credentials. Before: one set fetched before vectorizing, never renewed."""
    import boto3

    from edge_client import identity, upload
    from edge_client.manifest import Manifest
    from edge_client.sync import sync

    cognito = boto3.client("cognito-identity", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")
    pool = cognito.create_identity_pool(IdentityPoolName="renew", AllowUnauthenticatedIdentities=True)["IdentityPoolId"]
    import botocore.client

    fetched = []
    original_call = botocore.client.BaseClient._make_api_call

    def short_lived(self, operation, params):
        out = original_call(self, operation, params)
        if operation == "GetCredentialsForIdentity":
            from datetime import datetime, timedelta, timezone

            n = len(fetched)
            out["Credentials"] = {**out["Credentials"], "AccessKeyId": f"ASIA{n:016d}",
                                  "Expiration": datetime.now(timezone.utc) + timedelta(seconds=2)}
            fetched.append(out["Credentials"]["AccessKeyId"])
        return out

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", short_lived)
    device = identity.device_identity(pool, endpoint_url=s3_server.endpoint_url, state=tmp_path / "id.json")
    client = upload.s3_client(endpoint_url=s3_server.endpoint_url, session=device.session)
    signed = []
    client.meta.events.register("before-sign.s3.PutObject",
                                lambda request, **kw: signed.append(device.session.get_credentials().access_key))
    slow_put = upload.put_if_absent

    def put_slowly(*a, **k):
        time.sleep(1.2)
        return slow_put(*a, **k)

    monkeypatch.setattr(upload, "put_if_absent", put_slowly)
    result = sync([str(photos)], client, bucket, ROOT, manifest=Manifest(tmp_path / "m.sqlite"),
                  model_path=f"models/{DEFAULT_MODEL}", client_id=device.identity_id, threads=2,
                  rows_per_object=20, progress=False)
    assert result.uploaded.objects_put == 3
    assert len(set(signed)) == 3 and len(fetched) >= 3, (signed, fetched)


def test_an_expired_token_is_reported_as_expired():
    from botocore.exceptions import ClientError

    from edge_client.upload import explain

    exc = ClientError({"Error": {"Code": "ExpiredToken", "Message": "The provided token has expired."},
                       "ResponseMetadata": {"HTTPStatusCode": 400}}, "PutObject")
    text = explain(exc, "b")
    assert "expired" in text and "access key and secret" not in text


def test_vectors_made_before_a_failed_upload_are_not_made_again(tmp_path, photos, s3_server, bucket, monkeypatch):
    """The upload fails after vectorizing (the network went): the vectors are kept as a pending file; the next
    sync uploads them without vectorizing those photos again. Before: a re-run vectorized every photo again."""
    from edge_client import sync as sync_mod
    from edge_client import upload, vectorize as vec
    from edge_client.manifest import Manifest
    from edge_client.vectorize import UserError

    client = upload.s3_client(endpoint_url=s3_server.endpoint_url)
    manifest = Manifest(tmp_path / "m.sqlite")
    real = sync_mod.upload_vectors

    def network_down(*a, **k):
        raise UserError("cannot reach S3 (EndpointConnectionError); the upload can be resumed")

    monkeypatch.setattr(sync_mod, "upload_vectors", network_down)
    with pytest.raises(UserError, match="kept in .*pending.*without vectorizing again"):
        sync_mod.sync([str(photos)], client, bucket, ROOT, manifest=manifest, model_path=f"models/{DEFAULT_MODEL}",
                      client_id="phone", threads=2, progress=False)
    assert len(list((tmp_path / "pending").rglob("*.parquet"))) == 1
    monkeypatch.setattr(sync_mod, "upload_vectors", real)
    vectorized = []
    real_vectorize = vec.vectorize

    def counting(photos_, *a, **k):
        summary = real_vectorize(photos_, *a, **k)
        vectorized.append(summary.ok)
        return summary

    monkeypatch.setattr(sync_mod, "vectorize", counting)
    result = sync_mod.sync([str(photos)], client, bucket, ROOT, manifest=manifest,
                           model_path=f"models/{DEFAULT_MODEL}", client_id="phone", threads=2, progress=False)
    assert vectorized == [0] and result.uploaded.rows_put == 60
    assert list((tmp_path / "pending").rglob("*.parquet")) == []
