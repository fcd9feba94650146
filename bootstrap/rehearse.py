"""Rehearse the EMR steps, or the EMR Serverless job runs, on a local Spark standalone cluster: the command lines
of :func:`bootstrap.emr.build_request` (or the ``start_job_run`` requests of :func:`bootstrap.serverless.job_runs`,
as ``spark-submit SPARK_SUBMIT_PARAMETERS ENTRY_POINT ENTRY_POINT_ARGUMENTS``) as they are, with only the
substitutions a local cluster needs.

- ``s3://`` -> ``s3a://`` (EMRFS is EMR's; locally Hadoop's S3A, pointed at ``endpoint_url``);
- ``--deploy-mode cluster`` -> ``client`` (a standalone cluster has no cluster mode for Python);
- the code zip and the entry script are the bytes :func:`bootstrap.emr.uploads` ships, written to local
  files (spark-submit in client mode reads them locally); everything ``uploads()`` puts in the bucket is put
  in the (local) bucket too, as ``launch`` does;
- the nodes' Python (``/usr/bin/python3.11``) -> this interpreter; the request's ``spark-defaults``
  classification becomes ``--conf`` (EMR applies it cluster-wide); the S3 connector jars go in ``--jars``.

Nothing else is tuned: the steps run with Spark's defaults (200 shuffle partitions, 1 GiB driver and
executors, 1 GiB ``maxResultSize``), as on EMR.
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from contract import layout
from contract.errors import FruitsError
from bootstrap.emr import NODE_PYTHON, ClusterSpec, build_request, uploads


class RehearsalError(FruitsError, RuntimeError):
    """A step failed; the message names it and ends with the tail of its output."""


@dataclass
class StepRun:
    name: str
    argv: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str


@dataclass
class Rehearsal:
    """What :func:`rehearse` ran, step by step."""

    steps: list[StepRun] = field(default_factory=list)


def local_argv(args: list[str], *, code_dir: Path, spec: ClusterSpec) -> list[str]:
    """One step's ``spark-submit`` arguments, with the local substitutions (see the module docstring)."""
    remote = {spec.uri(layout.code_key(spec.prefix, name)): str(code_dir / name)
              for name in (layout.CODE_ZIP, layout.ENTRY_SCRIPT)}
    out = []
    for a in args:
        if a in remote:
            out.append(remote[a])
        elif a.startswith("s3://"):
            out.append("s3a://" + a[len("s3://"):])
        elif a == "cluster" and out and out[-1] == "--deploy-mode":
            out.append("client")
        elif a.endswith(f"PYSPARK_PYTHON={NODE_PYTHON}"):
            out.append(a[: -len(NODE_PYTHON)] + sys.executable)
        else:
            out.append(a)
    return out


def cluster_conf(request: dict) -> dict[str, str]:
    """The request's ``spark-defaults`` classification (what EMR writes into spark-defaults.conf)."""
    conf = {}
    for c in request.get("Configurations", []):
        if c.get("Classification") == "spark-defaults":
            conf.update(c.get("Properties", {}))
    return conf


def rehearse(spec: ClusterSpec, *, master: str, endpoint_url: str, s3_client=None, conf: dict | None = None,
             workdir: Path | None = None, timeout: float = 1800, env: dict | None = None,
             say=lambda msg: None) -> Rehearsal:
    """Run every step of ``build_request(spec)`` with ``spark-submit --master MASTER``, in order; raise
    :class:`RehearsalError` at the first failing step (as ``ActionOnFailure=TERMINATE_CLUSTER`` would stop).

    ``conf``: extra ``--conf`` settings on top of the cluster's (e.g. to test more shuffle partitions).
    ``s3_client``: a boto3 client on ``endpoint_url``; when given, what ``launch`` uploads is put in the bucket.
    """
    request = build_request(spec)
    steps = []
    for step in request["Steps"]:
        args = step["HadoopJarStep"]["Args"]
        if args[0] != "spark-submit":
            raise RehearsalError(f"step {step['Name']!r} is not a spark-submit step: {args[:3]}")
        steps.append((step["Name"], args))
    return _run(spec, steps, {**cluster_conf(request), **(conf or {})}, master=master, endpoint_url=endpoint_url,
                s3_client=s3_client, workdir=workdir, timeout=timeout, env=env, say=say)


