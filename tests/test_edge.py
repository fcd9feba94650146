"""The edge client: vectorize (with every kind of bad photo), upload, sync, and faults against local S3."""
from __future__ import annotations

import csv
import io
import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq

from contract import FEATURE_DIM, read_vectors
from contract.vectors import cosine
from edge_client.cli import main as edge_main
from featurizer.preprocess import image_id

from badphotos import bad_photo_folder


def run_cli(*args):
    return edge_main(["--quiet", *map(str, args)])


def rows_by_source(path):
    t = read_vectors(path)
    return {r["source"]: r for r in t.to_pylist()}


def test_vectorize_writes_the_contract(vectors_file, photos, model_path):
    from contract import load_model_card

    table = read_vectors(vectors_file)  # validates schema and values
    assert table.num_rows == 60
    card = load_model_card(model_path)
    assert set(table.column("model_sha256").to_pylist()) == {card.sha256}
    meta = pq.read_schema(vectors_file).metadata
    assert meta[b"fruits.model_sha256"].decode() == card.sha256
    labels = sorted(set(table.column("label").to_pylist()))
    assert labels == sorted(p.name for p in photos.iterdir())
    first = table.to_pylist()[0]
    assert first["image_id"] == image_id((photos / first["source"]).read_bytes())
    assert len(first["features"]) == FEATURE_DIM and (first["width"], first["height"]) == (100, 100)
    assert pq.ParquetFile(vectors_file).metadata.row_group(0).column(0).compression == "ZSTD"


