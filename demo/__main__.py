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
from contextlib import ExitStack
from pathlib import Path

from demo.s3server import TEST_CREDENTIALS, LocalS3, prefix_bytes

BUCKET = "fruits-demo"


def stage(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def split_photos(src: Path, edge_dir: Path, raw_dir: Path, held_dir: Path, raw_fraction: float,
                 held_per_class: int = 2) -> tuple[int, int, int]:
    """Every class folder split three ways: ``held_per_class`` photos held out (identified at the end, never
    uploaded), about ``raw_fraction`` of the rest to the raw-upload devices, the others to the vectorizing ones."""
    from featurizer.preprocess import IMAGE_EXTENSIONS

    counts = {"edge": 0, "raw": 0, "held": 0}
    per_class: dict[str, int] = {}
    every = max(1, round(1 / raw_fraction)) if raw_fraction > 0 else 0
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        rel = path.relative_to(src)
        seen = per_class.get(str(rel.parent), 0)
        per_class[str(rel.parent)] = seen + 1
        if seen < held_per_class and rel.parent != Path("."):
            kind = "held"
        else:
            sent = counts["edge"] + counts["raw"]
            kind = "raw" if every and sent % every == every - 1 else "edge"
        target = {"edge": edge_dir, "raw": raw_dir, "held": held_dir}[kind] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        counts[kind] += 1
    return counts["edge"], counts["raw"], counts["held"]


def identify_held_out(held: Path, s3, bucket: str, root: str, endpoint: str | None) -> dict:
    """Photos held out of every upload, identified on the 'device' from what the cloud published."""
    from edge_client.project import fetch_index, fetch_projection, identify
    from featurizer.runtime import Model
    from models import model_path

    model = Model(model_path(), threads=1)
    projection = fetch_projection(s3, bucket, root, model.sha256, endpoint_url=endpoint)
    index = fetch_index(s3, bucket, root, projection.projection_id, endpoint_url=endpoint)
    rows = []
    for photo in sorted(held.rglob("*")):
        if not photo.is_file():
            continue
        (label, score, _), *_ = identify(photo, model, projection, index, top=1)
        rows.append({"photo": f"{photo.parent.name}/{photo.name}", "identified as": label, "score": round(score, 3),
                     "right": label == photo.parent.name})
    return {"rows": rows, "accuracy": sum(r["right"] for r in rows) / max(1, len(rows)), "k": projection.k,
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
        page.text(f"{len(identified['rows'])} photos held out of every upload (never seen by the PCA), identified from the published "
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


def parse_args(argv):
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
        raise SystemExit(f"Error: --raw-fraction {args.raw_fraction} must be in [0, 1)")
    if args.photos and not args.photos.is_dir():
        raise SystemExit(f"Error: --photos {args.photos} is not a folder")
    return args


class Demo:
    """The demo's stages, in order; every process a stage starts is stopped by ``stack`` (also on failure)."""

    def __init__(self, args, stack: ExitStack):
        self.args, self.stack = args, stack
        self.out = args.out.resolve()
        self.stage_s: dict[str, float] = {}
        self.bucket, self.root = BUCKET, "team"
        self.endpoint = None
        self.s3 = self.spark = None

    def timed(self, name: str, fn):
        t = time.perf_counter()
        result = fn()
        self.stage_s[name] = time.perf_counter() - t
        return result

    def photos(self) -> tuple[int, int, int]:
        if self.args.photos:
            src = self.args.photos.resolve()
        else:
            from models.synthetic import generate

            stage(f"1/5 generating {self.args.per_class * 10} synthetic fruit photos")
            src = generate(self.out / "photos", per_class=self.args.per_class, progress=True)
        dev = self.out / "devices"
        counts = split_photos(src, dev / "edge", dev / "raw", dev / "held-out", self.args.raw_fraction)
        if counts[0] + counts[1] == 0:
            raise DemoError(f"no photos under {src}")
        stage(f"    {counts[0]} photos on devices that vectorize, {counts[1]} on devices that upload raw photos, "
              f"{counts[2]} held out to identify at the end")
        return counts

    def storage(self) -> None:
        import boto3

        if self.args.s3:
            from edge_client.upload import parse_s3_uri

            self.bucket, self.root = parse_s3_uri(self.args.s3)
            self.endpoint = self.args.endpoint_url
            stage(f"2/5 using {self.args.s3}" + (f" at {self.endpoint}" if self.endpoint else ""))
            self.s3 = boto3.client("s3", endpoint_url=self.endpoint)
            return
        for key, value in TEST_CREDENTIALS.items():  # the local server takes any; never real ones
            os.environ[key] = value
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        stage("2/5 starting a local S3 server on 127.0.0.1")
        server = LocalS3(mode="process").start()
        self.stack.callback(lambda: (server.stop(), stage("local S3 server stopped")))
        self.endpoint = server.endpoint_url
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        self.s3.create_bucket(Bucket=self.bucket)

    def devices(self, n_raw: int) -> None:
        from edge_client.cli import main as edge_main

        common = ["--manifest", str(self.out / "upload-manifest.sqlite")] + \
            (["--endpoint-url", self.endpoint] if self.endpoint else [])
        dest = f"s3://{self.bucket}/{self.root}"
        stage("3/5 devices: fruits-edge sync (vectorize on the device, upload only the vectors)")
        code = edge_main(["sync", str(self.out / "devices" / "edge"), dest, "--client-id", "demo-phone",
                          "--keep", str(self.out / "vectors.parquet"), *common])
        if code not in (0, 3):
            raise DemoError(f"fruits-edge sync failed (exit {code})")
        if n_raw:
            stage("    devices without vectorization: fruits-edge upload-raw")
            code = edge_main(["upload-raw", str(self.out / "devices" / "raw"), dest, "--client-id", "demo-old-phone",
                              *common])
            if code not in (0, 3):
                raise DemoError(f"fruits-edge upload-raw failed (exit {code})")

    def cloud(self, n_raw: int):
        from cloud_pca.job import JobConfig, run
        from cloud_pca.spark import get_spark
        from models import model_path

        master = self.args.master or "local[2]"
        stage(f"4/5 cloud: Spark ({master}) reads s3a://, featurizes raw photos, fits StandardScaler + PCA")
        self.spark = get_spark("fruits-demo", master=master, s3_endpoint=self.endpoint)
        spark = self.spark
        self.stack.callback(_stop_quietly, spark)
        signal.signal(signal.SIGINT, _interrupt)  # SparkContext installs its own; ours also stops everything
        base = f"s3a://{self.bucket}/{self.root}"
        return run(spark, JobConfig(inputs=[f"{base}/vectors/"], images=[f"{base}/raw/"] if n_raw else [],
                                    model_path=str(model_path()), output=f"{base}/pca", variance=0.95,
                                    solver=self.args.solver, run_id="demo", overwrite=True),
                   progress=lambda s: stage(f"    {s}"))

    def evaluate(self):
        from cloud_pca.evaluate import evaluate

        stage("    how little must we store: fruits-cloud evaluate (held-out accuracy vs bytes per image)")
        return evaluate(self.spark, [f"s3a://{self.bucket}/{self.root}/vectors/"], ks=(2, 4, 8, 16, 32, 64))

    def publish(self, result) -> None:
        from cloud_pca.publish import publish

        k = min(32, result.summary["k"])
        stage(f"    publishing a {k}-component projection + reference index for the devices")
        publish(self.spark, result.run_uri, f"s3a://{self.bucket}/{self.root}", k=k)

    def identify(self) -> dict:
        stage("    a device identifies the held-out photos (never uploaded) with fruits-edge identify")
        return identify_held_out(self.out / "devices" / "held-out", self.s3, self.bucket, self.root, self.endpoint)

    def copy_results(self, n_edge: int) -> dict:
        stage(f"5/5 copying results from s3://{self.bucket}/{self.root}/pca/run=demo/ and writing the report")
        prefix = f"{self.root}/pca/run=demo/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                target = self.out / "results" / obj["Key"][len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, obj["Key"], str(target))
        v_objects, v_bytes = prefix_bytes(self.s3, self.bucket, f"{self.root}/vectors/")
        r_objects, r_bytes = prefix_bytes(self.s3, self.bucket, f"{self.root}/raw/")
        return {"edge_images": n_edge, "vector_objects": v_objects, "vector_bytes": v_bytes,
                "raw_objects": r_objects, "raw_bytes": r_bytes}


class DemoError(Exception):
    """A stage that failed; the message says which."""


def _stop_quietly(spark) -> None:
    try:
        spark.stop()
    except Exception:  # the JVM may already be gone after Ctrl-C
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C must reach our cleanup (stop Spark and the server) even while Java or a child runs.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    t0 = time.perf_counter()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            demo = Demo(args, stack)
            n_edge, n_raw, n_held = demo.timed("photos", demo.photos)
            demo.timed("s3 server", demo.storage)
            demo.timed("devices (vectorize + upload)", lambda: demo.devices(n_raw))
            result = demo.timed("spark job (incl. start)", lambda: demo.cloud(n_raw))
            evaluation = demo.timed("evaluate", demo.evaluate)
            demo.timed("publish", lambda: demo.publish(result))
            identified = demo.timed(f"identify {n_held} photos", demo.identify)
            storage = demo.timed("copy results", lambda: demo.copy_results(n_edge))
            report = write_report(out, result.summary, result.explained, storage, demo.stage_s,
                                  str(args.photos or "synthetic"), evaluation, identified)
    except KeyboardInterrupt:
        print("\nError: interrupted; Spark and the local S3 server were stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # a failed stage: say which; the stack has stopped everything
        if _INTERRUPTED:  # an error caused by the interrupt (a call cut short), not a failure of its own
            print("\nError: interrupted; Spark and the local S3 server were stopped", file=sys.stderr)
            return 130
        print(f"Error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    summarize(out, result.summary, storage, evaluation, identified, report, n_edge, time.perf_counter() - t0,
              demo.stage_s)
    return 0


def summarize(out: Path, s: dict, storage: dict, evaluation, identified: dict, report: Path, n_edge: int,
              wall: float, stage_s: dict) -> None:
    (out / "demo-summary.json").write_text(json.dumps({**s, "storage": storage, "stages_s": stage_s,
                                                       "wall_s": wall, "identified": identified}, indent=1))
    print()
    print(f"report:   {report}")
    print(f"results:  {out / 'results'} (projections, model, plots, summary.json)")
    print(f"devices:  {n_edge} photos sent as vectors ({storage['vector_bytes'] / max(1, n_edge):.0f} B/image), "
          f"{storage['raw_objects']} sent raw ({storage['raw_bytes'] / max(1, storage['raw_objects']):.0f} B/image), "
          f"featurized by Spark")
    print(f"rows:     {s['rows_in']} in = {s['projected']} projected + {s['rejected']} rejected + "
          f"{s['duplicates']} duplicates")
    print(f"PCA:      k={s['k']} components keep {s['cumulative_explained_variance']:.1%} of the variance "
          f"of 1280-d vectors ({s['solver']} solver)")
    for clf, a in evaluation.answer.items():
        print(f"store:    {clf}: {a['sentence']}")
    print(f"identify: {identified['accuracy']:.0%} of {len(identified['rows'])} held-out photos right (chance "
          f"{1 / identified['classes']:.0%}) from a {identified['k']}-component projection published to the bucket")
    print(f"wall:     {wall:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
