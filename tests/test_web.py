"""The web client in a real browser (Debian's Chromium, headless, driven by Playwright): the page's steps equal
the Python edge's on the same photos, its uploads are contract objects made with its own Cognito identity, it
works offline and on a second visit, it identifies as `fruits-edge identify` does, and the PCA job fits its
vectors with the Python edge's and the server's.

Each test drives the page as a person does (file inputs, buttons, what is shown) against the local moto server
(S3 with the generated CORS rule, Cognito identity) and the app served on 127.0.0.1.
"""
from __future__ import annotations

import base64
import io
import os
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from conftest import FLAGGED_COS
from web.device import Chromium, have_browser

if not have_browser():
    if os.environ.get("FRUITS_REQUIRE_BROWSER"):
        raise RuntimeError("FRUITS_REQUIRE_BROWSER is set but there is no Chromium or Playwright: ./run setup installs them")
    pytest.skip("no Chromium (./run setup installs Debian's chromium as root)", allow_module_level=True)

from contract import read_vectors, validate_table                      # noqa: E402
from contract.layout import (content_key, index_key, latest_projection_key, projection_key, upload_day,  # noqa: E402
                             vectors_object_key)
from contract.vectors import cosine                                     # noqa: E402
from web.server import WebServer                                        # noqa: E402

ROOT = "team"
LITERT_LOG = ("INFO:", "WARNING:", "ERROR: [", "No available adapters", "Failed to create default WebGPU device")


def page_errors(phone) -> list[str]:
    """Console errors other than LiteRT's own log lines (it logs INFO/WARNING through console.error)."""
    return [e for e in phone.errors if not e.startswith(LITERT_LOG) and "status of 404" not in e]


def objects(s3, bucket, prefix=""):
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def table_of(s3, bucket, key):
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(s3.get_object(Bucket=bucket, Key=key)["Body"].read()))


def test_without_image_decoder_a_drafted_jpeg_is_exact_with_libjpeg_in_wasm_and_close_without(web_dist, shared_photos,
                                                                                             model_path):
    """Browsers without WebCodecs' ImageDecoder (Safari, and any page not in a secure context) decode a JPEG at the
    draft's DCT scale with libjpeg-turbo in Wasm (web/src/jpeg.js): Pillow's own decode, the same model input bit for
    bit. Without it too (the Wasm could not be had), the page decodes fully and averages blocks, and says so
    (approximate): the vector then moves by at most 0.01 in cosine (measured here in Chromium with both turned off:
    0.996 with the int8 model, which is more sensitive to the input than fp32 was: 0.9995)."""
    from featurizer.preprocess import preprocess
    from featurizer.runtime import Model

    model = Model(model_path)
    drafted = [shared_photos / "Real" / n for n in ("phone-12mp.jpg", "draft-4.jpg", "draft-2.jpg", "orient-6.jpg")]
    with WebServer(web_dist, {}) as server, Chromium() as browser:
        phone = browser.open(server.url)
        for path in drafted:
            data = path.read_bytes()
            x = preprocess(data, 160)[0]
            for options in ({"noImageDecoder": True}, {"noImageDecoder": True, "jpeg": None}):
                got = phone.page.evaluate("""async ([b64, options]) => {
                    const bin = atob(b64); const bytes = new Uint8Array(bin.length);
                    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
                    const r = await fruits.debug.preprocess(bytes.buffer, options);
                    return {input: Array.from(r.input), approximate: r.approximate};
                }""", [base64.b64encode(data).decode(), options])
                page_x = np.asarray(got["input"], np.float32).reshape(160, 160, 3)
                sim = cosine(model.features(page_x), model.features(x))
                if "jpeg" not in options:       # libjpeg-turbo in Wasm: Pillow's decode
                    assert got["approximate"] is False and np.array_equal(page_x, x), path.name
                elif path.name == "orient-6.jpg":    # 512x600: no draft, so no difference
                    assert got["approximate"] is False and sim == pytest.approx(1.0, abs=1e-7), path.name
                else:
                    assert "averaged in blocks" in got["approximate"] and 0.99 <= sim < 1.0, (path.name, sim)


