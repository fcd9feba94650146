"""``fruits-cloud``: the job's commands (:mod:`cloud_pca.cli`) plus ``emr``, which plans, launches and follows
the job on AWS EMR. The ``emr`` group lives here, above the job: the EMR nodes run ``cloud_pca/cli.py``
alone and never import ``bootstrap``.

    fruits-cloud emr plan --bucket fruits-data --vectors 1000000      # changes nothing
    fruits-cloud emr launch --bucket fruits-data --images --publish 32
"""
from __future__ import annotations

import json
import os
import sys

from contract.errors import add_command, run_cli
from cloud_pca.cli import COMMANDS, build_parser


def add_emr_commands(sub) -> None:
    e = add_command(sub, "emr", help="run the job on AWS EMR: plan | launch | status | terminate",
                    description="A transient EMR 7.x cluster (Spark 3.5) whose steps are featurize (optional), PCA, "
                                "evaluate (optional) and publish (optional); it terminates itself when the steps end.",
                    example="fruits-cloud emr plan --bucket fruits-data --vectors 1000000")
    esub = e.add_subparsers(dest="emr_command", metavar="ACTION")
    for name, text, example in (
            ("plan", "print the run_job_flow request, the identity pool and the estimated cost; changes nothing",
             "fruits-cloud emr plan --bucket fruits-data --images --publish 32"),
            ("launch", "create roles, harden the bucket, upload code/model/bootstrap, start the cluster",
             "fruits-cloud emr launch --bucket fruits-data --core-nodes 2 --task-nodes 2")):
        a = add_command(esub, name, help=text, example=example)
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
        a.add_argument("--incremental", action="store_true",
                       help="the PCA step reads only objects not counted yet (the daily refresh; pca/state/)")
        a.add_argument("--publish", type=int, metavar="K", dest="publish_k",
                       help="add the publish step: a K-component projection + index under models/ for the devices")
        a.add_argument("--model", default="mobilenetv2_160_fp32.tflite", help="model file under models/")
        a.add_argument("--k", type=int, help="components (1-1280); default: --variance")
        a.add_argument("--variance", type=float, default=0.95)
        a.add_argument("--run-id")
        a.add_argument("--subnet-id")
        a.add_argument("--vectors", type=int, default=1_000_000, help="vectors to fit (for the cost estimate)")
        a.add_argument("--raw-photos", type=int, default=0, help="raw photos to featurize (cost estimate)")
        a.add_argument("--new-per-day", type=int, default=50_000,
                       help="new vectors a day, for the daily refresh's cost (full vs incremental)")
        a.add_argument("--hours", type=float, help="cluster wall time, if known (else estimated)")
        a.add_argument("--web-origin", action="append", default=[], dest="web_origins", metavar="URL",
                       help="where the phones' web app is served (https://...; repeat for several): adds the "
                            "bucket's CORS rule for it")
        a.add_argument("--profile")
    for name, text in (("status", "state of a cluster and its steps"), ("terminate", "terminate a cluster")):
        a = add_command(esub, name, help=text, example=f"fruits-cloud emr {name} j-XXXXXXXXXXXX --region eu-west-3")
        a.add_argument("cluster_id")
        a.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-3"))
        a.add_argument("--profile")


def spec_from_args(args):
    from bootstrap.emr import ClusterSpec

    spec = ClusterSpec(bucket=args.bucket, prefix=args.prefix, region=args.region, release=args.release,
                       instance_type=args.instance_type, core_nodes=args.core_nodes, task_nodes=args.task_nodes,
                       idle_timeout_s=args.idle_timeout, images=args.images, model=args.model, k=args.k,
                       variance=args.variance, subnet_id=args.subnet_id, evaluate=args.evaluate,
                       publish_k=args.publish_k, incremental=args.incremental, web_origins=args.web_origins)
    if args.run_id:
        spec.run_id = args.run_id
    return spec


def _session(args):
    import boto3

    return boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()


def cmd_emr(args) -> int:
    from bootstrap import emr

    if not getattr(args, "emr_command", None):
        raise emr.EMRError("give an action: plan, launch, status or terminate")
    if args.emr_command == "plan":
        print(emr.plan_text(spec_from_args(args), vectors=args.vectors, raw_photos=args.raw_photos, hours=args.hours,
                            new_per_day=args.new_per_day))
        return 0
    if args.emr_command == "launch":
        say = (lambda m: None) if args.quiet else (lambda m: print(f"[emr] {m}", file=sys.stderr, flush=True))
        out = emr.launch(spec_from_args(args), session=_session(args), say=say)
        print(f"cluster: {out['cluster_id']}")
        print(f"follow it: fruits-cloud emr status {out['cluster_id']} --region {args.region}")
        print(f"devices: fruits-edge sync PHOTOS s3://{args.bucket}/{args.prefix} --identity-pool {out['identity_pool']}")
        print(f"phones (the web app's config.json): {json.dumps(out['web_config'])}")
        return 0
    client = _session(args).client("emr", region_name=args.region)
    if args.emr_command == "status":
        st = emr.status(client, args.cluster_id)
        print(f"{st['id']} {st['name']}: {st['state']}" + (f" ({st['reason']})" if st["reason"] else ""))
        for step in st["steps"]:
            print(f"  {step['state']:12s} {step['name']}")
        return 0
    emr.terminate(client, args.cluster_id)
    print(f"terminating {args.cluster_id}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(extend=add_emr_commands), {**COMMANDS, "emr": cmd_emr}, argv)


if __name__ == "__main__":
    sys.exit(main())
