"""Server-side featurization throughput (Spark local[2], pandas UDF) against `fruits-edge vectorize` on the
same photos, the same model and the same 2 cores, in one run; plus parity of the two sides' vectors.

    ./run bench featurize [--images 1000] [--model models/mobilenetv2_160_fp32.tflite]

cold: the first featurization in a new Spark session (Python workers start, each loads the interpreter);
warm: the same again in that session (workers and interpreters reused); median of ``--repeats``.
Spark's own start-up (the JVM) is reported apart, not in either rate.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np


from common import PeakMemory, Recorder, timed
from contract import read_vectors
from contract.vectors import cosine
from models.synthetic import generate
from models import model_path
from edge_client.vectorize import find_photos, vectorize


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=str(model_path()))
    ap.add_argument("--tasks-per-core", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="20 photos, one repeat: that it runs and writes its results")
    ap.add_argument("--out", type=Path, default=Path("out/benchmarks"))
    args = ap.parse_args()
    if args.smoke:
        args.images, args.repeats = 20, 1
    rec = Recorder("featurize", args.out)
    with tempfile.TemporaryDirectory(prefix="fruits-bench-featurize-") as tmp:
        root = generate(tmp, per_class=max(1, args.images // 10), n_classes=10, seed=5)
        photos = find_photos([root])
        n = len(photos)
        print(f"{n} synthetic 100x100 JPEGs, model {Path(args.model).name}, 2 cores")

        edge_rates = []
        for i in range(args.repeats):
            s = vectorize(photos, Path(tmp) / "edge.parquet", model_path=args.model, threads=2, progress=False)
            edge_rates.append(s.ok / s.seconds)
        edge_rate = statistics.median(edge_rates)

        from cloud_pca.featurize import featurize
        from cloud_pca.spark import get_spark

        spark, start_s = timed("spark", lambda: get_spark("fruits-bench-featurize", master="local[2]"))
        feat, cold_s = timed("cold", lambda: featurize(spark, str(root), model_path=args.model,
                                                       tasks_per_core=args.tasks_per_core))
        server = {r["image_id"]: np.asarray(r["features"], np.float64) for r in feat.vectors.collect()}
        feat.unpersist()
        warm = []
        for _ in range(args.repeats):
            f, s = timed("warm", lambda: featurize(spark, str(root), model_path=args.model,
                                                       tasks_per_core=args.tasks_per_core))
            f.unpersist()
            warm.append(s)
        with PeakMemory() as mem:   # one more run, not timed: the sampler itself costs CPU
            featurize(spark, str(root), model_path=args.model, tasks_per_core=args.tasks_per_core).unpersist()
        workers_mb = mem.peak["workers_mb"]
        warm_s = statistics.median(warm)
        spark.stop()

        edge = read_vectors(Path(tmp) / "edge.parquet").to_pydict()
        cos = [cosine(vec, server[iid]) for iid, vec in zip(edge["image_id"], edge["features"])]
        same_ids = set(edge["image_id"]) == set(server)

    cold_rate, warm_rate = n / cold_s, n / warm_s
    print(f"Spark start (not counted): {start_s:.1f} s")
    print(f"{'':22s} {'images/s':>9s} {'ratio to edge':>13s}")
    print(f"{'edge vectorize (2 thr)':22s} {edge_rate:9.0f} {1.0:13.2f}   runs: "
          + ", ".join(f"{r:.0f}" for r in edge_rates))
    print(f"{'featurize cold':22s} {cold_rate:9.0f} {cold_rate / edge_rate:13.2f}")
    print(f"{'featurize warm':22s} {warm_rate:9.0f} {warm_rate / edge_rate:13.2f}   runs: "
          + ", ".join(f"{n / s:.0f}" for s in warm))
    print(f"Python workers' peak RSS, all together: {workers_mb:.0f} MB (local[2]: 2 workers + the daemon)")
    print(f"parity: same image_ids {same_ids}; cosine min {min(cos):.8f} mean {np.mean(cos):.8f} over {len(cos)}")
    for name, rate in (("edge_vectorize", edge_rate), ("featurize_cold", cold_rate), ("featurize_warm", warm_rate)):
        rec.add(measure="throughput", path=name, images=n, images_per_s=round(rate, 1),
                ratio_to_edge=round(rate / edge_rate, 3), cores=2)
    rec.add(measure="parity", images=len(cos), cosine_min=min(cos), cosine_mean=float(np.mean(cos)),
            same_image_ids=same_ids)
    rec.add(measure="spark_start", seconds=round(start_s, 2))
    rec.add(measure="workers_peak_rss", mb=round(workers_mb))
    print(f"rows: {rec.save()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
