"""``fruits-cloud``: the Spark side.  The same entry point runs under ``spark-submit`` (an EMR step) and
from plain Python in local mode.

    fruits-cloud pca --input s3://fruits-data/team-a/vectors/ --output s3://fruits-data/team-a/pca/
    fruits-cloud featurize --images s3://fruits-data/team-a/raw/ --output s3://fruits-data/team-a/
    fruits-cloud pca --input s3://.../vectors/ --images s3://.../raw/ --output s3://.../pca/   # both at once
    spark-submit cloud_pca/cli.py pca --input ... --output ...     # as an EMR step
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

if __package__ in (None, ""):  # run as a file by spark-submit: make the project importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from cloud_pca.featurize import FeaturizeError  # noqa: E402
from cloud_pca.job import JobConfig, JobError  # noqa: E402
from cloud_pca.pca import SOLVERS, PCAInputError  # noqa: E402


def _uri(u: str) -> str:
    """Local paths become absolute ``file:`` URIs; s3:// and s3a:// pass through."""
    if "://" in u or u.startswith("file:"):
        return u
    return "file://" + os.path.abspath(u)


def default_model() -> str:
    """The committed fp32 model, for runs from this checkout (the EMR steps always pass --model)."""
    try:
        from models import model_path
    except ImportError:
        raise JobError("give --model (a .tflite with its card): the committed models are not shipped here") from None
    return str(model_path())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fruits-cloud", description=__doc__.split("\n\n")[0])
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    parser.add_argument("--master", help="Spark master for local runs (default local[2]; ignored under spark-submit)")
    parser.add_argument("--endpoint-url", default=os.environ.get("FRUITS_S3_ENDPOINT"),
                        help="S3-compatible endpoint for s3a:// (a local server); default AWS")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("pca", help="StandardScaler + PCA over every vectors file under the input",
                       description="Fit StandardScaler + PCA over all vectors under --input and write the "
                                   "projections, the model, explained variance, plots and a summary under "
                                   "OUTPUT/run=<id>/.\n\nexample: fruits-cloud pca --input s3://b/team/vectors/ "
                                   "--output s3://b/team/pca/ --variance 0.95",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", default=[], help="vectors prefix (local, s3://, s3a://); repeatable")
    p.add_argument("--images", action="append", default=[],
                   help="raw photos prefix to featurize in this run and fit together with --input; repeatable")
    p.add_argument("--model", help="the .tflite for --images (local, s3://; its .json card next to it); "
                                   "default: the committed models/mobilenetv2_160_fp32.tflite")
    p.add_argument("--output", required=True, help="output prefix; the run goes to OUTPUT/run=<id>/")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--k", type=int, help="number of components")
    g.add_argument("--variance", type=float, help="smallest k reaching this explained variance (default 0.95)")
    p.add_argument("--solver", choices=SOLVERS, default="gram", help="gram (fast, default) or spark (Spark ML reference)")
    p.add_argument("--label-col", default="label")
    p.add_argument("--model-sha256", help="use only vectors of this model fingerprint (needed when models are mixed)")
    p.add_argument("--skip-bad-files", action="store_true",
                   help="skip files that are not Parquet or not of the contract (listed in the summary) "
                        "instead of failing")
    p.add_argument("--run-id", help="name of the run folder (default: UTC time + random)")
    p.add_argument("--no-plots", action="store_true")

    f = sub.add_parser("featurize", help="raw photos -> vectors (the data contract), for clients that cannot vectorize",
                       description="Vectorize every photo under --images with the same TFLite model and "
                                   "preprocessing as the edge client, and write the vectors under "
                                   "OUTPUT/vectors/model=<sha>/client=server-spark/ (rejects next to them).",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("--images", action="append", required=True, help="photos prefix (local, s3://, s3a://); repeatable")
    f.add_argument("--output", required=True, help="dataset root to write vectors/ under")
    f.add_argument("--model", help="the .tflite (local, s3://); default: the committed fp32 model")
    f.add_argument("--threads", type=int, default=1, help="interpreter threads per task (default 1: Spark runs a "
                                                          "task per core already)")
    f.add_argument("--batch-rows", type=int, default=32, help="photos per Arrow batch (bounds worker memory)")
    f.add_argument("--overwrite", action="store_true", help="replace vectors this command wrote before")

    b = sub.add_parser("publish", help="publish a run's projection + reference index for the devices",
                       description="Write ROOT/models/projection-<id>.npz (mean, scale, first k components, model "
                                   "fingerprint), ROOT/models/index-<id>.npz (per-label centroids) and the "
                                   "pointer ROOT/models/projection-latest-<model_sha256>.json, for `fruits-edge "
                                   "sync --project` and `fruits-edge identify`.\n\nexample: fruits-cloud publish "
                                   "--run s3://b/team/pca/run=2026... --root s3://b/team --k 32",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--run", required=True, help="a finished run folder (OUTPUT/run=<id>)")
    b.add_argument("--root", required=True, help="the dataset root (s3://BUCKET/PREFIX)")
    b.add_argument("--k", type=int, help="components to publish (default: the run's k)")

    v = sub.add_parser("evaluate", help="identification accuracy vs bytes per image: full vectors, PCA k, dtypes",
                       description="On labelled vectors: held-out split by image, StandardScaler + PCA on the "
                                   "training part, kNN and a linear classifier on the full vectors and on k "
                                   "components stored as float32/float16/int8; writes evaluation.json/.csv and "
                                   "plots under OUTPUT.\n\nexample: fruits-cloud evaluate --input "
                                   "s3://b/team/vectors/ --output s3://b/team/evaluation/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("--input", action="append", required=True, help="vectors prefix; repeatable")
    v.add_argument("--output", required=True)
    v.add_argument("--ks", default="8,16,32,64,128,256,512", help="components to try (comma-separated)")
    v.add_argument("--test-fraction", type=float, default=0.25)
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--max-rows", type=int, default=200_000, help="rows the classifiers use (a sample beyond)")
    v.add_argument("--max-bytes", type=int, default=128 * 2**20,
                   help="bytes of features collected to the driver for the classifiers (default 128 MiB, ~26k rows)")

    e = sub.add_parser("emr", help="run the job on AWS EMR: plan | launch | status | terminate",
                       description="A transient EMR 7.x cluster (Spark 3.5) whose steps are featurize (optional) "
                                   "and PCA; it terminates itself when the steps end.\n\nexample: fruits-cloud emr "
                                   "plan --bucket fruits-data --vectors 1000000",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    esub = e.add_subparsers(dest="emr_command", metavar="ACTION")
    for name, text in (("plan", "print the run_job_flow request and the estimated cost; changes nothing"),
                       ("launch", "create roles, harden the bucket, upload code/model/bootstrap, start the cluster")):
        a = esub.add_parser(name, help=text, description=text)
        a.add_argument("--bucket", required=True)
        a.add_argument("--prefix", default="fruits", help="dataset root in the bucket (default fruits)")
        a.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-3"))
        a.add_argument("--release", default="emr-7.5.0", help="EMR 7.x release (Spark 3.5)")
        a.add_argument("--instance-type", default="m5.xlarge")
        a.add_argument("--core-nodes", type=int, default=2, help="on-demand core nodes")
        a.add_argument("--task-nodes", type=int, default=2, help="spot task nodes")
        a.add_argument("--idle-timeout", type=int, default=3600, help="seconds idle before auto-termination")
        a.add_argument("--images", action="store_true", help="add the featurize step for raw/ photos")
        a.add_argument("--evaluate", action="store_true", help="add the evaluate step (accuracy vs bytes per image)")
        a.add_argument("--publish", type=int, metavar="K", dest="publish_k",
                       help="add the publish step: a K-component projection + index under models/ for the devices")
        a.add_argument("--model", default="mobilenetv2_160_fp32.tflite", help="model file under models/")
        a.add_argument("--k", type=int)
        a.add_argument("--variance", type=float, default=0.95)
        a.add_argument("--run-id")
        a.add_argument("--subnet-id")
        a.add_argument("--vectors", type=int, default=1_000_000, help="vectors to fit (for the cost estimate)")
        a.add_argument("--raw-photos", type=int, default=0, help="raw photos to featurize (cost estimate)")
        a.add_argument("--hours", type=float, help="cluster wall time, if known (else estimated)")
        a.add_argument("--profile")
    for name, text in (("status", "state of a cluster and its steps"), ("terminate", "terminate a cluster")):
        a = esub.add_parser(name, help=text, description=text)
        a.add_argument("cluster_id")
        a.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-3"))
        a.add_argument("--profile")
    return parser


def _emr_spec(args):
    from bootstrap.emr import ClusterSpec

    spec = ClusterSpec(bucket=args.bucket, prefix=args.prefix, region=args.region, release=args.release,
                       instance_type=args.instance_type, core_nodes=args.core_nodes, task_nodes=args.task_nodes,
                       idle_timeout_s=args.idle_timeout, images=args.images, model=args.model, k=args.k,
                       variance=args.variance, subnet_id=args.subnet_id, evaluate=args.evaluate,
                       publish_k=args.publish_k)
    if args.run_id:
        spec.run_id = args.run_id
    return spec


def cmd_emr(args) -> int:
    from bootstrap import emr

    if not args.emr_command:
        raise emr.EMRError("give an action: plan, launch, status or terminate")
    if args.emr_command in ("plan", "launch"):
        spec = _emr_spec(args)
        emr.validate(spec)
        if args.emr_command == "plan":
            print(json.dumps(emr.build_request(spec), indent=2))
            cost = emr.estimate_cost(spec, vectors=args.vectors, raw_photos=args.raw_photos, hours=args.hours)
            print(f"\ncost estimate for {args.vectors} vectors + {args.raw_photos} raw photos in {spec.region}:")
            print("\n".join(cost.lines()))
            return 0
        import boto3

        session = boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()
        say = (lambda m: None) if args.quiet else (lambda m: print(f"[emr] {m}", file=sys.stderr, flush=True))
        out = emr.launch(spec, session=session, say=say)
        print(f"cluster: {out['cluster_id']}")
        print(f"follow it: fruits-cloud emr status {out['cluster_id']} --region {spec.region}")
        return 0
    import boto3

    session = boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()
    client = session.client("emr", region_name=args.region)
    if args.emr_command == "status":
        st = emr.status(client, args.cluster_id)
        print(f"{st['id']} {st['name']}: {st['state']}" + (f" ({st['reason']})" if st["reason"] else ""))
        for step in st["steps"]:
            print(f"  {step['state']:12s} {step['name']}")
        return 0
    emr.terminate(client, args.cluster_id)
    print(f"terminating {args.cluster_id}")
    return 0


def cmd_publish(args) -> int:
    from cloud_pca.publish import publish
    from cloud_pca.spark import get_spark

    spark = get_spark("fruits-publish", master=args.master, s3_endpoint=args.endpoint_url)
    projection, index, written = publish(spark, _uri(args.run), _uri(args.root), k=args.k)
    print(f"projection {projection.projection_id}: k={projection.k}, model {projection.model_sha256[:12]}..., "
          f"{len(index.labels)} labels in the index")
    for uri in written:
        print(f"  {uri}")
    return 0


def cmd_evaluate(args) -> int:
    from cloud_pca.evaluate import evaluate, plot
    from cloud_pca.spark import get_spark, write_bytes

    try:
        ks = tuple(sorted({int(k) for k in args.ks.split(",") if k.strip()}))
    except ValueError:
        raise JobError(f"--ks {args.ks!r}: give integers separated by commas") from None
    if not ks or ks[0] < 1:
        raise JobError(f"--ks {args.ks!r}: components must be >= 1")
    spark = get_spark("fruits-evaluate", master=args.master, s3_endpoint=args.endpoint_url)
    if not args.quiet:
        print("[evaluate] fitting PCA on the training split, then classifiers per form and dtype", file=sys.stderr)
    ev = evaluate(spark, [_uri(u) for u in args.input], ks=ks, test_fraction=args.test_fraction, seed=args.seed,
                  max_rows=args.max_rows, max_bytes=args.max_bytes)
    out = _uri(args.output).rstrip("/")
    write_bytes(spark, f"{out}/evaluation.json", ev.to_json().encode())
    cols = ["form", "dims", "dtype", "bytes_per_image", "classifier", "accuracy", "explained_variance"]
    csv = ",".join(cols) + "\n" + "".join(",".join(str(r[c]) for c in cols) + "\n" for r in ev.rows)
    write_bytes(spark, f"{out}/evaluation.csv", csv.encode())
    for name, data in plot(ev).items():
        write_bytes(spark, f"{out}/{name}", data)
    print(f"{ev.n_train} training / {ev.n_test} held-out images, {ev.classes} classes; results in {out}/")
    for clf, a in ev.answer.items():
        print(f"{clf}: {a['sentence']}")
    return 0


def cmd_pca(args) -> int:
    from cloud_pca.job import run
    from cloud_pca.spark import get_spark

    if not args.input and not args.images:
        raise JobError("give at least one --input (vectors) or --images (raw photos) prefix")
    spark = get_spark("fruits-pca", master=args.master, s3_endpoint=args.endpoint_url)
    cfg = JobConfig(inputs=[_uri(u) for u in args.input], output=_uri(args.output), k=args.k,
                    variance=args.variance, solver=args.solver, label_col=args.label_col,
                    model_sha256=args.model_sha256, skip_bad_files=args.skip_bad_files, run_id=args.run_id,
                    plots=not args.no_plots, images=[_uri(u) for u in args.images],
                    model_path=_uri(args.model) if args.model else (default_model() if args.images else None))
    say = (lambda stage: None) if args.quiet else (lambda stage: print(f"[pca] {stage}", file=sys.stderr, flush=True))
    result = run(spark, cfg, progress=say)
    s = result.summary
    print(f"run: {result.run_uri}")
    print(f"rows in {s['rows_in']} = projected {s['projected']} + rejected {s['rejected']} + "
          f"duplicates {s['duplicates']}; k={s['k']} ({s['k_reason']})")
    if s.get("photos"):
        p = s["photos"]
        print(f"photos featurized: {p['ok']} ok, {p['rejected']} rejected, {p['not_image']} non-image files skipped")
    print(json.dumps(s["timings_s"]))
    return 0


def cmd_featurize(args) -> int:
    import time

    from cloud_pca.featurize import featurize, write_featurized
    from cloud_pca.spark import get_spark

    spark = get_spark("fruits-featurize", master=args.master, s3_endpoint=args.endpoint_url)
    start = time.perf_counter()
    if not args.quiet:
        print(f"[featurize] photos under {', '.join(args.images)}", file=sys.stderr, flush=True)
    feat = featurize(spark, [_uri(u) for u in args.images], model_path=_uri(args.model) if args.model
                     else default_model(), threads=args.threads, batch_rows=args.batch_rows)
    mode = "overwrite" if args.overwrite else "errorifexists"
    try:
        uri = write_featurized(feat, _uri(args.output), mode=mode)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise JobError(f"cannot write the vectors under {args.output}: {first} (use --overwrite to replace)") from None
    rejects_uri = uri.rsplit("/vectors/", 1)[0] + "/rejects/featurize-" + feat.model_sha256[:12]
    if feat.counts["rejected"]:
        feat.rejects.write.mode("overwrite").parquet(rejects_uri)
    c = feat.counts
    seconds = time.perf_counter() - start
    print(f"vectors: {uri}")
    print(f"{c['ok']} vectorized, {c['rejected']} rejected" + (f" (see {rejects_uri})" if c["rejected"] else "")
          + f", {c['not_image']} non-image files skipped; {c['photos'] / seconds:.0f} photos/s")
    feat.unpersist()
    return 3 if c["rejected"] else 0


COMMANDS = {"pca": cmd_pca, "featurize": cmd_featurize, "publish": cmd_publish, "evaluate": cmd_evaluate,
            "emr": cmd_emr}


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors that are the user's to fix: one line, exit 1. ``bootstrap`` is not shipped to the EMR nodes."""
    from cloud_pca.evaluate import EvaluateError

    errors: list[type[Exception]] = [JobError, PCAInputError, FeaturizeError, EvaluateError]
    try:
        from bootstrap.emr import EMRError
        errors.append(EMRError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return COMMANDS[args.command](args)
    except _user_errors() as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:  # missing connector jars, Maven not found
        print(f"Error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
