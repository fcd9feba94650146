"""Shared fixtures: a local S3 server on 127.0.0.1, a Spark session pointed at it, synthetic photos (controlled
inputs) and the project's real Fruits-360 photos (what accuracy is measured on)."""
from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

from demo.s3server import TEST_CREDENTIALS, LocalS3

# Tests never use real AWS: fake credentials, no instance metadata look-ups, loopback endpoints only.
os.environ.update(TEST_CREDENTIALS)
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
os.environ.pop("AWS_PROFILE", None)
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"
REAL = ROOT / "data" / "fruits360"
# Withheld from the real photos' fit, as never sent: the first round of `./run bench identify` (seed 0, 3 withheld).
NEVER_SENT = ("Grapefruit Pink", "Peach", "Walnut")


@pytest.fixture(scope="session")
def s3_server():
    with LocalS3(mode="thread") as server:
        yield server


@pytest.fixture
def s3(s3_server):
    """A boto3 client on the local server."""
    import boto3

    return boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1")


@pytest.fixture
def bucket(s3):
    """An empty bucket of its own for each test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def mocked_aws(monkeypatch):
    """moto's AWS inside this process (no server, no network) with fake credentials in eu-west-3: a boto3
    Session. Set moto's own environment (e.g. ``MOTO_IAM_LOAD_MANAGED_POLICIES``) before asking for it."""
    import boto3
    from moto import mock_aws

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
                 "AWS_DEFAULT_REGION": "eu-west-3"}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        yield boto3.Session(region_name="eu-west-3")


@pytest.fixture(scope="session")
def cluster():
    """A Spark standalone cluster on 127.0.0.1: a master and two 1-core workers, each its own JVM (and
    their executors too), started from the pyspark wheel; stopped at the end, also on failure."""
    from cloud_pca.standalone import LocalCluster

    with LocalCluster(workers=2, cores=1) as c:
        yield c


@pytest.fixture(scope="session")
def spark(s3_server):
    from cloud_pca.spark import get_spark

    session = get_spark("fruits-tests", master="local[2]", s3_endpoint=s3_server.endpoint_url)
    yield session
    session.stop()


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """60 synthetic Fruits-360-like photos: Training/<Class>/<n>_100.jpg, 6 classes x 10."""
    from models.synthetic import generate

    return generate(tmp_path_factory.mktemp("fruits"), per_class=10, n_classes=6, seed=7)


@pytest.fixture(scope="session")
def model_path() -> Path:
    from models import DEFAULT_MODEL

    return MODELS / DEFAULT_MODEL


@pytest.fixture(scope="session")
def vectors_file(photos, model_path, tmp_path_factory) -> Path:
    """The synthetic photos vectorized once by the edge client."""
    from edge_client.vectorize import find_photos, vectorize

    out = tmp_path_factory.mktemp("vectors") / "vectors.parquet"
    vectorize(find_photos([photos]), out, model_path=model_path, threads=2, client_id="test-phone",
              progress=False)
    return out


@pytest.fixture(scope="session")
def real_vectors(model_path, tmp_path_factory) -> dict[str, Path]:
    """The project's real Fruits-360 photos (data/fruits360) vectorized once by the edge: {"Training": file, "Test":
    file}; Test holds other frames of the Training films."""
    from edge_client.vectorize import find_photos, vectorize

    out = tmp_path_factory.mktemp("real")
    for split in ("Training", "Test"):
        vectorize(find_photos([REAL / split]), out / f"{split}.parquet", model_path=model_path, threads=2,
                  client_id="operator-real", progress=False)
    return {split: out / f"{split}.parquet" for split in ("Training", "Test")}