def test_page_vectors_equal_the_python_edge(web_dist, shared_photos, python_vectors, tmp_path):
    """The folder picked in the page -> the Parquet file it saves (the Save button's download): a contract file
    (validate_table), the same rows as `fruits-edge vectorize` (ids, labels, sources, sizes) and the same vectors:
    bit-identical, but for the photo the page flags (gray16: Chromium keeps the high byte), cosine >= FLAGGED_COS."""
    with WebServer(web_dist, {}) as server, Chromium() as browser:
        phone = browser.open(server.url)
        summary = phone.pick(shared_photos, folder=True)
        saved = phone.save(tmp_path / "web.parquet")
        phone.screenshot(tmp_path / "page-after-a-folder.png")
    table = validate_table(read_vectors(saved), origin=str(saved))
    assert summary["rows"] == table.num_rows == len(python_vectors) and not summary["rejects"]
    import pyarrow.parquet as pq

    meta = pq.read_schema(saved).metadata
    rows = table.to_pylist()
    assert meta[b"fruits.model_sha256"].decode() == rows[0]["model_sha256"] == next(iter(python_vectors.values()))["model_sha256"]
    flagged = {a["source"] for a in summary["answers"] if a["approximate"]}
    assert flagged == {"Stress/gray16.png"}, flagged
    cosines = []
    for r in rows:
        p = python_vectors[r["image_id"]]
        assert (r["label"], r["source"], r["width"], r["height"]) == (p["label"], p["source"], p["width"], p["height"])
        a, b = np.asarray(r["features"], np.float32), np.asarray(p["features"], np.float32)
        if r["source"] not in flagged:
            np.testing.assert_array_equal(a, b, err_msg=r["source"])
        cosines.append(cosine(a, b))
    assert min(cosines) >= FLAGGED_COS, min(cosines)


def test_keys_and_sha256_equal_pythons(web_dist):
    """The page builds object keys and content names from contract.json as contract/layout.py does; its pure-JS
    sha256 (pages on plain http have no crypto.subtle) equals WebCrypto's."""
    ids = [f"{i:064x}" for i in (3, 1, 2)]
    sha, pid, client = "ab" * 32, "0123456789abcdef", "us-east-1:00000000-0000-4000-8000-000000000001"
    with WebServer(web_dist, {}) as server, Chromium() as browser:
        phone = browser.open(server.url)
        keys = phone.page.evaluate("([r, s, c, i, p, d]) => fruits.debug.keys(r, s, c, i, p, d)",
                                   [ROOT, sha, client, ids, pid, "2027-02-28"])
        today = phone.page.evaluate("([r, s, c, i, p]) => fruits.debug.keys(r, s, c, i, p)", [ROOT, sha, client, ids, pid])
        hashes = phone.page.evaluate("""async () => {
            const out = [];
            for (const n of [0, 1, 55, 56, 64, 1000, 100000]) {
              const b = new Uint8Array(n).map((_, i) => (i * 31 + n) & 255);
              out.push([await fruits.debug.sha256Hex(b), await fruits.debug.sha256Hex(b, {forceFallback: true})]);
            }
            return out;
        }""")
    # Filed by day as Python files them (the UTC date, by default the day it is sent).
    assert today["vectors"] in {vectors_object_key(ROOT, sha, client, ids, day=upload_day(datetime.now(timezone.utc) + d))
                                for d in (timedelta(minutes=-1), timedelta(0))}
    assert keys == {"vectors": vectors_object_key(ROOT, sha, client, ids, day="2027-02-28"),
                    "latest": latest_projection_key(ROOT, sha),
                    "projection": projection_key(ROOT, pid), "index": index_key(ROOT, pid),
                    "content": content_key(sha, ids)}
    import hashlib

    for n, (web, fallback) in zip([0, 1, 55, 56, 64, 1000, 100000], hashes):
        expected = hashlib.sha256(bytes(((i * 31 + n) & 255) for i in range(n))).hexdigest()
        assert web == fallback == expected


