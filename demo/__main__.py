"""The whole architecture on one machine, no cloud account: photos -> devices -> S3 -> Spark -> report.

    ./run demo [--photos DIR] [--per-class N] [--raw-fraction 0.2] [--out out/demo]
    ./run demo --s3 s3://my-bucket/fruits-demo [--endpoint-url URL]     # any real S3 instead

1. photos: synthetic Fruits-360-like ones (10 classes), or ``--photos`` (e.g. Fruits-360 ``Training/``);
2. a local S3-compatible server on 127.0.0.1 (moto, a child process; always stopped at the end);
3. most photos: ``fruits-edge sync`` (vectorized "on the device", only vectors uploaded); the rest:
   ``fruits-edge upload-raw`` (devices that cannot vectorize);
4. Spark local mode reads both through ``s3a://``, featurizes the raw photos with the same TFLite model,
   fits StandardScaler + PCA, writes results and plots to the bucket;
5. results are copied to ``OUT/results`` and summarized in ``OUT/report.html`` (plots embedded).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

from demo.s3server import TEST_CREDENTIALS, LocalS3, prefix_bytes

BUCKET = "fruits-demo"


def stage(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def split_photos(src: Path, edge_dir: Path, raw_dir: Path, raw_fraction: float) -> tuple[int, int]:
    """Every class folder split in two: about ``raw_fraction`` of its photos go to the raw-upload devices."""
    from featurizer.preprocess import IMAGE_EXTENSIONS

    n_edge = n_raw = 0
    every = max(1, round(1 / raw_fraction)) if raw_fraction > 0 else 0
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = path.relative_to(src)
        to_raw = every and (n_edge + n_raw) % every == every - 1
        target = (raw_dir if to_raw else edge_dir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        n_raw += bool(to_raw)
        n_edge += not to_raw
    return n_edge, n_raw


def identify_new_photos(out: Path, s3, bucket: str, root: str, endpoint: str | None) -> dict:
    """Held-out photos (another seed) identified on the 'device' from what the cloud published."""
    from models.synthetic import generate
    from edge_client.project import fetch_index, fetch_projection, identify
    from featurizer.runtime import Model

    new = generate(out / "new-photos", per_class=2, n_classes=10, seed=4242)
    from models import model_path

    model = Model(model_path(), threads=1)
    projection = fetch_projection(s3, bucket, root, model.sha256, endpoint_url=endpoint)
    index = fetch_index(s3, bucket, root, projection.projection_id, endpoint_url=endpoint)
    rows = []
    for photo in sorted(new.rglob("*.jpg")):
        (label, score), *_ = identify(photo, model, projection, index, top=1)
        rows.append({"photo": f"{photo.parent.name}/{photo.name}", "identified as": label, "score": round(score, 3),
                     "right": label == photo.parent.name})
    return {"rows": rows, "accuracy": sum(r["right"] for r in rows) / len(rows), "k": projection.k,
            "projection_id": projection.projection_id, "classes": len(index.labels)}


def write_report(out: Path, summary: dict, explained: dict, storage: dict, stage_s: dict, photos_src: str,
                 evaluation=None, identified: dict | None = None) -> Path:
    from demo.report import Report

    s = summary
    page = Report("Fruits! demo: edge vectors + server-side featurization -> Spark PCA",
                  f"photos: {photos_src}; run {s['run_id']}; model {s['model_sha256'][:12]}...; "
                  f"everything on this machine (local S3 on 127.0.0.1, Spark local mode)")
    page.heading("Headline")
    page.table([
        {"figure": "photos from devices that vectorize (edge)", "value": storage["edge_images"]},
        {"figure": "photos uploaded raw, featurized by Spark", "value": (s.get("photos") or {}).get("ok", 0)},
        {"figure": "rows in", "value": s["rows_in"]},
        {"figure": "projected", "value": s["projected"]},
        {"figure": "rejected (see results/rejects/)", "value": s["rejected"]},
        {"figure": "duplicates (same image_id)", "value": s["duplicates"]},
        {"figure": "k (components kept)", "value": s["k"]},
        {"figure": "cumulative explained variance at k", "value": round(s["cumulative_explained_variance"], 4)},
    ])
    page.text(f"k: {s['k_reason']}", note=True)
    page.heading("What each kind of device sent and stored")
    page.table([
        {"path": "edge: vectors (zstd Parquet)", "objects": storage["vector_objects"],
         "bytes": storage["vector_bytes"], "bytes per image": round(storage["vector_bytes"] / max(1, storage["edge_images"]))},
        {"path": "raw photos (JPEG)", "objects": storage["raw_objects"], "bytes": storage["raw_bytes"],
         "bytes per image": round(storage["raw_bytes"] / max(1, storage["raw_objects"]))},
    ])
    page.text("For 100x100 thumbnails a vector is about as big as the photo; the saving of uploading vectors "
              "is for phone photos (see ./run bench compare).", note=True)
    if evaluation is not None:
        from cloud_pca.evaluate import plot as evaluation_plots

        page.heading("How little must we store? (fruits-cloud evaluate)")
        for clf, a in evaluation.answer.items():
            page.text(f"{clf}: {a['sentence']}.")
        page.text(f"{evaluation.n_train} training / {evaluation.n_test} held-out images (split by image), "
                  f"{evaluation.classes} classes; kNN k=5 and a ridge linear classifier.", note=True)
        page.images(sorted(evaluation_plots(evaluation).items()))
    if identified is not None:
        page.heading("Identification on the device (fruits-edge identify)")
        page.text(f"{len(identified['rows'])} new photos, never seen by the PCA, identified from the published "
                  f"{identified['k']}-component projection {identified['projection_id']} and its per-class "
                  f"centroids: top-1 accuracy {identified['accuracy']:.0%} "
                  f"(chance {1 / identified['classes']:.0%}).")
        page.table(identified["rows"])
    page.heading("Plots")
    plots_dir = out / "results" / "plots"
    page.images([(p.name, p.read_bytes()) for p in sorted(plots_dir.glob("*.png"))])
    page.heading("Explained variance (first components)")
    ratios, cum = explained["explained_variance_ratio"], explained["cumulative"]
    page.table([{"component": i + 1, "ratio": round(ratios[i], 5), "cumulative": round(cum[i], 5)}
                for i in range(min(len(ratios), max(10, s["k"]) if s["k"] <= 20 else 10))])
    page.heading("Timings (seconds)")
    page.table([{"stage": k, "seconds": round(v, 2)} for k, v in stage_s.items()]
               + [{"stage": f"spark job: {k}", "seconds": v} for k, v in s["timings_s"].items()])
    page.text("Files: results/ (projections/, model/, rejects/, explained_variance.json/.csv, summary.json, "
              "plots/), copied from the bucket.", note=True)
    return page.write(out / "report.html")


_INTERRUPTED = []


def _interrupt(signum, frame):
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, help="a folder of labelled photos (e.g. Fruits-360 Training/); "
                                                "default: generate synthetic ones")
    ap.add_argument("--per-class", type=int, default=100, help="synthetic photos per class (10 classes)")
    ap.add_argument("--raw-fraction", type=float, default=0.2, help="share of photos uploaded raw (default 0.2)")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--solver", default="gram", choices=("gram", "spark"))
    ap.add_argument("--master", help="Spark master: local[2] (default) or a cluster, e.g. spark://127.0.0.1:7077 "
                                     "from `./run cluster start`")
    ap.add_argument("--s3", help="use this S3 location (s3://BUCKET/PREFIX) instead of a local server")
    ap.add_argument("--endpoint-url", help="with --s3: an S3-compatible endpoint (default AWS)")
    args = ap.parse_args(argv)
    if not 0 <= args.raw_fraction < 1:
        print(f"Error: --raw-fraction {args.raw_fraction} must be in [0, 1)", file=sys.stderr)
        return 1
    if args.photos and not args.photos.is_dir():
        print(f"Error: --photos {args.photos} is not a folder", file=sys.stderr)
        return 1
    if args.s3:
        from edge_client.upload import parse_s3_uri
        try:
            bucket, root = parse_s3_uri(args.s3)
        except ValueError as exc:
            print(f"Error: {exc}", file=sys.stderr)
            return 1
    else:
        bucket, root = BUCKET, "team"
        for key, value in TEST_CREDENTIALS.items():  # the local server takes any; never real ones
            os.environ[key] = value
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
    # Ctrl-C must reach our `finally` (stop Spark and the server) even while Java or a child runs.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    t0 = time.perf_counter()
    stage_s: dict[str, float] = {}
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    server = None if args.s3 else LocalS3(mode="process")
    spark = None
    try:
        t = time.perf_counter()
        if args.photos:
            photos = args.photos.resolve()
        else:
            from models.synthetic import generate

            stage(f"1/5 generating {args.per_class * 10} synthetic fruit photos")
            photos = generate(out / "photos", per_class=args.per_class, progress=True)
        edge_dir, raw_dir = out / "devices" / "edge", out / "devices" / "raw"
        n_edge, n_raw = split_photos(photos, edge_dir, raw_dir, args.raw_fraction)
        if n_edge + n_raw == 0:
            print(f"Error: no photos under {photos}", file=sys.stderr)
            return 1
        stage(f"    {n_edge} photos on devices that vectorize, {n_raw} on devices that upload raw photos")
        stage_s["photos"] = time.perf_counter() - t

        t = time.perf_counter()
        import boto3

        if server is not None:
            stage("2/5 starting a local S3 server on 127.0.0.1")
            server.start()
            endpoint = server.endpoint_url
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
            s3.create_bucket(Bucket=bucket)
        else:
            endpoint = args.endpoint_url
            stage(f"2/5 using {args.s3}" + (f" at {endpoint}" if endpoint else ""))
            s3 = boto3.client("s3", endpoint_url=endpoint)
        stage_s["s3 server"] = time.perf_counter() - t
        common = ["--manifest", str(out / "upload-manifest.sqlite")] + (["--endpoint-url", endpoint] if endpoint else [])

        from edge_client.cli import main as edge_main

        t = time.perf_counter()
        stage("3/5 devices: fruits-edge sync (vectorize on the device, upload only the vectors)")
        code = edge_main(["sync", str(edge_dir), f"s3://{bucket}/{root}", "--client-id", "demo-phone",
                          "--keep", str(out / "vectors.parquet"), *common])
        if code not in (0, 3):
            raise RuntimeError(f"fruits-edge sync failed (exit {code})")
        if n_raw:
            stage("    devices without vectorization: fruits-edge upload-raw")
            code = edge_main(["upload-raw", str(raw_dir), f"s3://{bucket}/{root}", "--client-id", "demo-old-phone",
                              *common])
            if code != 0:
                raise RuntimeError(f"fruits-edge upload-raw failed (exit {code})")
        stage_s["devices (vectorize + upload)"] = time.perf_counter() - t

        t = time.perf_counter()
        master = args.master or "local[2]"
        stage(f"4/5 cloud: Spark ({master}) reads s3a://, featurizes raw photos, fits StandardScaler + PCA")
        from cloud_pca.job import JobConfig, run
        from cloud_pca.spark import get_spark

        spark = get_spark("fruits-demo", master=master, s3_endpoint=endpoint)
        signal.signal(signal.SIGINT, _interrupt)  # SparkContext installs its own; ours also stops everything
        result = run(spark, JobConfig(inputs=[f"s3a://{bucket}/{root}/vectors/"],
                                      images=[f"s3a://{bucket}/{root}/raw/"] if n_raw else [],
                                      output=f"s3a://{bucket}/{root}/pca", variance=0.95, solver=args.solver,
                                      run_id="demo"), progress=lambda s: stage(f"    {s}"))
        stage_s["spark job (incl. start)"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("    how little must we store: fruits-cloud evaluate (held-out accuracy vs bytes per image)")
        from cloud_pca.evaluate import evaluate

        evaluation = evaluate(spark, [f"s3a://{bucket}/{root}/vectors/"], ks=(2, 4, 8, 16, 32, 64))
        stage_s["evaluate"] = time.perf_counter() - t
        t = time.perf_counter()
        k_pub = min(32, result.summary["k"])
        stage(f"    publishing a {k_pub}-component projection + reference index for the devices")
        from cloud_pca.publish import publish

        projection, index, _ = publish(spark, result.run_uri, f"s3a://{bucket}/{root}", k=k_pub)
        stage_s["publish"] = time.perf_counter() - t

        t = time.perf_counter()
        stage("    a device identifies 20 new photos (never seen by the PCA) with fruits-edge identify")
        identified = identify_new_photos(out, s3, bucket, root, endpoint)
        stage_s["identify 20 photos"] = time.perf_counter() - t

        t = time.perf_counter()
        stage(f"5/5 copying results from s3://{bucket}/{root}/pca/run=demo/ and writing the report")
        prefix = f"{root}/pca/run=demo/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                target = out / "results" / obj["Key"][len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
        v_objects, v_bytes = prefix_bytes(s3, bucket, f"{root}/vectors/")
        r_objects, r_bytes = prefix_bytes(s3, bucket, f"{root}/raw/")
        storage = {"edge_images": n_edge, "vector_objects": v_objects, "vector_bytes": v_bytes,
                   "raw_objects": r_objects, "raw_bytes": r_bytes}
        stage_s["copy results"] = time.perf_counter() - t
        report = write_report(out, result.summary, result.explained, storage, stage_s,
                              str(args.photos or "synthetic"), evaluation, identified)
    except KeyboardInterrupt:
        print("\nError: interrupted; stopping Spark and the local S3 server", file=sys.stderr)
        return 130
    except Exception as exc:  # a failed stage: say which, still clean up
        if _INTERRUPTED:  # an error caused by the interrupt (a call cut short), not a failure of its own
            print("\nError: interrupted; stopping Spark and the local S3 server", file=sys.stderr)
            return 130
        print(f"Error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    finally:
        if spark is not None:
            try:
                spark.stop()
            except Exception:  # the JVM may already be gone after Ctrl-C
                pass
        if server is not None:
            server.stop()
            stage("local S3 server stopped")

    s = result.summary
    wall = time.perf_counter() - t0
    (out / "demo-summary.json").write_text(json.dumps({**s, "storage": storage, "stages_s": stage_s,
                                                       "wall_s": wall}, indent=1))
    print()
    print(f"report:   {report}")
    print(f"results:  {out / 'results'} (projections, model, plots, summary.json)")
    print(f"devices:  {n_edge} photos sent as vectors ({v_bytes / max(1, n_edge):.0f} B/image), "
          f"{r_objects} sent raw ({r_bytes / max(1, r_objects):.0f} B/image), featurized by Spark")
    print(f"rows:     {s['rows_in']} in = {s['projected']} projected + {s['rejected']} rejected + "
          f"{s['duplicates']} duplicates")
    print(f"PCA:      k={s['k']} components keep {s['cumulative_explained_variance']:.1%} of the variance "
          f"of 1280-d vectors ({s['solver']} solver)")
    for clf, a in evaluation.answer.items():
        print(f"store:    {clf}: {a['sentence']}")
    print(f"identify: {identified['accuracy']:.0%} of {len(identified['rows'])} new photos right (chance "
          f"{1 / identified['classes']:.0%}) from a {identified['k']}-component projection published to the bucket")
    print(f"wall:     {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
