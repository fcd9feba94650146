"""Security: each device gets its own short-lived credentials (a Cognito identity pool) and may only add new
objects under its own prefix; every policy comes from the layout table.

What moto cannot enforce (policy variables, the If-None-Match conditions of the bucket policy) is checked
with the project's evaluator (bootstrap.policies.allowed) on the requests the edge client really sends."""
from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow.parquet as pq
import pytest

from bootstrap import policies
from bootstrap.policies import Request, allowed
from contract import layout

ROOT = "team"


class Capture:
    """Every request a boto3 S3 client sends: operation, bucket, key, headers."""

    def __init__(self):
        self.requests: list[dict] = []

    def attach(self, client):
        client.meta.events.register("before-send.s3", self._record)
        return client

    def _record(self, request=None, event_name: str = "", **_):
        path = unquote(urlparse(request.url).path).lstrip("/")
        bucket, _, key = path.partition("/")
        self.requests.append({"op": event_name.rsplit(".", 1)[-1], "bucket": bucket, "key": key,
                              "headers": {k.lower(): v.decode() if isinstance(v, bytes) else v
                                          for k, v in request.headers.items()}})


def as_iam(req: dict, identity: str) -> Request:
    """A captured S3 request as the IAM request S3 authorizes it with."""
    ctx = {"cognito-identity.amazonaws.com:sub": identity}
    op, bucket, key = req["op"], req["bucket"], req["key"]
    if op in ("PutObject", "CompleteMultipartUpload"):
        return Request.put(bucket, key, conditional="if-none-match" in req["headers"], **ctx)
    if op in ("CreateMultipartUpload", "UploadPart"):
        return Request.put(bucket, key, creates=False, **ctx)
    if op == "AbortMultipartUpload":
        return Request.object("s3:AbortMultipartUpload", bucket, key, **ctx)
    if op == "GetObject":
        return Request.object("s3:GetObject", bucket, key, **ctx)
    if op in ("HeadBucket", "ListObjectsV2", "ListObjects"):
        return Request.list(bucket, "", **ctx)
    raise AssertionError(f"unexpected operation {op}")


@pytest.fixture
def pool(s3_server):
    import boto3

    cognito = boto3.client("cognito-identity", endpoint_url=s3_server.endpoint_url, region_name="eu-west-3")
    return cognito.create_identity_pool(IdentityPoolName="fruits_devices",
                                        AllowUnauthenticatedIdentities=True)["IdentityPoolId"]


@pytest.fixture
def device_run(tmp_path, photos, model_path, s3, s3_server, bucket, pool, monkeypatch):
    """A phone with Cognito credentials syncs vectors (one object as a multipart upload), projections and raw
    photos; every S3 request it sends is captured."""
    from contract.projection import Projection
    from edge_client import upload
    from edge_client.cli import main as edge_main

    capture = Capture()
    real = upload.s3_client
    monkeypatch.setattr(upload, "s3_client", lambda **kw: capture.attach(real(**kw)))
    monkeypatch.setattr(upload, "SINGLE_PUT_MAX", 50_000)   # the 30-row vectors object (~100 kB) goes up as multipart
    monkeypatch.setattr(upload, "PART_SIZE", 5 * 1024 * 1024)
    monkeypatch.setenv("FRUITS_STATE", str(tmp_path / "state"))
    sha = json.loads(model_path.with_suffix(".json").read_text())["sha256"]
    p = Projection(np.zeros(1280), np.ones(1280), np.eye(1280)[:, :4], sha, "m")   # published by the cloud
    s3.put_object(Bucket=bucket, Key=layout.projection_key(ROOT, p.projection_id), Body=p.to_bytes())
    s3.put_object(Bucket=bucket, Key=layout.latest_projection_key(ROOT, sha),   # (sync --project reads no index)
                  Body=json.dumps({"projection_id": p.projection_id, "index_id": "0" * 16, "catalog_id": None}).encode())
    dest = f"s3://{bucket}/{ROOT}"
    common = ["--endpoint-url", s3_server.endpoint_url, "--identity-pool", pool, "--region", "eu-west-3",
              "--manifest", str(tmp_path / "m.sqlite")]
    classes = sorted(d for d in photos.iterdir())
    phone = {}
    for name, some in (("vectors", classes[:3]), ("projected", classes[3:4]), ("raw", classes[4:5])):
        phone[name] = tmp_path / name
        phone[name].mkdir()
        for cls in some:   # a symlinked folder per class: followed, and its name is the label
            (phone[name] / cls.name).symlink_to(cls, target_is_directory=True)
    assert edge_main(["--quiet", "sync", str(phone["vectors"]), dest, *common]) == 0
    assert edge_main(["--quiet", "sync", str(phone["projected"]), dest, "--project", *common]) == 0
    assert edge_main(["--quiet", "upload-raw", str(phone["raw"]), dest, *common]) == 0
    identity = json.loads(next((tmp_path / "state").glob("identity-*.json")).read_text())["identity_id"]
    return capture, identity