def test_vectors_separate_the_fruit_classes(vectors_file):
    """Pretrained weights: photos of one class are closer to their class centroid than to others'."""
    t = read_vectors(vectors_file).to_pandas()
    x = np.stack(t["features"].to_numpy())
    labels = t["label"].to_numpy()
    classes = sorted(set(labels))
    centroids = np.stack([x[labels == c].mean(axis=0) for c in classes])
    d = ((x[:, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = float((np.array(classes)[d.argmin(1)] == labels).mean())
    assert accuracy >= 0.9, accuracy  # chance is 1/6


def test_vectorize_bad_photos_each_rejected_with_a_reason(tmp_path, photos, capsys):
    root = bad_photo_folder(tmp_path / "in", photos)
    out = tmp_path / "v.parquet"
    code = run_cli("vectorize", root, "--out", out, "--threads", "2")
    assert code == 3, "exit code 3: done, with rejects"
    printed = capsys.readouterr()
    rows = rows_by_source(out)
    with open(tmp_path / "v.rejects.csv", newline="") as f:
        rejects = {r["source"]: r["reason"] for r in csv.DictReader(f)}
    assert set(rejects) == {f"Mixed/{n}" for n in ("zero.jpg", "truncated.jpg", "text.jpg", "bomb.png",
                                                   "unreadable.jpg", "notes.txt")}
    assert rejects["Mixed/notes.txt"] == "skipped: not a photo (extension .txt)"   # named, not only counted
    assert "empty" in rejects["Mixed/zero.jpg"]
    assert "not an image" in rejects["Mixed/text.jpg"]
    assert "decompression bomb" in rejects["Mixed/bomb.png"]
    assert "cannot read" in rejects["Mixed/unreadable.jpg"]
    assert "5 rejected" in printed.out and "1 duplicates" in printed.out and "1 skipped" in printed.out
    # Converted, not rejected: alpha, grayscale, CMYK, 16-bit, rotated, odd names.
    for name in ("alpha.png", "gray.jpg", "cmyk.jpg", "sixteen.png", "rotated.png", "caf\\xe9-latin1.jpg"):
        assert f"Mixed/{name}" in rows, name
    assert any(s.startswith("Mixed/long-xxxx") for s in rows)
    # One of the two identical photos is kept, the other counted as a duplicate.
    assert ("Mixed/good.jpg" in rows) != ("Mixed/same photo, other name.jpg" in rows)
    # EXIF orientation honoured: the rotated file gives (nearly) the upright photo's vector.
    rot, up = rows["Mixed/rotated.png"], rows["Mixed/upright.png"]
    assert (rot["width"], rot["height"]) == (up["width"], up["height"])
    assert cosine(rot["features"], up["features"]) >= 0.99999
    # 16-bit is scaled to 8-bit: the same vector as the 8-bit gray version of the same pixels.
    assert cosine(rows["Mixed/gray.png"]["features"], rows["Mixed/sixteen.png"]["features"]) >= 0.99999


def test_a_108_megapixel_phone_photo_is_decoded_not_refused():
    """Some phones take 108 MP photos (12000 x 9000): under the 120 MP limit, so decoded (the draft reads it at
    1/8); Pillow's own 89 MP warning refused them before. Above the limit, refused from the header."""
    import io

    import pytest
    from PIL import Image

    from featurizer.preprocess import ImageRejected, decode

    def jpeg(w, h):
        buf = io.BytesIO()
        Image.new("L", (w, h), 128).save(buf, "JPEG", quality=50)
        return buf.getvalue()

    img, width, height = decode(jpeg(12000, 9000), 160)
    assert (width, height) == (12000, 9000) and img.size == (1500, 1125)
    with pytest.raises(ImageRejected, match="over the limit of 120000000"):
        decode(jpeg(12000, 10001), 160)


def test_vectorize_empty_folder_and_bad_model(tmp_path, photos, model_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli("vectorize", tmp_path / "empty", "--out", tmp_path / "x.parquet") == 1
    assert capsys.readouterr().err.startswith("Error: no photos found")
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"\0" * 64)
    assert run_cli("vectorize", photos, "--out", tmp_path / "x.parquet", "--model", fake) == 1
    assert "is not a .tflite model" in capsys.readouterr().err
    copy = tmp_path / "m.tflite"
    shutil.copy(model_path, copy)
    card = model_path.with_suffix(".json").read_text()
    copy.with_suffix(".json").write_text(card.replace(card.split('"sha256": "')[1][:64], "0" * 64))
    assert run_cli("vectorize", photos, "--out", tmp_path / "x.parquet", "--model", copy) == 1
    assert "does not match" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()


def list_keys(s3, bucket, prefix=""):
    resp = s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for o in resp.get("Contents", []))


def bucket_rows(s3, bucket):
    ids = []
    for key in list_keys(s3, bucket, "team/vectors/"):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        ids += read_vectors(io.BytesIO(body)).column("image_id").to_pylist()
    return ids


def test_upload_is_idempotent_and_content_named(tmp_path, vectors_file, s3, s3_server, bucket, capsys):
    dest = f"s3://{bucket}/team"
    common = ["--endpoint-url", s3_server.endpoint_url, "--rows-per-object", "25"]
    assert run_cli("upload", vectors_file, dest, *common, "--manifest", tmp_path / "m1.sqlite") == 0
    keys = list_keys(s3, bucket)
    assert len(keys) == 3, "60 rows in objects of 25 rows"
    assert all(k.startswith("team/vectors/model=") and "/client=test-phone/part-" in k for k in keys)
    # Again with the same manifest: nothing new.  With a fresh manifest (another machine): same keys.
    assert run_cli("upload", vectors_file, dest, *common, "--manifest", tmp_path / "m1.sqlite") == 0
    assert run_cli("upload", vectors_file, dest, *common, "--manifest", tmp_path / "m2.sqlite") == 0
    assert list_keys(s3, bucket) == keys
    ids = bucket_rows(s3, bucket)
    assert len(ids) == len(set(ids)) == 60
    out = capsys.readouterr().out
    assert "60 rows already uploaded" in out and "3 objects already there" in out


def test_missing_bucket_is_one_clear_error(tmp_path, vectors_file, s3_server, capsys):
    code = run_cli("upload", vectors_file, "s3://no-such-bucket-xyz/team", "--endpoint-url",
                   s3_server.endpoint_url, "--manifest", tmp_path / "m.sqlite")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err == ["Error: bucket 'no-such-bucket-xyz' does not exist at " + s3_server.endpoint_url]


def test_wrong_credentials_are_one_clear_error_and_nothing_is_written(tmp_path, vectors_file, capsys, monkeypatch):
    """A server that checks credentials (moto with IAM auth on): a wrong secret is refused up front."""
    import boto3

    from demo.s3server import LocalS3

    with LocalS3(mode="process", env={"INITIAL_NO_AUTH_ACTION_COUNT": "3"}) as server:
        iam = boto3.client("iam", endpoint_url=server.endpoint_url, region_name="us-east-1")
        iam.create_user(UserName="phone")
        key = iam.create_access_key(UserName="phone")["AccessKey"]
        iam.put_user_policy(UserName="phone", PolicyName="s3", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        good = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1",
                            aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        good.create_bucket(Bucket="fruits")
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
        code = run_cli("upload", vectors_file, "s3://fruits/team", "--endpoint-url", server.endpoint_url,
                       "--manifest", tmp_path / "m.sqlite", "--retries", "1")
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1
        assert err[0].startswith("Error: ") and ("credentials" in err[0] or "access denied" in err[0]), err
        assert good.list_objects_v2(Bucket="fruits").get("KeyCount", 0) == 0


def test_server_stops_mid_upload_then_same_command_finishes(tmp_path, vectors_file, capsys, monkeypatch):
    import boto3

    from demo.s3server import LocalS3
    from edge_client.manifest import Manifest

    server = LocalS3(mode="thread").start()
    s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
    bucket = "fault-test"
    s3.create_bucket(Bucket=bucket)
    args = ["upload", vectors_file, f"s3://{bucket}/team", "--endpoint-url", server.endpoint_url,
            "--rows-per-object", "10", "--manifest", tmp_path / "m.sqlite", "--retries", "2"]
    real = Manifest.record
    calls = {"n": 0}

    def record_then_crash(self, *a, **kw):
        real(self, *a, **kw)
        calls["n"] += 1
        if calls["n"] == 2:
            server.stop()  # the server goes away after two confirmed objects

    monkeypatch.setattr(Manifest, "record", record_then_crash)
    assert run_cli(*args) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert err.startswith("Error: cannot reach S3") and "run" in err and "again" in err
    server.start()  # same port, same in-memory state
    try:
        assert run_cli(*args) == 0
        assert "20 rows already uploaded" in capsys.readouterr().out
        ids = []
        for key in list_keys(s3, bucket):
            ids += read_vectors(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read())).column(
                "image_id").to_pylist()
        assert len(ids) == len(set(ids)) == 60, "every row exactly once"
        assert all(k.endswith(".parquet") for k in list_keys(s3, bucket)), "nothing else in the bucket"
    finally:
        server.stop()


def test_sync_skips_photos_already_uploaded(tmp_path, photos, s3, s3_server, bucket, capsys):
    args = ["--endpoint-url", s3_server.endpoint_url, "--manifest", tmp_path / "m.sqlite"]
    few = tmp_path / "phone"
    shutil.copytree(photos / "Orange", few / "Orange")
    assert run_cli("sync", few, f"s3://{bucket}/team", *args) == 0
    assert "10 rows in 1 new objects" in capsys.readouterr().out
    shutil.copytree(photos / "Lime", few / "Lime")
    assert run_cli("sync", few, f"s3://{bucket}/team", *args) == 0
    out = capsys.readouterr().out
    assert "10 already uploaded" in out and "10 rows in 1 new objects" in out
    ids = bucket_rows(s3, bucket)
    assert len(ids) == len(set(ids)) == 20


def test_conditional_put_never_overwrites_single_or_multipart(s3, bucket, monkeypatch):
    """Idempotence does not depend on reading the bucket: S3 refuses a second write of the same key."""
    from edge_client import upload

    assert upload.put_if_absent(s3, bucket, "k/small", b"first") is not None
    assert upload.put_if_absent(s3, bucket, "k/small", b"second") is None
    assert s3.get_object(Bucket=bucket, Key="k/small")["Body"].read() == b"first"
    monkeypatch.setattr(upload, "SINGLE_PUT_MAX", 1024 * 1024)
    monkeypatch.setattr(upload, "PART_SIZE", 5 * 1024 * 1024)  # S3's smallest part
    big = os.urandom(11 * 1024 * 1024)
    assert upload.put_if_absent(s3, bucket, "k/big", big) is not None
    assert upload.put_if_absent(s3, bucket, "k/big", b"x" * len(big)) is None
    assert s3.get_object(Bucket=bucket, Key="k/big")["Body"].read() == big
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []  # the refused one was aborted


def hostile_files(folder, photos):
    """Files that are not photos to read: a link to /dev/zero, a named pipe, a socket and a 4 GB sparse file, each
    named .jpg, beside one real photo."""
    import socket

    folder.mkdir(parents=True)
    shutil.copy(next(photos.glob("*/*.jpg")), folder / "real.jpg")
    os.symlink("/dev/zero", folder / "zero-device.jpg")
    os.mkfifo(folder / "pipe.jpg")
    with open(folder / "huge.jpg", "wb") as f:
        f.truncate(4 * 2**30)                     # sparse: 4 GB long, nothing on disk
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(folder / "socket.jpg"))
    return folder, sock


def test_files_that_are_not_photos_are_refused_unread(tmp_path, photos):
    """A link to /dev/zero grew the edge to 22 GB until the kernel killed it; a named pipe hung it; a 4 GB file took
    4.2 GB and 54 s to refuse. Each is now refused from its metadata with one line, in a bounded process."""
    import subprocess
    import sys
    import time

    folder, sock = hostile_files(tmp_path / "in", photos)
    try:
        t = time.perf_counter()
        # The CLI's own peak is its VmHWM at exit: wait4's ru_maxrss would also count the forking test process's
        # pages (Linux keeps the pre-exec high-water mark), which is the suite's size, not the edge's.
        peak_file = tmp_path / "vmhwm"
        wrapper = ("import atexit, re, runpy, sys\n"
                   "def peak():\n"
                   "    with open('/proc/self/status') as f:\n"
                   "        kb = re.search(r'VmHWM:\\s+(\\d+)', f.read()).group(1)\n"
                   f"    open({str(peak_file)!r}, 'w').write(kb)\n"
                   "atexit.register(peak)\n"
                   "sys.argv = ['fruits-edge'] + sys.argv[1:]\n"
                   "runpy.run_module('edge_client.cli', run_name='__main__')\n")
        with open(tmp_path / "stderr", "w+") as err:
            child = subprocess.Popen([sys.executable, "-c", wrapper, "--quiet", "vectorize", str(folder),
                                      "--out", str(tmp_path / "v.parquet")], stdout=subprocess.DEVNULL, stderr=err)
            try:
                child.wait(timeout=60)              # a hang fails here, not the suite
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
                raise
            seconds = time.perf_counter() - t
            err.seek(0)
            stderr = err.read()
    finally:
        sock.close()
    peak_mb = int(peak_file.read_text()) / 1024
    assert child.returncode == 3, stderr        # done, with rejects
    assert seconds < 30 and peak_mb < 500, (seconds, peak_mb)   # (start-up and the model: ~2 s, ~200 MB here)
    with open(tmp_path / "v.rejects.csv", newline="") as f:
        rejects = {r["source"]: r["reason"] for r in csv.DictReader(f)}
    assert set(rejects) == {"zero-device.jpg", "pipe.jpg", "huge.jpg", "socket.jpg"}, rejects
    assert rejects["zero-device.jpg"].startswith("a character device")
    assert rejects["pipe.jpg"].startswith("a named pipe")
    assert rejects["socket.jpg"].startswith("a socket")
    assert rejects["huge.jpg"] == ("4,294,967,296 bytes, over the limit of 67,108,864 bytes for a photo: not read")
    assert read_vectors(tmp_path / "v.parquet").num_rows == 1


def test_read_photo_refuses_what_it_cannot_bound(tmp_path):
    from featurizer.preprocess import ImageRejected, read_photo

    (tmp_path / "small.jpg").write_bytes(b"x" * 10)
    assert read_photo(tmp_path / "small.jpg", max_bytes=10) == b"x" * 10
    import pytest

    with pytest.raises(ImageRejected, match="11 bytes, over the limit of 10 bytes"):
        (tmp_path / "small.jpg").write_bytes(b"x" * 11)
        read_photo(tmp_path / "small.jpg", max_bytes=10)
    with pytest.raises(ImageRejected, match="a folder"):
        read_photo(tmp_path)
    with pytest.raises(ImageRejected, match="cannot read: No such file"):
        read_photo(tmp_path / "gone.jpg")
