"""Edge benchmark: model size and latency per precision, and end-to-end `vectorize` throughput against
the 2-core limit 2 / (d + i), all measured in one run on this machine.

    ./run bench edge [--images 1000] [--repeats 3]

The end-to-end rate is the median of ``--repeats`` runs (timings here vary by 10-20% run to run). Then the
fp32 and int8 vectors are uploaded to a local S3 server (moto on 127.0.0.1) to count bytes on S3 per image
and S3 requests per 1,000 images, for a first upload and for an idempotent re-run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Recorder, timed  # noqa: E402
from demo.synthetic import generate  # noqa: E402
from edge_client.preprocess import preprocess  # noqa: E402
from demo.s3server import TEST_CREDENTIALS, LocalS3  # noqa: E402
from edge_client.runtime import MODELS_DIR, Model  # noqa: E402
from edge_client.upload import Manifest, s3_client, upload_vectors  # noqa: E402
from edge_client.vectorize import find_photos, vectorize  # noqa: E402


def per_image(fn, items) -> float:
    _, s = timed("", lambda: [fn(x) for x in items])
    return s / len(items)


def s3_figures(endpoint: str, vectors: Path, tmp: Path, precision: str) -> dict:
    """Upload one vectors file twice (fresh manifest, then the same one): objects, bytes, requests."""
    import boto3

    client = s3_client(endpoint_url=endpoint)
    bucket = f"bench-{precision}"
    client.create_bucket(Bucket=bucket)
    manifest = Manifest(tmp / f"manifest-{precision}.sqlite")
    first = upload_vectors(client, [vectors], bucket, "fruits", manifest=manifest, endpoint_url=endpoint,
                           progress=False)
    again = upload_vectors(client, [vectors], bucket, "fruits", manifest=manifest, endpoint_url=endpoint,
                           progress=False)
    listing = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").list_objects_v2(Bucket=bucket)
    stored = sum(o["Size"] for o in listing.get("Contents", []))
    rows = first.rows_put
    return {"images": rows, "objects": first.objects_put, "bytes_on_s3": stored,
            "bytes_on_s3_per_image": stored / rows, "requests": first.requests,
            "requests_per_1000_images": first.requests / rows * 1000, "rerun_requests": again.requests}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for key, value in TEST_CREDENTIALS.items():  # the local server accepts any; never real credentials
        os.environ[key] = value
    rec = Recorder("edge")
    with tempfile.TemporaryDirectory() as tmp:
        n_classes = 10
        root = generate(tmp, per_class=max(1, args.images // n_classes), n_classes=n_classes, seed=3)
        photos = find_photos([root])
        blobs = [p.path.read_bytes() for p in photos]
        print(f"{len(photos)} synthetic 100x100 JPEGs, median {int(statistics.median(map(len, blobs)))} bytes")
        print(f"{'precision':9s} {'MB':>6s} {'1-thr ms':>9s} {'2-thr ms':>9s} {'d ms':>6s} {'limit/s':>8s} "
              f"{'e2e/s':>7s} {'e2e/limit':>9s} {'e2e/bare2':>9s}")
        for precision in ("fp32", "fp16", "int8"):
            path = MODELS_DIR / f"mobilenetv2_160_{precision}.tflite"
            m1 = Model(path, threads=1)
            m2 = Model(path, threads=2)
            xs = [preprocess(b, m1.input_size)[0] for b in blobs[:200]]
            for x in xs[:10]:
                m1.features(x), m2.features(x)  # warm-up
            i1 = per_image(m1.features, xs)
            i2 = per_image(m2.features, xs)
            d = per_image(lambda b: preprocess(b, m1.input_size), blobs[:300])
            limit = 2.0 / (d + i1)
            out = Path(tmp) / f"v_{precision}.parquet"
            rates = []
            for _ in range(max(1, args.repeats)):
                summary = vectorize(photos, out, model_path=path, threads=2, progress=False)
                rates.append(summary.ok / summary.seconds)
            rate = statistics.median(rates)
            print(f"{precision:9s} {path.stat().st_size / 1e6:6.2f} {i1 * 1e3:9.2f} {i2 * 1e3:9.2f} {d * 1e3:6.2f} "
                  f"{limit:8.0f} {rate:7.0f} {rate / limit:9.2f} {rate * i2:9.2f}")
            rec.add(measure="edge", precision=precision, size_bytes=path.stat().st_size, invoke_1thread_ms=i1 * 1e3,
                    invoke_2threads_ms=i2 * 1e3, decode_preprocess_ms=d * 1e3, limit_images_per_s=limit,
                    e2e_images_per_s=rate, e2e_over_limit=rate / limit, e2e_over_bare_2thread_invoke=rate * i2,
                    images=summary.ok, parquet_bytes=out.stat().st_size,
                    parquet_bytes_per_image=out.stat().st_size / summary.ok,
                    median_jpeg_bytes=statistics.median(map(len, blobs)), cores=os.cpu_count(),
                    e2e_runs=";".join(f"{r:.0f}" for r in rates))
        print(f"\nS3 (local moto server): {'precision':9s} {'objects':>7s} {'B/image':>8s} {'JPEG B':>7s} "
              f"{'req/1000 img':>12s} {'re-run req':>10s}")
        with LocalS3() as s3:
            for precision in ("fp32", "int8"):
                row = s3_figures(s3.endpoint_url, Path(tmp) / f"v_{precision}.parquet", Path(tmp), precision)
                row["median_jpeg_bytes"] = statistics.median(map(len, blobs))
                rec.add(measure="s3_upload", precision=precision, **row)
                print(f"{'':23s}{precision:9s} {row['objects']:7d} {row['bytes_on_s3_per_image']:8.0f} "
                      f"{row['median_jpeg_bytes']:7.0f} {row['requests_per_1000_images']:12.1f} "
                      f"{row['rerun_requests']:10d}")
    print(f"rows: {rec.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