def rehearse_job_runs(spec: ClusterSpec, *, master: str, endpoint_url: str, s3_client=None, conf: dict | None = None,
                      workdir: Path | None = None, timeout: float = 1800, env: dict | None = None,
                      say=lambda msg: None) -> Rehearsal:
    """Run the EMR Serverless chain's job runs (:func:`bootstrap.serverless.job_runs`) in order, each as the
    ``spark-submit`` EMR Serverless makes of it: its parameters, its entry point, its arguments."""
    import shlex

    from bootstrap.serverless import job_runs

    steps = []
    for run in job_runs(spec, "local-application", "arn:aws:iam::000000000000:role/local"):
        driver = run["jobDriver"]["sparkSubmit"]
        steps.append((run["name"], ["spark-submit", *shlex.split(driver["sparkSubmitParameters"]), driver["entryPoint"],
                                    *driver["entryPointArguments"]]))
    return _run(spec, steps, dict(conf or {}), master=master, endpoint_url=endpoint_url, s3_client=s3_client,
                workdir=workdir, timeout=timeout, env=env, say=say)


def _run(spec: ClusterSpec, steps: list[tuple[str, list[str]]], conf: dict, *, master: str, endpoint_url: str,
         s3_client, workdir, timeout: float, env, say) -> Rehearsal:
    from cloud_pca.connector import connector_jars
    from cloud_pca.spark import s3a_conf
    from cloud_pca.standalone import loopback_env, run_group, spark_home

    files = uploads(spec)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fruits-rehearsal-"))
    code_dir = workdir / "code"
    code_dir.mkdir(parents=True, exist_ok=True)
    for key, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        if key.startswith(layout.folder(spec.prefix, "code")):
            (code_dir / key.rsplit("/", 1)[1]).write_bytes(data)
        if s3_client is not None:
            s3_client.put_object(Bucket=spec.bucket, Key=key, Body=data)
    settings = {**s3a_conf(endpoint_url), **conf}
    jars = ",".join(str(p) for p in connector_jars())
    environment = loopback_env(env)
    environment.update({"PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable})
    environment.pop("PYSPARK_GATEWAY_PORT", None)
    environment.pop("PYSPARK_GATEWAY_SECRET", None)
    done = Rehearsal()
    for name, args in steps:
        argv = local_argv(args, code_dir=code_dir, spec=spec)
        head = [str(spark_home() / "bin" / "spark-submit"), "--master", master, "--jars", jars]
        for key, value in settings.items():
            head += ["--conf", f"{key}={value}"]
        full = head + argv[1:]
        say(f"step {name}")
        start = time.perf_counter()
        try:
            proc = run_group(full, timeout=timeout, env=environment, cwd=workdir)
        except subprocess.TimeoutExpired:
            raise RehearsalError(f"step {name!r} did not finish within {timeout:.0f} s (its processes were "
                                 f"stopped)") from None
        run = StepRun(name, full, proc.returncode, time.perf_counter() - start, proc.stdout, proc.stderr)
        done.steps.append(run)
        if proc.returncode != 0:
            lines = ((proc.stdout or "") + "\n" + (proc.stderr or "")).strip().splitlines()
            said = [line for line in lines if " INFO " not in line and " WARN " not in line]   # Spark's own log
            tail = "\n".join((said or lines)[-25:])
            raise RehearsalError(f"step {name!r} failed with exit code {proc.returncode} after "
                                 f"{run.seconds:.0f} s:\n{tail}")
    return done


if __name__ == "__main__":  # pragma: no cover - a thin wrapper for manual rehearsals
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--prefix", default="fruits")
    ap.add_argument("--master", required=True)
    ap.add_argument("--endpoint-url", required=True)
    ap.add_argument("--images", action="store_true")
    ap.add_argument("--run-id", default="rehearsal")
    ap.add_argument("--conf", action="append", default=[], help="KEY=VALUE, repeatable")
    a = ap.parse_args()
    extra = dict(kv.split("=", 1) for kv in a.conf)
    try:
        r = rehearse(ClusterSpec(bucket=a.bucket, prefix=a.prefix, images=a.images, run_id=a.run_id),
                     master=a.master, endpoint_url=a.endpoint_url, conf=extra, say=print)
    except RehearsalError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(1)
    for s in r.steps:
        print(f"{s.name}: {s.seconds:.1f} s\n{s.stdout.strip()}")
    sys.exit(0)
