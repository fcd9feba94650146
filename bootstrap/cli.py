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
from cloud_pca.cli import COMMANDS, build_parser, watched
from models import DEFAULT_MODEL


def add_emr_commands(sub) -> None:
    e = add_command(sub, "emr", help="run the job on AWS EMR: plan | launch | status | terminate",
                    description="A transient EMR 7.x cluster (Spark 3.5) whose steps are featurize (optional), PCA, "
                                "evaluate (optional) and publish (optional); it terminates itself when the steps end.",
                    example="fruits-cloud emr plan --bucket fruits-data --vectors 1000000")
    esub = e.add_subparsers(dest="emr_command", metavar="ACTION")
    add_serverless_commands(esub)
    for name, text, example in (
            ("plan", "print the run_job_flow request, the identity pool and the estimated cost; changes nothing",
             "fruits-cloud emr plan --bucket fruits-data --images --publish 32"),
            ("launch", "create roles, harden the bucket, upload code/model/bootstrap, start the cluster",
             "fruits-cloud emr launch --bucket fruits-data --core-nodes 2 --task-nodes 2")):
        a = add_command(esub, name, help=text, example=example)
        _job_options(a)
        a.add_argument("--instance-type", default="m5.xlarge")
        a.add_argument("--core-nodes", type=int, default=2, help="on-demand core nodes")
        a.add_argument("--task-nodes", type=int, default=2, help="spot task nodes")
        a.add_argument("--idle-timeout", type=int, default=3600, help="seconds idle before auto-termination")
        a.add_argument("--subnet-id")
        a.add_argument("--vectors", type=int, default=1_000_000, help="vectors to fit (for the cost estimate)")
        a.add_argument("--raw-photos", type=int, default=0, help="raw photos to featurize (cost estimate)")
        a.add_argument("--hours", type=float, help="cluster wall time, if known (else estimated)")
    for name, text in (("status", "state of a cluster and its steps"), ("terminate", "terminate a cluster")):
        a = add_command(esub, name, help=text, example=f"fruits-cloud emr {name} j-XXXXXXXXXXXX --region eu-west-3")
        a.add_argument("cluster_id")
        a.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-3"))
        a.add_argument("--profile")


def _job_options(a) -> None:
    """What both backends take: where the data is, which jobs the chain holds, and the fit's request."""
    a.add_argument("--bucket", required=True)
    a.add_argument("--prefix", default="fruits", help="dataset root in the bucket (default fruits)")
    a.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-3"))
    a.add_argument("--release", default="emr-7.5.0", help="EMR 7.x release (Spark 3.5)")
    a.add_argument("--images", action="store_true", help="add the featurize step for raw/ photos")
    a.add_argument("--evaluate", action="store_true", help="add the evaluate step (accuracy vs bytes per image)")
    a.add_argument("--incremental", action="store_true",
                   help="the daily refresh: featurize and PCA read only what they have not counted yet")
    a.add_argument("--publish", type=int, metavar="K", dest="publish_k",
                   help="add the publish step: a K-component projection + index under models/ for the devices")
    a.add_argument("--model", default=DEFAULT_MODEL, help=f"model file under models/ (default {DEFAULT_MODEL})")
    a.add_argument("--k", type=int, help="components (1-1280); default: --variance")
    a.add_argument("--variance", type=float, default=0.95)
    a.add_argument("--run-id")
    a.add_argument("--new-per-day", type=int, default=50_000,
                   help="new vectors a day, for the daily refresh's cost (full vs incremental)")
    a.add_argument("--web-origin", action="append", default=[], dest="web_origins", metavar="URL",
                   help="where the phones' web app is served (https://...; repeat for several): adds the "
                        "bucket's CORS rule for it")
    a.add_argument("--profile")


def add_serverless_commands(esub) -> None:
    s = add_command(esub, "serverless", help="the same job chain on EMR Serverless: plan | launch | schedule | "
                                             "unschedule | status",
                    description="An EMR Serverless application (EMR 7.x, Spark 3.5, a custom image with Python 3.11) "
                                "runs the chain's jobs as job runs, one after another; a daily schedule "
                                "(EventBridge Scheduler -> Step Functions) runs the incremental refresh.",
                    example="fruits-cloud emr serverless schedule --bucket fruits-data --images --incremental "
                            "--publish 32 --image-uri 123456789012.dkr.ecr.eu-west-3.amazonaws.com/fruits:emr-7.5.0 "
                            "--daily 03:00")
    ssub = s.add_subparsers(dest="serverless_command", metavar="ACTION")
    for name, text in (("plan", "print the application, job runs, roles, schedule and the cost; changes nothing"),
                       ("launch", "create the application and job role, upload the code, run the chain once and follow it"),
                       ("schedule", "run the chain every day at --daily HH:MM (UTC)"),
                       ("unschedule", "remove the daily schedule, its state machine and their roles")):
        a = add_command(ssub, name, help=text, example=f"fruits-cloud emr serverless {name} --bucket fruits-data")
        _job_options(a)
        a.add_argument("--image-uri", help="the custom image in ECR (bootstrap/emr-serverless.Dockerfile)")
        a.add_argument("--daily", metavar="HH:MM", help="time of day (UTC) of the daily refresh")
        a.add_argument("--poll", type=float, default=20.0, help="seconds between job run checks (launch)")
    a = add_command(ssub, "status", help="the job runs of the application (and what a run set aside)",
                    example="fruits-cloud emr serverless status --application-id 00fabc... --bucket fruits-data "
                            "--run-id 20261202T030000Z-1a2b3c")
    a.add_argument("--application-id", required=True)
    a.add_argument("--job-run-id")
    a.add_argument("--bucket", help="with --run-id: list what the run's trust model set aside (from its summary)")
    a.add_argument("--prefix", default="fruits")
    a.add_argument("--run-id", help="a run of the chain (its pca/run=<id>/summary.json)")
    a.add_argument("--region", default=os.environ.get("AWS_REGION", "eu-west-3"))
    a.add_argument("--profile")


