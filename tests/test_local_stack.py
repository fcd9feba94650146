"""The loop on one machine (issue 33): `./run web` with no bucket runs against a local stack (moto on 127.0.0.1)
whose S3 objects and Cognito identities survive a restart, publishes a first projection by itself, and
`./run web refresh` folds what the page contributed into the next projection."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import require_browser

ROOT = Path(__file__).resolve().parent.parent


def test_objects_and_identities_survive_a_restart(tmp_path):
    """Write-through: an object (bytes, ETag, metadata, the store's time), a multipart object, a deleted one, an
    identity pool and its identities are all there (the objects deleted one by one or in a batch gone), the same, after the server is stopped and started on the folder."""
    import boto3

    from demo.s3server import TEST_CREDENTIALS, LocalS3

    creds = {k.lower(): v for k, v in TEST_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}

    def clients(url):
        session = boto3.Session(**creds, region_name="us-east-1")
        return session.client("s3", endpoint_url=url), session.client("cognito-identity", endpoint_url=url)

    state = tmp_path / "state"
    with LocalS3(mode="process", state=state) as server:
        port = server.port
        s3, cognito = clients(server.endpoint_url)
        s3.create_bucket(Bucket="kept-bucket")
        s3.put_object(Bucket="kept-bucket", Key="a/b c/é.parquet", Body=b"vectors", Metadata={"who": "phone"},
                      ContentType="application/vnd.apache.parquet")
        s3.put_object(Bucket="kept-bucket", Key="label=%5F/literal", Body=b"a key with a % in it")
        s3.put_object(Bucket="kept-bucket", Key="gone", Body=b"x")
        s3.delete_object(Bucket="kept-bucket", Key="gone")
        for k in ("batch/é 1", "batch/2"):   # a batch delete (S3A sends one after each file it writes)
            s3.put_object(Bucket="kept-bucket", Key=k, Body=b"y")
        s3.delete_objects(Bucket="kept-bucket", Delete={"Objects": [{"Key": "batch/é 1"}, {"Key": "batch/2"},
                                                                    {"Key": "never/was"}]})
        up = s3.create_multipart_upload(Bucket="kept-bucket", Key="big")["UploadId"]
        part = s3.upload_part(Bucket="kept-bucket", Key="big", UploadId=up, PartNumber=1, Body=b"p" * (5 << 20))
        s3.complete_multipart_upload(Bucket="kept-bucket", Key="big", UploadId=up,
                                     MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
        pool = cognito.create_identity_pool(IdentityPoolName="devices", AllowUnauthenticatedIdentities=True)
        ids = [cognito.get_id(IdentityPoolId=pool["IdentityPoolId"])["IdentityId"] for _ in range(2)]
        before = {k: s3.head_object(Bucket="kept-bucket", Key=k) for k in ("a/b c/é.parquet", "big")}
    with LocalS3(port, mode="process", state=state) as server:
        s3, cognito = clients(server.endpoint_url)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="kept-bucket")["Contents"])
        assert keys == ["a/b c/é.parquet", "big", "label=%5F/literal"]
        got = s3.get_object(Bucket="kept-bucket", Key="a/b c/é.parquet")
        assert got["Body"].read() == b"vectors" and got["Metadata"] == {"who": "phone"}
        assert got["ContentType"] == "application/vnd.apache.parquet"
        for k, head in before.items():
            now = s3.head_object(Bucket="kept-bucket", Key=k)
            assert (now["ETag"], now["LastModified"], now["ContentLength"]) == \
                (head["ETag"], head["LastModified"], head["ContentLength"]), k
        pools = cognito.list_identity_pools(MaxResults=10)["IdentityPools"]
        assert [p["IdentityPoolId"] for p in pools] == [pool["IdentityPoolId"]]
        listed = cognito.list_identities(IdentityPoolId=pool["IdentityPoolId"], MaxResults=10)["Identities"]
        assert sorted(i["IdentityId"] for i in listed) == sorted(ids)
        assert cognito.get_credentials_for_identity(IdentityId=ids[0])["IdentityId"] == ids[0]


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def label_of(summary: dict) -> dict:
    """{image id: the page's answer (a label, "unknown" or "not sure: A or B")}."""
    return {a["imageId"]: a["answer"]["answer"] for a in summary["answers"]}


def edge_answers(endpoint: str, photos: list[Path]) -> dict:
    """What `fruits-edge identify` answers for each photo with the projection published on the stack."""
    import boto3

    from demo.s3server import TEST_CREDENTIALS
    from edge_client.project import Published, identify
    from featurizer.runtime import Model
    from models import model_path

    s3 = boto3.Session(**{k.lower(): v for k, v in TEST_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"},
                       region_name="us-east-1").client("s3", endpoint_url=endpoint)
    model = Model(model_path())
    projection, index = Published("s3://fruits-local/fruits", client=s3, endpoint_url=endpoint).identifier(model.sha256)
    return {sha(p): identify(p, model, projection, index, top=1).answer for p in photos}


def _start_web(env, port: int, log: Path, *extra: str) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "demo.stack", "--port", str(port), *extra], cwd=ROOT, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_serving(proc: subprocess.Popen, log: Path, timeout_s: float = 600) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log.read_text()
        if "serving " in text and "contributing to " in text:
            return text
        if proc.poll() is not None:
            pytest.fail(f"./run web exited {proc.returncode}:\n{text[-3000:]}")
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail(f"./run web did not serve within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def _refreshed(log: Path) -> list[str]:
    """The projections the periodic refresh published, from its lines in the log ("[refresh] refresh RUN: ...
    published projection ID ...")."""
    import re

    return re.findall(r"^\[refresh\] refresh \S+: .*?published projection (\w+)", log.read_text(), re.M)


def _stop_web(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)      # Ctrl-C
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail("./run web did not stop on Ctrl-C within 60 s")


@pytest.mark.timeout(1500)
def test_a_prefix_is_listed_from_an_index_with_s3s_answers(tmp_path):
    """The local server lists a prefix from a sorted index of the bucket's names (moto walked every key of the
    bucket for each listing: the daily refresh grew with everything the bucket held). Its answers are S3's for the
    keys there are, after writes, overwrites, deletes one by one and in a batch, and a restart: prefixes,
    delimiters, StartAfter, pages."""
    import random

    import boto3

    from demo.s3server import TEST_CREDENTIALS, LocalS3

    creds = {k.lower(): v for k, v in TEST_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"}
    rng = random.Random(7)
    keys = set()

    def expected(prefix, delimiter=None, start_after=""):
        out = set()
        for k in keys:
            if k.startswith(prefix) and k > start_after:
                rest = k[len(prefix):]
                out.add(prefix + rest.split(delimiter)[0] + delimiter if delimiter and delimiter in rest else k)
        return sorted(out)

    def listed(s3, prefix, delimiter=None, start_after=""):
        kw = {"Bucket": "index-bucket", "Prefix": prefix, "PaginationConfig": {"PageSize": 7}}
        if delimiter:
            kw["Delimiter"] = delimiter
        if start_after:
            kw["StartAfter"] = start_after
        out = []
        for page in s3.get_paginator("list_objects_v2").paginate(**kw):
            out += [o["Key"] for o in page.get("Contents", [])] + [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return sorted(out)

    def check(s3):
        for prefix, delimiter, after in (("v/", None, ""), ("v/day=", None, "v/day=03"), ("v/", "/", ""),
                                         ("v/day=0", "/", ""), ("p", None, ""), ("v/day=05/c", None, ""),
                                         ("zz", None, ""), ("v/day=02/", "/", "v/day=02/c1")):
            assert listed(s3, prefix, delimiter, after) == expected(prefix, delimiter, after), (prefix, delimiter, after)

    state = tmp_path / "state"
    with LocalS3(mode="process", state=state) as server:
        s3 = boto3.Session(**creds, region_name="us-east-1").client("s3", endpoint_url=server.endpoint_url)
        s3.create_bucket(Bucket="index-bucket")
        for i in range(120):
            key = f"v/day={rng.randrange(8):02d}/c{rng.randrange(5)}/part-{i}" if i % 3 else f"pca/run={i}/f"
            s3.put_object(Bucket="index-bucket", Key=key, Body=b"x")
            keys.add(key)
            if i % 17 == 0:
                check(s3)
        some = sorted(keys)
        s3.put_object(Bucket="index-bucket", Key=some[3], Body=b"again")          # an overwrite: one name
        s3.delete_object(Bucket="index-bucket", Key=some[5])
        s3.delete_objects(Bucket="index-bucket", Delete={"Objects": [{"Key": k} for k in some[10:20]]})
        keys -= {some[5], *some[10:20]}
        check(s3)
    with LocalS3(mode="process", state=state) as server:
        s3 = boto3.Session(**creds, region_name="us-east-1").client("s3", endpoint_url=server.endpoint_url)
        check(s3)
        s3.put_object(Bucket="index-bucket", Key="v/day=00/a-new-one", Body=b"x")
        keys.add("v/day=00/a-new-one")
        check(s3)


def test_run_web_identifies_out_of_the_box_keeps_contributions_and_learns_a_new_fruit(tmp_path):
    """`./run web` on a fresh folder: a first projection is published by itself from the project's real photos (20
    fruits; Plum left out), and the page identifies real apples it never saw (other frames of the films). A plum,
    which the index does not know, is not named; the page sends 8 plums labelled ("I know what it is"), the operator
    accepts the label (`./run web accept Plum`: a fruit no trusted row shows otherwise takes several identities), `./run
    web refresh` runs the refresh chain, and on its next visit the page identifies plums it never sent. Ctrl-C, start
    again: the page's objects and its Cognito identity are still there."""
    require_browser("chromium")
    import boto3

    from conftest import REAL
    from demo.s3server import TEST_CREDENTIALS, free_port
    from web.device import Chromium

    env = {**os.environ, "FRUITS_LOCAL_STACK": str(tmp_path / "stack"), "PYTHONPATH": str(ROOT)}
    port = free_port()
    apples = sorted((REAL / "Test" / "Apple Braeburn").iterdir())[:5]
    known = sorted((REAL / "Test" / "Apple Braeburn").iterdir())[5:] + sorted((REAL / "Test" / "Kaki").iterdir())
    plums, teach = sorted((REAL / "Test" / "Plum").iterdir()), sorted((REAL / "Training" / "Plum").iterdir())[:8]
    proc = _start_web(env, port, tmp_path / "web1.log")
    try:
        text = _wait_serving(proc, tmp_path / "web1.log")
        assert "nothing published yet: fitting a first projection on the photos of 59 fruits" in text, text
        assert "; not Plum)" in text, text
        endpoint = json.loads((tmp_path / "stack" / "server.json").read_text())["endpoint"]
        with Chromium(tmp_path / "profile") as b:
            phone = b.open(f"http://127.0.0.1:{port}/")
            first = phone.wait_published()
            where = phone.text("#where")
            answers = label_of(phone.pick(apples + plums))
            # labels are votes: the phone earns its weight by naming fruits the system knows, rightly, then teaches
            for fruit in ("Apple Braeburn", "Kaki"):
                phone.pick([p for p in known if p.parent.name == fruit], label=fruit)
            taught = phone.pick(teach, label="Plum")
            phone.wait_uploaded()
            client = phone.evaluate("() => fruits.clientId")
            phone.screenshot(tmp_path / "before-refresh.png")
        assert where.startswith("Contributes to s3://fruits-local/fruits/ (the local stack on this machine"), where
        assert answers == edge_answers(endpoint, apples + plums), "the page answers as fruits-edge identify"
        assert sum(answers[sha(a)] == "Apple Braeburn" for a in apples) >= 4, answers   # identified out of the box
        # a fruit the index does not know: mostly not named (measured: 9 of 13 unknown, 3 Avocado ripe, 1 Nectarine)
        assert sum(answers[sha(p)] == "unknown" or answers[sha(p)].startswith("not sure") for p in plums) >= 7, answers
        assert taught["queuedRows"] == 8
        done = subprocess.run([sys.executable, "-m", "demo.stack", "accept", "Plum"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and "accepted 'Plum'" in done.stdout, done.stderr[-3000:]
        done = subprocess.run([sys.executable, "-m", "demo.stack", "refresh"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "reusing the local stack" in done.stderr and "published projection" in done.stdout, done.stdout
        with Chromium(tmp_path / "profile") as b:
            phone = b.open(f"http://127.0.0.1:{port}/")
            second = phone.wait_published()
            held = plums
            answers = label_of(phone.pick(held))
            phone.screenshot(tmp_path / "after-refresh.png")
        assert second != first, "the page uses the new projection on its next visit"
        assert answers == edge_answers(endpoint, held)
        # the same plums, whose labelled frames it never got: now mostly named Plum (measured: 9 of 13)
        assert sum(answers[sha(p)] == "Plum" for p in held) >= 7, answers
    finally:
        _stop_web(proc)
    # Stopped: the server is gone. Start again: the page's object and identity are still there.
    info = json.loads((tmp_path / "stack" / "server.json").read_text())
    assert "pid" not in info, "the stack ./run web started was stopped with it"
    # Started again, with the periodic refresh (every 3 s here): it runs, in its own process, on the same stack.
    proc = _start_web(env, port, tmp_path / "web2.log", "--refresh-every", "0.05")
    try:
        text = _wait_serving(proc, tmp_path / "web2.log")
        assert "nothing published yet" not in text and "(also every 0.05 minutes here)" in text, text
        endpoint = json.loads((tmp_path / "stack" / "server.json").read_text())["endpoint"]
        session = boto3.Session(**{k.lower(): v for k, v in TEST_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"},
                                region_name="us-east-1")
        s3 = session.client("s3", endpoint_url=endpoint)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="fruits-local", Prefix="fruits/vectors/")["Contents"]]
        assert sum(f"/client={client}/" in k for k in keys) >= 2, keys   # the plums' objects, sent before the restart
        cognito = session.client("cognito-identity", endpoint_url=endpoint)
        pool = cognito.list_identity_pools(MaxResults=10)["IdentityPools"][0]["IdentityPoolId"]
        ids = [i["IdentityId"] for i in cognito.list_identities(IdentityPoolId=pool, MaxResults=60)["Identities"]]
        assert client in ids
        with Chromium(tmp_path / "profile") as b:
            phone = b.open(f"http://127.0.0.1:{port}/")
            assert phone.wait_published() in (second, *_refreshed(tmp_path / "web2.log"))
            assert phone.evaluate("() => fruits.clientId") == client, "the same device identity after the restart"
        deadline = time.monotonic() + 300
        while not _refreshed(tmp_path / "web2.log") and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1)
        lines = [line for line in (tmp_path / "web2.log").read_text().splitlines() if line.startswith("[refresh] ")]
        assert _refreshed(tmp_path / "web2.log"), "\n".join(lines) or (tmp_path / "web2.log").read_text()[-3000:]
    finally:
        _stop_web(proc)


def real_photos(folder: Path, fruits: tuple, n: int) -> Path:
    """``folder`` with the first ``n`` real Training frames of each fruit, a folder per fruit."""
    from conftest import REAL

    for fruit in fruits:
        (folder / fruit).mkdir(parents=True)
        for p in sorted((REAL / "Training" / fruit).iterdir())[:n]:
            (folder / fruit / p.name).write_bytes(p.read_bytes())
    return folder


def _stack_with_objects(folder: Path) -> dict:
    """A stack folder holding a bucket with two objects; returns {key: bytes}."""
    import boto3

    from demo.s3server import TEST_CREDENTIALS, LocalS3

    objects = {"fruits/vectors/a.parquet": b"vectors of a", "fruits/vectors/b.parquet": b"vectors of b"}
    with LocalS3(mode="process", state=folder / "data") as server:
        s3 = boto3.Session(**{k.lower(): v for k, v in TEST_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"},
                           region_name="us-east-1").client("s3", endpoint_url=server.endpoint_url)
        s3.create_bucket(Bucket="fruits-local")
        for key, body in objects.items():
            s3.put_object(Bucket="fruits-local", Key=key, Body=body)
    return objects


def _files(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["record", "record-bytes", "bucket.json", "cognito.json"])
def test_a_damaged_stack_file_is_one_error_and_nothing_is_lost(tmp_path, damage):
    """A damaged object record, an object whose bytes lost their end, a damaged bucket.json or identity pools: the next
    start is one error naming the file and the fix, and nothing in the folder changes (before: the object vanished and
    its bytes were deleted at the next save; the bucket came back empty, and a refresh re-seeded it with rc 0)."""
    import hashlib as h

    _stack_with_objects(tmp_path)
    bucket = tmp_path / "data" / "s3" / "fruits-local"
    name = h.sha256(b"fruits/vectors/a.parquet").hexdigest()
    target = {"record": bucket / f"{name}.json", "record-bytes": bucket / f"{name}.bin",
              "bucket.json": bucket / "bucket.json", "cognito.json": tmp_path / "data" / "cognito.json"}[damage]
    target.write_bytes(target.read_bytes()[:-3] if damage == "record-bytes" else b'{"key": "fruits/vec')
    before = _files(tmp_path / "data")
    env = {**os.environ, "FRUITS_LOCAL_STACK": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for command in (["stack"], ["refresh"]):
        done = subprocess.run([sys.executable, "-m", "demo.stack", *command], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=120)
        errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
        assert done.returncode == 1 and len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
        assert str(target) in errors[0] and "move" in errors[0], errors[0]
        assert _files(tmp_path / "data") == before, "nothing in the stack's folder changed"


def test_one_stack_per_folder(tmp_path, monkeypatch):
    """Two processes on one folder share one server (the second reuses the first's); a folder whose lock another process
    holds without a server answering is one error after a wait, never a second server on the same data."""
    import fcntl

    from demo import stack as stack_mod

    _stack_with_objects(tmp_path)
    with stack_mod.LocalStack(folder=tmp_path) as first:
        with stack_mod.LocalStack(folder=tmp_path) as second:
            assert second.endpoint == first.endpoint and second.started is None
            keys = [o["Key"] for o in second.client("s3").list_objects_v2(Bucket="fruits-local")["Contents"]]
            assert keys == ["fruits/vectors/a.parquet", "fruits/vectors/b.parquet"]
    monkeypatch.setattr(stack_mod, "LOCK_WAIT_S", 1.0)
    with open(tmp_path / "stack.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(stack_mod.StackError, match="another process holds the local stack's folder"):
            stack_mod.LocalStack(folder=tmp_path).__enter__()


@pytest.mark.timeout(900)
def test_a_refresh_that_loses_the_stack_ends_with_one_error_line(tmp_path):
    """The stack's server killed while `./run web refresh` runs its chain: the refresh ends with exactly one Error
    line saying what happened and what to do (before: a traceback)."""
    from demo import stack as stack_mod

    photos = real_photos(tmp_path / "photos", ("Apple Braeburn", "Kaki", "Walnut"), 6)
    env = {**os.environ, "FRUITS_LOCAL_STACK": str(tmp_path / "stack"), "PYTHONPATH": str(ROOT)}
    with stack_mod.LocalStack(folder=tmp_path / "stack") as stack:
        stack.ensure([])
        stack.seed(photos=photos, without=())
        log = tmp_path / "refresh.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([sys.executable, "-m", "demo.stack", "refresh"], cwd=ROOT, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while "[refresh] fruits: StandardScaler + PCA" not in log.read_text() and proc.poll() is None \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        stack.started._proc.kill()          # the server dies under the refresh
        stack.started._proc.wait()
        code = proc.wait(timeout=300)
    text = log.read_text()
    errors = [line for line in text.splitlines() if line.startswith("Error: ")]
    assert code == 1 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
    assert "stopped during the refresh" in errors[0] and "./run web refresh" in errors[0], errors[0]


@pytest.mark.timeout(900)
def test_a_held_refresh_says_held_and_exits_with_its_code(tmp_path):
    """Shifted vectors from 10 anonymous identities, more than a handful of this small stack's rows (so no group is set
    aside for its influence), turn the components far from the projection in force: `./run web refresh` publishes
    nothing, its one line says HELD with who pulled, and it exits with EXIT_HELD (before: exit 0 and the old projection's
    id as if published)."""
    import io
    import uuid

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from contract.errors import EXIT_HELD
    from contract.layout import vectors_object_key
    from contract.vectors import features_matrix, write_table
    from demo import stack as stack_mod

    photos = real_photos(tmp_path / "photos", ("Apple Braeburn", "Kaki", "Walnut", "Mango", "Plum", "Raspberry"), 10)
    env = {**os.environ, "FRUITS_LOCAL_STACK": str(tmp_path / "stack"), "PYTHONPATH": str(ROOT)}
    with stack_mod.LocalStack(folder=tmp_path / "stack") as stack:
        stack.ensure([])
        stack.seed(photos=photos, without=())
        first = subprocess.run([sys.executable, "-m", "demo.stack", "refresh"], cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        s3 = stack.client("s3")
        key = next(o["Key"] for o in s3.list_objects_v2(Bucket=stack_mod.BUCKET, Prefix=f"{stack_mod.PREFIX}/vectors/")
                   ["Contents"] if o["Key"].endswith(".parquet"))
        seed = pq.read_table(io.BytesIO(s3.get_object(Bucket=stack_mod.BUCKET, Key=key)["Body"].read()))
        x = features_matrix(seed.column("features")).astype(np.float64)
        std = x.std(axis=0)
        low = np.argsort(np.where(std > 0, std, np.inf))[:100]
        sha = seed.column("model_sha256")[0].as_py()
        attackers = [f"eu-west-3:{uuid.UUID(int=0xBAD << 96 | i, version=4)}" for i in range(10)]
        for i, who in enumerate(attackers):
            row = seed.slice(i % seed.num_rows, 1)
            shifted = x[i % seed.num_rows].copy()
            shifted[low] += 5 * std[low]
            row = row.set_column(row.schema.get_field_index("features"), "features", pa.array(
                [np.clip(shifted, 0, 4.99).astype(np.float32).tolist()], row.schema.field("features").type))
            row = row.set_column(row.schema.get_field_index("client_id"), "client_id", pa.array([who]))
            row = row.set_column(row.schema.get_field_index("image_id"), "image_id",
                                 pa.array([hashlib.sha256(f"shift {i}".encode()).hexdigest()]))
            row = row.set_column(row.schema.get_field_index("label"), "label", pa.nulls(1, pa.string()))
            path = tmp_path / f"shift-{i}.parquet"
            write_table(row, path, model_sha256=sha, model_name=row.column("model_name")[0].as_py())
            s3.put_object(Bucket=stack_mod.BUCKET, Body=path.read_bytes(),
                          Key=vectors_object_key(stack_mod.PREFIX, sha, who, row.column("image_id").to_pylist()))
        before = stack.published()
        done = subprocess.run([sys.executable, "-m", "demo.stack", "refresh"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == EXIT_HELD, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])
        line = done.stdout.strip().splitlines()[-1]
        assert line.startswith("HELD: refresh") and "not published" in line and attackers[0][:20] in line, line
        assert stack.published() == before, "the projection in force stays"