@pytest.fixture(scope="session")
def real_published(spark, real_vectors, tmp_path_factory):
    """A pca run on the real Training photos of every fruit but NEVER_SENT, published with k=32 (as the daily chain
    publishes) under a local root: (root folder, run URI, projection, index), the last two read back from the files
    as a device reads them (float32 storage)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from cloud_pca.job import JobConfig, run
    from cloud_pca.publish import publish

    base = tmp_path_factory.mktemp("real-published")
    table = pq.read_table(real_vectors["Training"])
    (base / "in").mkdir()
    pq.write_table(table.filter(pc.invert(pc.is_in(table.column("label"), pa_strings(NEVER_SENT)))),
                   base / "in" / "v.parquet")
    result = run(spark, JobConfig(inputs=[f"file://{base}/in"], output=f"file://{base}/root/pca", variance=0.95,
                                  run_id="real", plots=False))
    projection = publish(spark, result.run_uri, f"file://{base}/root", k=32).projection
    from edge_client.project import Published

    projection, index = Published(str(base / "root")).identifier(projection.model_sha256)   # as devices read them
    return base / "root", result.run_uri, projection, index


def pa_strings(values):
    import pyarrow as pa

    return pa.array(list(values), pa.string())


# ------------------------------------------------------------------------------------------ the web app
ROOT_PREFIX = "team"
# The page's vectors against the Python edge's, the stated tolerances: an exactly decoded photo (the int8 model's
# integer kernels: bit for bit in every engine), and a photo the page flags as decoded differently (one level of 255
# off somewhere: measured 0.9937 at worst, WebKit's alpha composited one level off, and 0.998 for a 16-bit PNG; the
# int8 model moves more with its input than fp32 did, 0.9995; a wrong turn gives 0.35-0.95).
EXACT_COS, FLAGGED_COS = 0.99999, 0.99


def require_browser(engine: str) -> None:
    """Skip a test of ``engine`` where it cannot be driven, unless CI says every engine must run
    (``FRUITS_REQUIRE_BROWSER``): then it fails, naming what is missing."""
    from web.device import missing

    problem = missing(engine)
    if problem:
        if os.environ.get("FRUITS_REQUIRE_BROWSER"):
            pytest.fail(f"FRUITS_REQUIRE_BROWSER is set but {engine} cannot run: {problem}")
        pytest.skip(f"{engine}: {problem}")


@pytest.fixture(scope="session")
def web_dist():
    from web.build import build

    return build()


@pytest.fixture(scope="session")
def shared_photos(tmp_path_factory, photos) -> Path:
    """The photos both sides vectorize: the synthetic Training set and every decoding path (web/parity.py)."""
    import shutil

    from web.parity import parity_photos

    root = tmp_path_factory.mktemp("shared")
    shutil.copytree(photos, root / "Training")
    parity_photos(root)
    return root


@pytest.fixture(scope="session")
def python_vectors(shared_photos, model_path, tmp_path_factory):
    """The Python edge's vectors of the shared photos, by image id."""
    from contract import read_vectors
    from edge_client.vectorize import find_photos, vectorize

    out = tmp_path_factory.mktemp("pyvec") / "v.parquet"
    vectorize(find_photos([shared_photos]), out, model_path=model_path, threads=2, progress=False)
    return {r["image_id"]: r for r in read_vectors(out).to_pylist()}


def cloud_for(endpoint_url: str, s3, bucket: str) -> dict:
    """A Cognito identity pool on the local server at ``endpoint_url`` beside ``bucket``; the page's settings for
    them."""
    import boto3

    from web.server import page_config

    cognito = boto3.client("cognito-identity", endpoint_url=endpoint_url, region_name="us-east-1")
    pool = cognito.create_identity_pool(IdentityPoolName=f"p{uuid.uuid4().hex[:8]}",
                                        AllowUnauthenticatedIdentities=True)["IdentityPoolId"]
    return {"s3": s3, "bucket": bucket, "pool": pool,
            "config": page_config(bucket=bucket, prefix=ROOT_PREFIX, identity_pool=pool, endpoint_url=endpoint_url)}


def allow_page(cloud: dict, server) -> None:
    """The bucket's CORS rule for the served page's origin (generated by bootstrap)."""
    from bootstrap.policies import bucket_cors

    cloud["s3"].put_bucket_cors(Bucket=cloud["bucket"], CORSConfiguration=bucket_cors([server.url.rstrip("/")]))


@pytest.fixture
def cloud(s3_server, s3, bucket):
    """A bucket and a Cognito identity pool on the local server; the page's settings for them."""
    return cloud_for(s3_server.endpoint_url, s3, bucket)


@pytest.fixture
def served(web_dist, cloud):
    """The app served with the cloud settings, and the bucket's CORS rule for its origin."""
    from web.server import WebServer

    with WebServer(web_dist, cloud["config"]) as server:
        allow_page(cloud, server)
        yield server