def check_numbers(args) -> None:
    """The numeric options' ranges, before anything is estimated or created (a negative count printed a cost)."""
    from bootstrap.emr import EMRError

    rules = (("new_per_day", "--new-per-day", 0, None), ("vectors", "--vectors", 1, None),
             ("raw_photos", "--raw-photos", 0, None), ("hours", "--hours", 1e-9, None), ("poll", "--poll", 1.0, 3600),
             ("publish_k", "--publish", 1, 1280), ("k", "--k", 1, 1280), ("variance", "--variance", 1e-9, 1.0),
             ("core_nodes", "--core-nodes", 1, 1000), ("task_nodes", "--task-nodes", 0, 1000),
             ("idle_timeout", "--idle-timeout", 60, 7 * 24 * 3600))
    for attr, flag, low, high in rules:
        value = getattr(args, attr, None)
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            bounds = f"at least {low:g}" if high is None else f"between {low:g} and {high:g}"
            raise EMRError(f"{flag}={value:g} must be {bounds}")


def cmd_serverless(args) -> int:
    from bootstrap import emr, serverless

    action = getattr(args, "serverless_command", None)
    if not action:
        raise emr.EMRError("give an action: plan, launch, schedule, unschedule or status")
    check_numbers(args)
    say = (lambda m: None) if args.quiet else (lambda m: print(f"[emr-serverless] {m}", file=sys.stderr, flush=True))
    if action == "status":
        client = _session(args).client("emr-serverless", region_name=args.region)
        for r in serverless.status(client, args.application_id, args.job_run_id):
            print(f"{r['id']} {r['state']:10s} {r['name']}" + (f" ({r['details']})" if r["details"] else ""))
        if args.bucket and args.run_id:
            s3 = _session(args).client("s3", region_name=args.region)
            for line in serverless.set_aside(s3, args.bucket, args.prefix, args.run_id):
                print(line)
        return 0
    spec = spec_from_args(args)
    spec.image_uri = args.image_uri
    if action == "plan":
        print(serverless.plan_text(spec, daily=args.daily, new_per_day=args.new_per_day))
        return 0
    if action == "launch":
        out = serverless.launch(spec, session=_session(args), say=say, poll_s=args.poll)
        for r in out["job_runs"]:
            print(f"{r['job_run_id']} {r['state']:8s} {r['name']}")
        print(f"the chain succeeded on application {out['application_id']}; the run's report: "
              f"s3://{args.bucket}/{args.prefix}/pca/run={spec.run_id}/report.html")
        return 0
    if action == "schedule":
        if not args.daily:
            raise emr.EMRError("schedule needs --daily HH:MM (UTC)")
        out = serverless.schedule(spec, session=_session(args), daily=args.daily, say=say)
        print(f"daily at {args.daily} UTC ({out['schedule']}): {out['state_machine_arn']} on application "
              f"{out['application_id']}")
        return 0
    serverless.unschedule(spec, session=_session(args), say=print)
    return 0


def spec_from_args(args):
    from bootstrap.emr import ClusterSpec

    cluster = {k: getattr(args, k) for k in ("instance_type", "core_nodes", "task_nodes", "subnet_id")
               if getattr(args, k, None) is not None}
    if getattr(args, "idle_timeout", None) is not None:
        cluster["idle_timeout_s"] = args.idle_timeout
    spec = ClusterSpec(bucket=args.bucket, prefix=args.prefix, region=args.region, release=args.release,
                       images=args.images, model=args.model, k=args.k, variance=args.variance, evaluate=args.evaluate,
                       publish_k=args.publish_k, incremental=args.incremental, web_origins=args.web_origins, **cluster)
    if args.run_id:
        spec.run_id = args.run_id
    return spec


def _session(args):
    import boto3

    return boto3.Session(profile_name=args.profile) if args.profile else boto3.Session()


def cmd_emr(args) -> int:
    from bootstrap import emr, serverless

    if not getattr(args, "emr_command", None):
        raise emr.EMRError("give an action: plan, launch, status, terminate or serverless")
    if args.emr_command == "serverless":
        return cmd_serverless(args)
    check_numbers(args)
    if args.emr_command == "plan":
        spec = spec_from_args(args)
        print(emr.plan_text(spec, vectors=args.vectors, raw_photos=args.raw_photos, hours=args.hours,
                            new_per_day=args.new_per_day))
        # the daily refresh on this transient cluster and on EMR Serverless, side by side (ESTIMATED)
        print("\n" + "\n".join(serverless.cost_lines(spec, new_per_day=args.new_per_day)))
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
    commands = {**{name: watched(fn) for name, fn in COMMANDS.items()}, "emr": cmd_emr}
    return run_cli(build_parser(extend=add_emr_commands), commands, argv)


if __name__ == "__main__":
    sys.exit(main())