def test_a_cognito_device_writes_only_new_objects_under_its_own_prefix(device_run, s3, bucket):
    """Every request the edge client sends is allowed by the device role + bucket policy (the one refusal,
    HeadBucket, is expected and not an error), every creation carries If-None-Match, and every key is under
    client=<its identity id>."""
    capture, identity = device_run
    docs = policies.policy_documents(bucket, ROOT)
    ops = [r["op"] for r in capture.requests]
    assert {"PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload"} <= set(ops), ops
    creations = [r for r in capture.requests if r["op"] in ("PutObject", "CompleteMultipartUpload")]
    assert creations and all(r["headers"].get("if-none-match") == "*" for r in creations), \
        "the edge client never sends an unconditional creation"
    for r in capture.requests:
        verdict = allowed(docs["device-identity"], docs["bucket-policy"], as_iam(r, identity))
        assert verdict == (r["op"] != "HeadBucket"), r
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{ROOT}/")["Contents"]
            if "/models/" not in o["Key"]]
    assert len(keys) == 1 + 1 + 10 and all(f"/client={identity}/" in k for k in keys), keys
    assert {layout.area_of(ROOT, k).name for k in keys} == {"vectors", "projected", "raw"}


REFUSED = {  # what a device's credentials must be refused; each: (description, request builder)
    "PutObject without If-None-Match (an overwrite) on its own key":
        lambda b, me, other: Request.put(b, layout.vectors_object_key(ROOT, "a" * 64, me, ["x"]), conditional=False),
    "CompleteMultipartUpload without If-None-Match":
        lambda b, me, other: Request.put(b, layout.raw_object_key(ROOT, me, "Lime", "e" * 64, ".jpg"), conditional=False),
    "PutObject under another device's client= folder":
        lambda b, me, other: Request.put(b, layout.vectors_object_key(ROOT, "a" * 64, other, ["x"])),
    "a junk key under vectors/":
        lambda b, me, other: Request.put(b, f"{ROOT}/vectors/junk.parquet"),
    "a key vectors/../pca/x":
        lambda b, me, other: Request.put(b, f"{ROOT}/vectors/../pca/x"),
    "AbortMultipartUpload of another device's upload":
        lambda b, me, other: Request.object("s3:AbortMultipartUpload", b,
                                            layout.vectors_object_key(ROOT, "a" * 64, other, ["x"])),
    "ListBucket of vectors/":
        lambda b, me, other: Request.list(b, f"{ROOT}/vectors/"),
    "GetObject of its own vectors":
        lambda b, me, other: Request.object("s3:GetObject", b, layout.vectors_object_key(ROOT, "a" * 64, me, ["x"])),
    "DeleteObject of its own vectors":
        lambda b, me, other: Request.object("s3:DeleteObject", b, layout.vectors_object_key(ROOT, "a" * 64, me, ["x"])),
    "PutObject under pca/":
        lambda b, me, other: Request.put(b, layout.run_prefix(ROOT, "r") + "summary.json"),
    "PutObject of a model under models/":
        lambda b, me, other: Request.put(b, layout.model_key(ROOT, "mobilenetv2_160_fp32.tflite")),
    "PutObject of the published projection pointer":
        lambda b, me, other: Request.put(b, layout.latest_projection_key(ROOT, "a" * 64)),
    "a request without TLS":
        lambda b, me, other: Request.put(b, layout.vectors_object_key(ROOT, "a" * 64, me, ["x"]),
                                         **{"aws:SecureTransport": "false"}),
}


@pytest.mark.parametrize("what", sorted(REFUSED))
def test_a_device_is_refused(what):
    docs = policies.policy_documents("fruits-data", ROOT)
    me, other = policies.EXAMPLE_DEVICE, policies.OTHER_DEVICE
    request = REFUSED[what]("fruits-data", me, other)
    request.context["cognito-identity.amazonaws.com:sub"] = me
    assert not allowed(docs["device-identity"], docs["bucket-policy"], request), what
    # Not refused for nothing: the same device's proper creation of its own key is allowed.
    proper = Request.put("fruits-data", layout.vectors_object_key(ROOT, "a" * 64, me, ["x"]),
                         **{"cognito-identity.amazonaws.com:sub": me})
    assert allowed(docs["device-identity"], docs["bucket-policy"], proper)