# ------------------------------------------------------------------------------------ the cloud
def test_contributes_one_contract_object_with_its_own_identity(served, cloud, photos, python_vectors, tmp_path):
    """Photos picked -> one Parquet object under the identity's client= folder, named by its content, created with
    If-None-Match: *; it passes validate_table, its vectors equal the Python edge's, and every header the page's
    S3 requests carry is in the CORS rule bootstrap generates (real S3 would refuse others)."""
    from bootstrap.policies import WEB_APP_HEADERS

    with Chromium() as browser:
        phone = browser.open(served.url)
        sent = []
        phone.page.on("request", lambda r: sent.append((r.method, r.url, r.headers)) if cloud["bucket"] in r.url else None)
        summary = phone.pick(photos, folder=True)
        phone.wait_uploaded()
        client = phone.page.evaluate("fruits.clientId")
        assert "1 file of vectors sent" in phone.text("#queue") and page_errors(phone) == []
    assert summary["rows"] == summary["queuedRows"] == 60
    keys = objects(cloud["s3"], cloud["bucket"])
    ids = sorted(python_vectors[i]["image_id"] for i in python_vectors if python_vectors[i]["source"].startswith("Training/"))
    assert keys == [vectors_object_key(ROOT, next(iter(python_vectors.values()))["model_sha256"], client, ids)]
    assert f"/client={client}/" in keys[0] and client.startswith("us-east-1:")
    table = table_of(cloud["s3"], cloud["bucket"], keys[0])
    validate_table(table, origin=keys[0])
    assert set(table.column("client_id").to_pylist()) == {client}
    for row in table.to_pylist():
        np.testing.assert_array_equal(np.asarray(row["features"], np.float32),
                                      np.asarray(python_vectors[row["image_id"]]["features"], np.float32))
    puts = [h for m, u, h in sent if m == "PUT"]
    assert len(puts) == 1 and puts[0]["if-none-match"] == "*"
    browser_set = {"referer", "user-agent", "accept", "origin"}
    for _, _, headers in sent:
        extra = {h for h in headers if not h.startswith("sec-")} - browser_set
        assert extra <= set(WEB_APP_HEADERS), extra - set(WEB_APP_HEADERS)


def test_second_visit_downloads_and_sends_nothing_again(served, cloud, photos, tmp_path):
    """The same phone comes back (same profile): the model and the Wasm files come from the service worker's
    cache (the server sees no request for them), and the same photos again send nothing (the ids are known)."""
    profile = tmp_path / "profile"
    training = photos
    with Chromium(profile) as browser:
        phone = browser.open(served.url)
        phone.pick(training, folder=True)
        phone.wait_uploaded()
        first = dict(served.bytes_sent)
    assert first.get("model/mobilenetv2_160_int8.tflite", 0) > 2_000_000 and first.get("wasm/litert_wasm_internal.wasm", 0) > 0
    served.reset_counts()
    with Chromium(profile) as browser:
        phone = browser.open(served.url)
        puts = []
        phone.page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
        summary = phone.pick(training, folder=True)
        phone.wait_uploaded()
    second = dict(served.bytes_sent)
    # sw.js may be asked again: that is the browser's update check of the service worker (2 kB), how a new build
    # is found; the model, the Wasm and the code are not.
    heavy = {k: v for k, v in second.items() if k.startswith(("model/", "wasm/")) or (k.endswith(".js") and k != "sw.js")}
    assert heavy == {}, heavy
    assert sum(second.values()) < 20_000, second       # the page, its settings and the contract: small files
    assert puts == [] and summary["alreadySent"] == 60 and summary["queuedRows"] == 0
    assert len(objects(cloud["s3"], cloud["bucket"])) == 1


