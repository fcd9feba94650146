"""The end-to-end demo on one machine: photos -> edge vectors -> local S3 -> Spark PCA -> results.

    ./run demo [--photos DIR] [--per-class N] [--out out/demo]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from demo.s3server import TEST_CREDENTIALS, LocalS3


def stage(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=Path, help="a folder of labelled photos (e.g. Fruits-360 Training/); "
                                                "default: generate synthetic ones")
    ap.add_argument("--per-class", type=int, default=100, help="synthetic photos per class (10 classes)")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--solver", default="gram", choices=("gram", "spark"))
    args = ap.parse_args(argv)
    os.environ.update({k: os.environ.get(k, v) for k, v in TEST_CREDENTIALS.items()})
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    t0 = time.perf_counter()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)

    if args.photos:
        photos = args.photos
        if not photos.is_dir():
            print(f"Error: --photos {photos} is not a folder", file=sys.stderr)
            return 1
    else:
        from demo.synthetic import generate

        stage(f"generating {args.per_class * 10} synthetic fruit photos")
        photos = generate(out / "photos", per_class=args.per_class, progress=True)

    server = LocalS3(mode="process")
    spark = None
    try:
        stage("starting a local S3 server on 127.0.0.1")
        server.start()
        import boto3

        s3 = boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1")
        s3.create_bucket(Bucket="fruits-demo")

        from edge_client.cli import main as edge_main

        stage("edge: fruits-edge sync (vectorize on the 'device', upload only the vectors)")
        code = edge_main(["sync", str(photos), "s3://fruits-demo/team", "--endpoint-url", server.endpoint_url,
                          "--manifest", str(out / "upload-manifest.sqlite"), "--client-id", "demo-phone",
                          "--keep", str(out / "vectors.parquet")])
        if code not in (0, 3):
            return code

        stage("cloud: Spark StandardScaler + PCA in local mode over s3a://")
        from cloud_pca.job import JobConfig, run
        from cloud_pca.spark import get_spark

        spark = get_spark("fruits-demo", s3_endpoint=server.endpoint_url)
        result = run(spark, JobConfig(inputs=["s3a://fruits-demo/team/vectors/"],
                                      output="s3a://fruits-demo/team/pca", variance=0.95, solver=args.solver,
                                      run_id="demo"), progress=lambda s: stage(f"  {s}"))

        stage("copying results from the bucket to " + str(out / "results"))
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="fruits-demo", Prefix="team/pca/run=demo/")
        for page in pages:
            for obj in page.get("Contents", []):
                target = out / "results" / obj["Key"][len("team/pca/run=demo/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file("fruits-demo", obj["Key"], str(target))
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    finally:
        if spark is not None:
            spark.stop()
        server.stop()
        stage("local S3 server stopped")

    s = result.summary
    print()
    print(f"results:  {out / 'results'}")
    print(f"plots:    {out / 'results' / 'plots'} (scree.png, pca_2d.png, pca_3d.png)")
    print(f"vectors:  {s['projected']} projected, {s['rejected']} rejected, {s['duplicates']} duplicates")
    print(f"PCA:      k={s['k']} components keep {s['cumulative_explained_variance']:.1%} of the variance "
          f"of 1280-d vectors")
    print(f"timings:  {json.dumps(s['timings_s'])}; demo wall time {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