def test_every_key_a_writer_produces_is_writable_by_that_writer_only(device_run, tmp_path, s3, s3_server, bucket,
                                                                     spark, model_path, photos):
    """The writers (devices above; the job, featurization, publish here; what launch uploads; EMR's logs) put
    their keys in the bucket; each key belongs to an area of the table, and exactly that area's writers may
    write it (a device: only in its own folder)."""
    from bootstrap.emr import ClusterSpec, uploads
    from cloud_pca.cli import main as cloud_main

    _, identity = device_run
    for key, content in uploads(ClusterSpec(bucket=bucket, prefix=ROOT, run_id="r1")).items():
        s3.put_object(Bucket=bucket, Key=key, Body=content if isinstance(content, bytes) else Path(content).read_bytes())
    base = f"s3://{bucket}/{ROOT}"
    featurized = base + "/" + layout.featurized_prefix("", "r1").strip("/")
    assert cloud_main(["--quiet", "featurize", "--images", f"{base}/raw/", "--output", featurized,
                       "--model", f"s3a://{bucket}/{layout.model_key(ROOT, model_path.name)}"]) == 0
    # the operator's laptop (the edge-uploader's role) sends labelled rows too: anonymous rows alone name no fruit
    from edge_client.vectorize import find_photos, vectorize

    laptop = vectorize(find_photos([photos]), tmp_path / "laptop.parquet", model_path=model_path, threads=1,
                       client_id="laptop-1", progress=False)
    table = pq.read_table(tmp_path / "laptop.parquet")
    s3.put_object(Bucket=bucket, Body=(tmp_path / "laptop.parquet").read_bytes(), Key=layout.vectors_object_key(
        ROOT, table.column("model_sha256")[0].as_py(), "laptop-1", table.column("image_id").to_pylist()))
    assert laptop.ok == table.num_rows > 0
    assert cloud_main(["--quiet", "pca", "--input", f"{base}/vectors/", "--input", f"{featurized}/vectors/",
                       "--output", f"{base}/pca", "--k", "4", "--run-id", "r1"]) == 0
    # the projection in force is the fixture's made-up one (the first 4 raw columns): any fit turns far from it
    assert cloud_main(["--quiet", "publish", "--run", f"{base}/pca/run=r1", "--root", base, "--k", "2",
                       "--accept-turn"]) == 0
    s3.put_object(Bucket=bucket, Key=layout.logs_prefix(ROOT) + "j-1/steps/s-1/stderr.gz", Body=b"")
    docs = policies.policy_documents(bucket, ROOT)
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    assert len(keys) > 40
    seen = set()
    for key in keys:
        area = layout.area_of(ROOT, key)
        assert area is not None, f"{key} is in no area of the layout table"
        seen.add(area.name)
        own = f"/client={identity}/" in key
        for doc, principal, sub in (("emr-instance-profile", layout.EMR, None),
                                    ("device-identity", layout.DEVICE, identity),
                                    ("device-identity", "other device", policies.OTHER_DEVICE),
                                    ("edge-uploader", layout.DEVICE, None)):
            expected = principal in area.writers and (doc != "device-identity" or own)
            ctx = {"cognito-identity.amazonaws.com:sub": sub} if sub else {}
            assert allowed(docs[doc], docs["bucket-policy"], Request.put(bucket, key, **ctx)) == expected, \
                (key, doc, principal)
    assert seen == {a.name for a in layout.AREAS}, f"areas without a key in this test: {set(a.name for a in layout.AREAS) - seen}"


def test_device_identity_is_made_once_and_kept(pool, s3_server, tmp_path):
    from edge_client.identity import device_identity
    from edge_client.vectorize import UserError

    state = tmp_path / "identity.json"
    first = device_identity(pool, endpoint_url=s3_server.endpoint_url, state=state)
    again = device_identity(pool, endpoint_url=s3_server.endpoint_url, state=state)
    assert first.identity_id == again.identity_id and re.fullmatch(r"[a-z]{2}-[a-z]+-\d:[0-9a-f-]{36}", first.identity_id)
    creds = first.session.get_credentials()
    assert creds.access_key and creds.token, "temporary credentials carry a session token"
    layout.check_client_id(first.identity_id)   # usable as the device's client id
    with pytest.raises(UserError, match="is not a Cognito identity pool id"):
        device_identity("not-a-pool", endpoint_url=s3_server.endpoint_url, state=state)


def test_client_id_cannot_contradict_the_identity(pool, s3_server, tmp_path, photos, bucket, monkeypatch, capsys):
    from edge_client.cli import main as edge_main

    monkeypatch.setenv("FRUITS_STATE", str(tmp_path / "state"))
    code = edge_main(["--quiet", "sync", str(photos), f"s3://{bucket}/{ROOT}", "--identity-pool", pool,
                      "--endpoint-url", s3_server.endpoint_url, "--client-id", "someone-else"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("Error: --client-id someone-else conflicts with --identity-pool")