def test_offline_picks_wait_in_the_queue_and_go_once_when_back(served, cloud, photos, tmp_path):
    """Offline while picking: vectorized and identified, the file waits (IndexedDB); back online: sent once. A
    tab closed with a file waiting: the next visit sends it."""
    profile = tmp_path / "profile"
    lemons = sorted((photos / "Lemon").glob("*.jpg"))
    bananas = sorted((photos / "Banana").glob("*.jpg"))
    with Chromium(profile) as browser:
        phone = browser.open(served.url)
        browser.set_offline(True)
        summary = phone.pick(lemons)
        assert summary["rows"] == 10 and summary["queuedRows"] == 10
        assert phone.pending() == 1 and "offline" in phone.text("#queue") and phone.text("#net") == "offline"
        assert objects(cloud["s3"], cloud["bucket"]) == []
        browser.set_offline(False)
        phone.wait_uploaded()
        assert len(objects(cloud["s3"], cloud["bucket"])) == 1
        browser.set_offline(True)
        phone.pick(bananas)
        assert phone.pending() == 1
        phone.close()                                  # the tab is closed with a file waiting
        browser.set_offline(False)
        phone = browser.open(served.url)               # reopened: the queue is sent at start
        phone.wait_uploaded()
    keys = objects(cloud["s3"], cloud["bucket"])
    assert len(keys) == 2
    rows = [table_of(cloud["s3"], cloud["bucket"], k).num_rows for k in keys]
    assert sorted(rows) == [10, 10]


@pytest.mark.slow
def test_wasm_heap_stays_flat_over_500_photos(web_dist, tmp_path):
    """Every tensor is freed: each worker's Wasm heap after 500 photos is what it was after the first 100."""
    from models.synthetic import generate

    many = generate(tmp_path / "many", per_class=50, n_classes=10, seed=11)
    files = sorted(many.rglob("*.jpg"))
    assert len(files) == 500
    with WebServer(web_dist, {}) as server, Chromium() as browser:
        phone = browser.open(server.url)
        phone.pick(files[:100])
        after_100 = phone.page.evaluate("fruits.debug.heapBytes()")
        summary = phone.pick(files[100:])
        after_500 = phone.page.evaluate("fruits.debug.heapBytes()")
    assert summary["rows"] == 400
    assert after_500 == after_100, (after_100, after_500)


@pytest.mark.slow
def test_pca_fits_browser_python_and_server_vectors_together(served, cloud, spark, s3_server, photos, model_path, tmp_path):
    """Three kinds of devices, one model file: a browser phone uploads vectors, the Python edge uploads vectors,
    a third device uploads raw photos the job featurizes; `fruits-cloud pca` fits them together, each photo once."""
    from cloud_pca.job import JobConfig, run
    from edge_client.manifest import Manifest
    from edge_client.upload import s3_client, upload_raw, upload_vectors
    from edge_client.vectorize import find_photos, vectorize

    training = photos
    classes = sorted(p.name for p in training.iterdir())
    with Chromium() as browser:
        phone = browser.open(served.url)
        phone.pick([p for c in classes[:2] for p in sorted((training / c).glob("*.jpg"))])
        phone.wait_uploaded()
    client = s3_client(endpoint_url=s3_server.endpoint_url)
    py_photos = [p for p in find_photos([training]) if p.label in classes[2:4]]
    vectorize(py_photos, tmp_path / "py.parquet", model_path=model_path, threads=2, client_id="laptop-1", progress=False)
    upload_vectors(client, [tmp_path / "py.parquet"], cloud["bucket"], ROOT, manifest=Manifest(tmp_path / "m.sqlite"),
                   progress=False)
    raw = [p for p in find_photos([training]) if p.label in classes[4:]]
    upload_raw(client, raw, cloud["bucket"], ROOT, client_id="old-phone", manifest=Manifest(tmp_path / "m.sqlite"),
               progress=False)
    base = f"s3a://{cloud['bucket']}/{ROOT}"
    result = run(spark, JobConfig(inputs=[f"{base}/vectors/"], images=[f"{base}/raw/"], model_path=str(model_path),
                                  output=f"{base}/pca", k=8, run_id="three", plots=False))
    s = result.summary
    assert s["projected"] == 60 and s.get("duplicates", 0) == 0, s
    proj = spark.read.parquet(f"{result.run_uri}/projections")
    clients = {r["client_id"]: r["count"] for r in proj.groupBy("client_id").count().collect()}
    browser_ids = [c for c in clients if c.startswith("us-east-1:")]
    assert len(browser_ids) == 1 and clients[browser_ids[0]] == 20
    assert clients["laptop-1"] == 20 and clients["server:spark"] == 20
