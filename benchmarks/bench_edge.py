"""Edge benchmark: model size and latency per precision, and end-to-end `vectorize` throughput against
the 2-core limit 2 / (d + i), all measured in one run on this machine.

    ./run bench edge [--images 1000]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Recorder, timed  # noqa: E402
from demo.synthetic import generate  # noqa: E402
from edge_client.preprocess import preprocess  # noqa: E402
from edge_client.runtime import MODELS_DIR, Model  # noqa: E402
from edge_client.vectorize import find_photos, vectorize  # noqa: E402


def per_image(fn, items) -> float:
    _, s = timed("", lambda: [fn(x) for x in items])
    return s / len(items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    args = ap.parse_args()
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
            summary, _ = timed("e2e", lambda: vectorize(photos, out, model_path=path, threads=2, progress=False))
            rate = summary.ok / summary.seconds
            print(f"{precision:9s} {path.stat().st_size / 1e6:6.2f} {i1 * 1e3:9.2f} {i2 * 1e3:9.2f} {d * 1e3:6.2f} "
                  f"{limit:8.0f} {rate:7.0f} {rate / limit:9.2f} {rate * i2:9.2f}")
            rec.add(measure="edge", precision=precision, size_bytes=path.stat().st_size, invoke_1thread_ms=i1 * 1e3,
                    invoke_2threads_ms=i2 * 1e3, decode_preprocess_ms=d * 1e3, limit_images_per_s=limit,
                    e2e_images_per_s=rate, e2e_over_limit=rate / limit, e2e_over_bare_2thread_invoke=rate * i2,
                    images=summary.ok, parquet_bytes=out.stat().st_size,
                    parquet_bytes_per_image=out.stat().st_size / summary.ok,
                    median_jpeg_bytes=statistics.median(map(len, blobs)), cores=os.cpu_count())
    print(f"rows: {rec.save()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
