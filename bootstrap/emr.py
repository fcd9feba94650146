"""The Fruits! job on AWS EMR: a transient cluster whose steps are (optional) featurization and PCA.

``plan`` builds the exact ``run_job_flow`` request and a cost estimate and changes nothing; ``launch``
checks everything first, then creates the IAM roles (least privilege, :mod:`bootstrap.policies`), hardens
the bucket, uploads the code, model and bootstrap action, and starts the cluster; if any of that fails it
removes what it created and says so. The cluster terminates itself when its last step ends or fails
(``KeepJobFlowAliveWhenNoSteps=False``, steps with ``TERMINATE_CLUSTER``); an idle timeout is a backstop.

S3 layout under ``s3://BUCKET/PREFIX/``: ``code/`` (job zip + entry script), ``models/`` (.tflite + card),
``bootstrap/`` (script + pinned requirements), ``vectors/`` and ``raw/`` (inputs), ``pca/`` (outputs),
``logs/`` (EMR logs).
"""
from __future__ import annotations

import io
import json
import math
import re
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from contract import layout
from contract.errors import FruitsError
from bootstrap.policies import (MULTIPART_DAYS, POOL_PLACEHOLDER, PolicyError, bucket_cors, bucket_settings,
                                check_bucket_name, merge_cors, merge_statements, policy_documents)
from cloud_pca.spark import CLUSTER_DEFAULTS
from models import DEFAULT_MODEL

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PRICES = HERE / "prices.json"
BOOTSTRAP_SCRIPT = HERE / "emr-bootstrap.sh"
REQUIREMENTS = HERE / "requirements-emr.txt"
NODE_PYTHON = "/usr/bin/python3.11"
CODE_PACKAGES = ("contract", "featurizer", "cloud_pca")   # the job's imports: no edge_client, no models
DEFAULT_RELEASE = "emr-7.5.0"          # Spark 3.5.2
DEFAULT_REGION = "eu-west-3"
ROLE_SERVICE = "fruits-emr-service-role"
ROLE_INSTANCE = "fruits-emr-instance-role"
INSTANCE_PROFILE = "fruits-emr-instance-profile"
ROLE_DEVICE = "fruits-device-role"
DEVICE_POLICY = "fruits-device-writes-own-prefix"
IDENTITY_POOL = "fruits_devices"
SERVICE_POLICY_ARN = "arn:aws:iam::aws:policy/service-role/AmazonEMRServicePolicy_v2"
_REGION_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")

# Throughput assumptions for the time estimate, per vCPU, from benchmarks on the 2-core dev machine
# (out/benchmarks/featurize.csv, pca.csv); override with --hours when you know better.
FEATURIZE_IMAGES_PER_VCPU_S = 90.0
PCA_VECTORS_PER_VCPU_S = 3000.0
SETUP_HOURS = 0.25                     # provisioning + bootstrap (~10-15 min on EMR)
# The incremental refresh (cloud_pca.incremental): the new vectors at the PCA rate, plus a scan of the counted
# image ids (one column, ~64 B each) and a fixed solve-and-write (eigh of 1280x1280, model, plots: ~6 s on the
# dev machine's 2 cores, bench incremental; its time did not grow measurably from 50k to 200k counted rows).
# The id scan alone measured ~4.5M ids/s per core from local files (bench incremental: 1M ids 0.43 s, 4M ids
# 0.76 s on 2 cores); S3 reads are slower, so the rate below is a conservative bound, 1/9 of that.
ID_SCAN_PER_VCPU_S = 500_000.0
REFRESH_FIXED_HOURS = 12 / 3600


class EMRError(FruitsError, ValueError):
    """A request that cannot be planned or launched; the message says what to fix."""


def load_prices(path: Path = PRICES) -> dict:
    return json.loads(path.read_text())


@dataclass
class ClusterSpec:
    bucket: str
    prefix: str = "fruits"
    region: str = DEFAULT_REGION
    release: str = DEFAULT_RELEASE
    instance_type: str = "m5.xlarge"
    core_nodes: int = 2
    task_nodes: int = 2
    idle_timeout_s: int = 3600
    images: bool = False                 # add the featurize step for raw/
    model: str = DEFAULT_MODEL
    k: int | None = None
    variance: float = 0.95
    run_id: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ"))
    subnet_id: str | None = None
    evaluate: bool = False               # add the evaluate step (accuracy vs bytes per image)
    incremental: bool = False            # the PCA step counts only new objects (pca/state/); see cloud_pca.incremental
    publish_k: int | None = None         # add the publish step: projection + index with this many components
    web_origins: list[str] = field(default_factory=list)   # where the phones' web app is served (bucket CORS rule)
    image_uri: str | None = None         # EMR Serverless: the custom image (bootstrap/emr-serverless.Dockerfile)

    def uri(self, key: str = "") -> str:
        """``s3://BUCKET/KEY``; keys come from :mod:`contract.layout` (``layout.folder(spec.prefix, "raw")``)."""
        return layout.s3_uri(self.bucket, key or layout.check_root(self.prefix))


def validate(spec: ClusterSpec, prices: dict | None = None) -> None:
    """Every check that can be made without AWS; raises :class:`EMRError` with one line."""
    prices = prices or load_prices()
    try:
        check_bucket_name(spec.bucket)
    except PolicyError as exc:
        raise EMRError(str(exc)) from None
    if not _REGION_RE.match(spec.region or ""):
        raise EMRError(f"region {spec.region!r} is not an AWS region name (like eu-west-3 or us-east-1)")
    m = re.fullmatch(r"emr-(\d+)\.(\d+)\.(\d+)", spec.release or "")
    if not m:
        raise EMRError(f"release {spec.release!r} is not an EMR release label (like {DEFAULT_RELEASE})")
    if int(m.group(1)) != 7:
        raise EMRError(f"release {spec.release} does not ship Spark 3.5: the job needs an EMR 7.x release "
                       f"(e.g. {DEFAULT_RELEASE}), whose Spark is 3.5")
    known = prices["ec2_on_demand_per_hour"]
    if spec.instance_type not in known:
        raise EMRError(f"instance type {spec.instance_type!r} is unknown here; known: {', '.join(sorted(known))} "
                       f"(add its prices to bootstrap/prices.json)")
    if spec.region not in known[spec.instance_type]:
        regions = sorted(r for r in known[spec.instance_type] if r != "source")
        raise EMRError(f"no price for {spec.instance_type} in {spec.region}; priced regions: {', '.join(regions)}")
    if spec.core_nodes < 1 or spec.task_nodes < 0:
        raise EMRError(f"core nodes must be >= 1 and task nodes >= 0 (got {spec.core_nodes}, {spec.task_nodes})")
    if not 60 <= spec.idle_timeout_s <= 7 * 24 * 3600:
        raise EMRError(f"idle timeout {spec.idle_timeout_s}s must be between 60 s and 7 days")
    if not spec.model.endswith(".tflite"):
        raise EMRError(f"model {spec.model!r}: expected a .tflite file name under models/")
    from cloud_pca.pca import check_request

    try:  # names that become keys, and the fit request, before anything is created
        layout.check_root(spec.prefix)
        layout.check_run_id(spec.run_id)
        layout.model_key(spec.prefix, spec.model)
        check_request(k=spec.k, variance=None if spec.k is not None else spec.variance)
    except FruitsError as exc:
        raise EMRError(str(exc)) from None
    if spec.publish_k is not None and not 1 <= spec.publish_k <= 1280:
        raise EMRError(f"publish k={spec.publish_k} must be between 1 and 1280")
    if spec.web_origins:
        try:
            bucket_cors(spec.web_origins)
        except PolicyError as exc:
            raise EMRError(str(exc)) from None


@dataclass(frozen=True)
class JobStep:
    """One job of the chain: its name and ``fruits-cloud``'s command line (what follows the entry script). The
    cluster's steps (:func:`build_request`) and EMR Serverless's job runs (:mod:`bootstrap.serverless`) are both
    made from :func:`job_chain`, so the two backends run exactly the same jobs."""

    name: str
    args: tuple[str, ...]

    @property
    def may_hold(self) -> bool:
        """The publish step: it exits with :data:`contract.errors.EXIT_HELD` when the operator must look first; the
        report after it still runs (it shows why), then the chain ends failed, saying so."""
        return self.args[:1] == ("publish",)


def model_sha256(name: str) -> str:
    """The fingerprint of the committed model ``name`` (from its card, ``models/<name>.json``)."""
    from models import model_path

    card = model_path(name).with_suffix(".json")
    try:
        return json.loads(card.read_text())["sha256"]
    except (OSError, ValueError, KeyError) as exc:
        raise EMRError(f"model {name!r}: its card {card} cannot be read ({exc}); expected a committed model") from None


def job_chain(spec: ClusterSpec) -> list[JobStep]:
    """featurize (with ``images``) -> pca -> evaluate (with ``evaluate``) -> publish (with ``publish_k``) -> report.

    With ``incremental`` the chain is the daily refresh: featurize reads only photos not featurized before and
    appends their vectors under ``pca/featurized/incremental/`` (a folder of its own, kept across runs), and the
    pca step counts only objects not counted yet."""
    root = spec.prefix
    model_uri = spec.uri(layout.model_key(root, spec.model))
    featurized = spec.uri(layout.featurized_prefix(root, "incremental" if spec.incremental else spec.run_id)).rstrip("/")
    vectors, raw = spec.uri(layout.vectors_prefix(root)), spec.uri(layout.raw_prefix(root))
    run_uri = spec.uri(layout.run_prefix(root, spec.run_id)).rstrip("/")
    # The launch's model only: a bucket moving to another model holds both models' vectors, which share no PCA.
    only = ["--model-sha256", model_sha256(spec.model)]
    chain = []
    if spec.images:
        chain.append(JobStep("fruits: featurize raw photos", (
            "featurize", "--images", raw, "--output", featurized, "--model", model_uri,
            *(["--incremental"] if spec.incremental else []))))
    inputs = ["--input", vectors] + (["--input", featurized + "/vectors/"] if spec.images else [])
    pca = ["pca", *inputs, *only, "--output", spec.uri(layout.pca_prefix(root)), "--run-id", spec.run_id]
    pca += ["--k", str(spec.k)] if spec.k is not None else ["--variance", str(spec.variance)]
    if spec.incremental:   # publishing needs every row projected with the new model
        pca += ["--incremental"] + (["--reproject"] if spec.publish_k else [])
    chain.append(JobStep("fruits: StandardScaler + PCA", tuple(pca)))
    if spec.evaluate:
        chain.append(JobStep("fruits: evaluate (accuracy vs bytes per image)",
                             ("evaluate", *inputs, *only, "--output", run_uri + "/evaluation")))
    if spec.publish_k:
        chain.append(JobStep("fruits: publish projection + index for the devices",
                             ("publish", "--run", run_uri, "--root", spec.uri(), "--k", str(spec.publish_k))))
    # Last: the run's report next to it (it also shows evaluate's and publish's results).
    chain.append(JobStep("fruits: report", ("report", "--run", run_uri)))
    return chain


def _spark_submit(spec: ClusterSpec, args: list[str]) -> list[str]:
    return ["spark-submit", "--deploy-mode", "cluster",
            "--py-files", spec.uri(layout.code_key(spec.prefix, layout.CODE_ZIP)),
            "--conf", f"spark.yarn.appMasterEnv.PYSPARK_PYTHON={NODE_PYTHON}",
            "--conf", f"spark.executorEnv.PYSPARK_PYTHON={NODE_PYTHON}",
            spec.uri(layout.code_key(spec.prefix, layout.ENTRY_SCRIPT)), *args]


def build_request(spec: ClusterSpec) -> dict:
    """The exact ``run_job_flow`` request for ``spec``."""
    root = spec.prefix
    # A held publish fails its step but the report still runs (CONTINUE): the step list shows publish FAILED, its
    # stderr says HELD, and the report shows why.
    steps = [{"Name": step.name, "ActionOnFailure": "CONTINUE" if step.may_hold else "TERMINATE_CLUSTER",
              "HadoopJarStep": {"Jar": "command-runner.jar", "Args": _spark_submit(spec, list(step.args))}}
             for step in job_chain(spec)]
    groups = [
        {"Name": "master", "InstanceRole": "MASTER", "Market": "ON_DEMAND", "InstanceType": spec.instance_type,
         "InstanceCount": 1},
        {"Name": "core", "InstanceRole": "CORE", "Market": "ON_DEMAND", "InstanceType": spec.instance_type,
         "InstanceCount": spec.core_nodes},
    ]
    if spec.task_nodes:
        groups.append({"Name": "task (spot)", "InstanceRole": "TASK", "Market": "SPOT",
                       "InstanceType": spec.instance_type, "InstanceCount": spec.task_nodes})
    instances: dict = {"InstanceGroups": groups, "KeepJobFlowAliveWhenNoSteps": False,
                       "TerminationProtected": False}
    if spec.subnet_id:
        instances["Ec2SubnetId"] = spec.subnet_id
    return {
        "Name": f"fruits-pca-{spec.run_id}",
        "ReleaseLabel": spec.release,
        "LogUri": spec.uri(layout.logs_prefix(root)),
        "Applications": [{"Name": "Spark"}],
        "Instances": instances,
        "Steps": steps,
        "BootstrapActions": [{"Name": "fruits: python3.11 + pinned libraries", "ScriptBootstrapAction": {
            "Path": spec.uri(layout.bootstrap_key(root, layout.BOOTSTRAP_SCRIPT)),
            "Args": [spec.uri(layout.bootstrap_key(root, layout.BOOTSTRAP_REQUIREMENTS))]}}],
        "Configurations": [
            {"Classification": "spark-env", "Configurations": [
                {"Classification": "export", "Properties": {"PYSPARK_PYTHON": NODE_PYTHON}}]},
            # The job's own settings (cloud_pca.spark.CLUSTER_DEFAULTS), as in local mode; nothing else is tuned.
            {"Classification": "spark-defaults", "Properties": dict(CLUSTER_DEFAULTS)},
        ],
        "AutoTerminationPolicy": {"IdleTimeout": spec.idle_timeout_s},
        "ServiceRole": ROLE_SERVICE,
        "JobFlowRole": INSTANCE_PROFILE,
        "VisibleToAllUsers": True,
        "Tags": [{"Key": "project", "Value": "fruits"}, {"Key": "run", "Value": spec.run_id}],
    }


def device_access(spec: ClusterSpec, pool_id: str = POOL_PLACEHOLDER) -> dict:
    """What ``launch`` creates for the devices: a Cognito identity pool (unauthenticated identities), its role
    and the role's policy (each device writes only under its own client= folder)."""
    docs = policy_documents(spec.bucket, spec.prefix, pool_id=pool_id)
    return {"IdentityPool": {"IdentityPoolName": IDENTITY_POOL, "AllowUnauthenticatedIdentities": True,
                             "Region": spec.region},
            "Role": {"RoleName": ROLE_DEVICE, "AssumeRolePolicyDocument": docs["device-trust"],
                     "Policy": {"PolicyName": DEVICE_POLICY, "PolicyDocument": docs["device-identity"]}},
            "Devices": f"fruits-edge sync PHOTOS {spec.uri()} --identity-pool <IdentityPoolId>"}


def refresh_hours(spec: ClusterSpec, *, vectors: int, new: int, incremental: bool, prices: dict | None = None) -> float:
    """Cluster hours of one refresh of ``vectors`` counted vectors plus ``new`` ones (a transient cluster)."""
    p = prices or load_prices()
    workers = (spec.core_nodes + spec.task_nodes) * p["instance_vcpus"][spec.instance_type]
    if not incremental:
        return SETUP_HOURS + (vectors + new) / (PCA_VECTORS_PER_VCPU_S * workers) / 3600
    return (SETUP_HOURS + REFRESH_FIXED_HOURS + new / (PCA_VECTORS_PER_VCPU_S * workers) / 3600
            + vectors / (ID_SCAN_PER_VCPU_S * workers) / 3600)


def refresh_lines(spec: ClusterSpec, *, new_per_day: int, sizes=(1_000_000, 100_000_000)) -> list[str]:
    """The daily refresh's cost at several sizes, full refit against incremental (estimates: the rates are
    the dev machine's, extrapolated to the cluster and to sizes not measured)."""
    lines = [f"daily refresh, {new_per_day} new vectors a day (ESTIMATED: dev-machine rates, extrapolated):"]
    for n in sizes:
        for mode in ("full", "incremental"):
            h = refresh_hours(spec, vectors=n, new=new_per_day, incremental=mode == "incremental")
            c = estimate_cost(spec, vectors=n, hours=h)
            lines.append(f"  {n:>11,d} vectors  {mode:11s}  {h:6.2f} h  ${c.ec2_on_demand + c.ec2_spot + c.emr_fee:8.2f} "
                         f"a day  (${30 * (c.ec2_on_demand + c.ec2_spot + c.emr_fee):8.2f} a month)")
    lines.append(f"  (each refresh on a transient cluster pays its {SETUP_HOURS} h setup; incremental: "
                 f"{PCA_VECTORS_PER_VCPU_S:.0f} new vectors/s and {ID_SCAN_PER_VCPU_S:.0f} counted ids/s per vCPU, "
                 f"+{REFRESH_FIXED_HOURS * 3600:.0f} s to solve and write)")
    return lines


def plan_text(spec: ClusterSpec, *, vectors: int, raw_photos: int = 0, hours: float | None = None,
              new_per_day: int = 50_000) -> str:
    """What ``fruits-cloud emr plan`` prints: the exact request, the devices' identity pool and role, the
    cost estimate, and the daily refresh's cost, full against incremental."""
    validate(spec)
    cost = estimate_cost(spec, vectors=vectors, raw_photos=raw_photos, hours=hours)
    web = ""
    if spec.web_origins:
        web = ("\n\nthe web app's bucket CORS rule (put by launch):\n" + json.dumps(bucket_cors(spec.web_origins), indent=2)
               + "\nthe web app's config.json (the pool id is known after launch):\n"
               + json.dumps(web_config(spec, POOL_PLACEHOLDER)))
    return (json.dumps(build_request(spec), indent=2)
            + "\n\ndevices' credentials (created by launch):\n" + json.dumps(device_access(spec), indent=2) + web
            + f"\n\ncost estimate for {vectors} vectors + {raw_photos} raw photos in {spec.region}:\n"
            + "\n".join(cost.lines()) + "\n\n" + "\n".join(refresh_lines(spec, new_per_day=new_per_day)))


@dataclass
class CostEstimate:
    hours: float
    nodes: dict
    ec2_on_demand: float
    ec2_spot: float
    emr_fee: float
    s3_requests: float
    s3_storage_month: float
    total: float
    assumptions: list[str]

    def lines(self) -> list[str]:
        return [f"estimated wall time {self.hours:.2f} h on {self.nodes}",
                f"  EC2 on demand (master + core)  ${self.ec2_on_demand:9.2f}",
                f"  EC2 spot (task)                ${self.ec2_spot:9.2f}",
                f"  EMR fee (all nodes)            ${self.emr_fee:9.2f}",
                f"  S3 requests                    ${self.s3_requests:9.2f}",
                f"  S3 storage (one month)         ${self.s3_storage_month:9.2f}",
                f"  total                          ${self.total:9.2f}",
                *(f"  assumption: {a}" for a in self.assumptions)]


def estimate_cost(spec: ClusterSpec, *, vectors: int, raw_photos: int = 0, hours: float | None = None,
                  raw_bytes_per_photo: int = 4000, vector_bytes: int = 3600, rows_per_object: int = 5000,
                  prices: dict | None = None) -> CostEstimate:
    """Instance-hours x price + EMR fee + S3 requests and storage, from the prices file."""
    p = prices or load_prices()
    it, region = spec.instance_type, spec.region
    vcpus = p["instance_vcpus"][it]
    workers = (spec.core_nodes + spec.task_nodes) * vcpus
    assumptions = []
    if hours is None:
        featurize_h = raw_photos / (FEATURIZE_IMAGES_PER_VCPU_S * workers) / 3600 if raw_photos else 0.0
        pca_h = (vectors + raw_photos) / (PCA_VECTORS_PER_VCPU_S * workers) / 3600
        hours = SETUP_HOURS + featurize_h + pca_h
        assumptions.append(f"{SETUP_HOURS} h setup; featurize {FEATURIZE_IMAGES_PER_VCPU_S:.0f} photos/s and PCA "
                           f"{PCA_VECTORS_PER_VCPU_S:.0f} vectors/s per vCPU (dev-machine benchmarks)")
    on_demand_nodes = 1 + spec.core_nodes
    ec2_od = on_demand_nodes * hours * p["ec2_on_demand_per_hour"][it][region]
    ec2_spot = spec.task_nodes * hours * p["ec2_spot_per_hour"][it][region]
    fee = (on_demand_nodes + spec.task_nodes) * hours * p["emr_fee_per_hour"][it][region]
    s3 = p["s3"]
    objects = math.ceil(vectors / rows_per_object) if vectors else 0
    gets = objects + raw_photos + 50                     # + code, model, bootstrap, footers
    puts = 200 + math.ceil((vectors + raw_photos) / 100_000)   # outputs, logs, plots
    requests = gets / 1000 * s3["get_per_1000"] + puts / 1000 * s3["put_per_1000"]
    stored_gb = (vectors * vector_bytes + raw_photos * raw_bytes_per_photo) / 1e9
    storage = stored_gb * s3["storage_per_gb_month"]
    assumptions.append(f"{vector_bytes} B per stored vector, {raw_bytes_per_photo} B per raw photo, "
                       f"{rows_per_object} vectors per object; S3 prices: {s3['source']}")
    total = ec2_od + ec2_spot + fee + requests + storage
    return CostEstimate(round(hours, 4), {"on_demand": on_demand_nodes, "spot": spec.task_nodes, "type": it},
                        ec2_od, ec2_spot, fee, requests, storage, total, assumptions)


# --------------------------------------------------------------------------------------- AWS operations
def code_zip() -> bytes:
    """The job's packages as a zip for ``--py-files`` (no tests, no models, no caches): their modules and the data
    files they read (``contract/unicode.json``: the label and catalog rules' Unicode table)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for package in CODE_PACKAGES:
            for path in sorted([*(ROOT / package).rglob("*.py"), *(ROOT / package).rglob("*.json")]):
                z.write(path, path.relative_to(ROOT).as_posix())
    return buf.getvalue()


CATALOG = ROOT / "data" / "catalog" / "catalog.json"


def uploads(spec: ClusterSpec, models_dir: Path | None = None) -> dict[str, bytes | Path]:
    """Key -> content (bytes or a local file) that ``launch`` puts in the bucket."""
    from models import model_path

    model = (models_dir / spec.model) if models_dir else model_path(spec.model)
    if not model.exists() or not model.with_suffix(".json").exists():
        raise EMRError(f"model {model} or its card {model.with_suffix('.json').name} is missing")
    root = spec.prefix
    return {
        layout.code_key(root, layout.CODE_ZIP): code_zip(),
        layout.code_key(root, layout.ENTRY_SCRIPT): (ROOT / "cloud_pca" / "cli.py"),
        layout.bootstrap_key(root, layout.BOOTSTRAP_SCRIPT): BOOTSTRAP_SCRIPT,
        layout.bootstrap_key(root, layout.BOOTSTRAP_REQUIREMENTS): REQUIREMENTS,
        layout.model_key(root, spec.model): model,
        layout.model_key(root, model.with_suffix(".json").name): model.with_suffix(".json"),
        layout.catalog_source_key(root): CATALOG,       # the operator's fruit catalog, which publish copies
    }


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def check_credentials(sts) -> str:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    try:
        return sts.get_caller_identity()["Arn"]
    except NoCredentialsError:
        raise EMRError("no AWS credentials found (set AWS_PROFILE / --profile, or AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY); nothing was created") from None
    except (ClientError, BotoCoreError) as exc:
        raise EMRError(f"AWS rejected the credentials ({_first_line(exc)}); nothing was created") from None


@dataclass
class Created:
    """What ``launch`` made, in order, so that a failure can undo it."""

    roles: list[str] = field(default_factory=list)
    role_policies: list[tuple[str, str]] = field(default_factory=list)
    instance_profiles: list[str] = field(default_factory=list)
    bucket: str | None = None
    keys: list[str] = field(default_factory=list)
    identity_pool: str | None = None
    cluster_id: str | None = None


def _ensure_roles(iam, spec: ClusterSpec, created: Created) -> None:
    docs = policy_documents(spec.bucket, spec.prefix)
    for role, trust in ((ROLE_SERVICE, "emr-service-trust"), (ROLE_INSTANCE, "emr-ec2-trust")):
        try:
            iam.get_role(RoleName=role)
        except iam.exceptions.NoSuchEntityException:
            iam.create_role(RoleName=role, AssumeRolePolicyDocument=json.dumps(docs[trust]),
                            Description="Fruits! EMR (least privilege, bootstrap/policies.py)",
                            Tags=[{"Key": "project", "Value": "fruits"}])
            created.roles.append(role)
    iam.attach_role_policy(RoleName=ROLE_SERVICE, PolicyArn=SERVICE_POLICY_ARN)
    iam.put_role_policy(RoleName=ROLE_INSTANCE, PolicyName="fruits-s3-least-privilege",
                        PolicyDocument=json.dumps(docs["emr-instance-profile"]))
    created.role_policies.append((ROLE_INSTANCE, "fruits-s3-least-privilege"))
    try:
        profile = iam.get_instance_profile(InstanceProfileName=INSTANCE_PROFILE)["InstanceProfile"]
    except iam.exceptions.NoSuchEntityException:
        profile = iam.create_instance_profile(InstanceProfileName=INSTANCE_PROFILE)["InstanceProfile"]
        created.instance_profiles.append(INSTANCE_PROFILE)
    if ROLE_INSTANCE not in [r["RoleName"] for r in profile.get("Roles", [])]:
        iam.add_role_to_instance_profile(InstanceProfileName=INSTANCE_PROFILE, RoleName=ROLE_INSTANCE)


def _ensure_device_access(iam, cognito, spec: ClusterSpec, created: Created) -> str:
    """The devices' identity pool (reused if one of that name exists) and role; returns the pool id."""
    pools = [p for p in cognito.list_identity_pools(MaxResults=60)["IdentityPools"]
             if p["IdentityPoolName"] == IDENTITY_POOL]
    if pools:
        pool_id = pools[0]["IdentityPoolId"]
    else:
        pool_id = cognito.create_identity_pool(IdentityPoolName=IDENTITY_POOL,
                                               AllowUnauthenticatedIdentities=True)["IdentityPoolId"]
        created.identity_pool = pool_id
    access = device_access(spec, pool_id)
    try:
        iam.get_role(RoleName=ROLE_DEVICE)
        iam.update_assume_role_policy(RoleName=ROLE_DEVICE, PolicyDocument=json.dumps(access["Role"]["AssumeRolePolicyDocument"]))
    except iam.exceptions.NoSuchEntityException:
        iam.create_role(RoleName=ROLE_DEVICE, AssumeRolePolicyDocument=json.dumps(access["Role"]["AssumeRolePolicyDocument"]),
                        Description="Fruits! devices: new objects under their own client= folder only",
                        Tags=[{"Key": "project", "Value": "fruits"}])
        created.roles.append(ROLE_DEVICE)
    iam.put_role_policy(RoleName=ROLE_DEVICE, PolicyName=DEVICE_POLICY,
                        PolicyDocument=json.dumps(access["Role"]["Policy"]["PolicyDocument"]))
    role_arn = iam.get_role(RoleName=ROLE_DEVICE)["Role"]["Arn"]
    cognito.set_identity_pool_roles(IdentityPoolId=pool_id, Roles={"unauthenticated": role_arn})
    return pool_id


def web_config(spec: ClusterSpec, pool_id: str) -> dict:
    """The web app's ``config.json`` for this bucket and pool (``./run web serve --config``, or next to the
    hosted app's files)."""
    return {"bucket": spec.bucket, "prefix": layout.check_root(spec.prefix), "region": spec.region,
            "identityPoolId": pool_id}


def harden_bucket(s3, bucket: str, prefix: str = "", web_origins=()) -> list[str]:
    """Block public access, encrypt at rest, owner-owned objects, the lifecycle rule and the bucket policy, and,
    with ``web_origins``, the CORS rule the phones' web app needs. The policy, the lifecycle rules and the CORS
    rules are merged with what the bucket already has (ours replace theirs by Sid / ID; the others are kept).
    Returns what was merged, one line each."""
    from botocore.exceptions import ClientError

    settings = bucket_settings()
    notes = []
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=settings["PublicAccessBlockConfiguration"])
    s3.put_bucket_encryption(Bucket=bucket,
                             ServerSideEncryptionConfiguration=settings["ServerSideEncryptionConfiguration"])
    s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=settings["OwnershipControls"])
    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError:   # NoSuchLifecycleConfiguration
        rules = []
    ours = settings["LifecycleConfiguration"]["Rules"]
    kept = [r for r in rules if r.get("ID") not in {o["ID"] for o in ours}]
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": kept + ours})
    if kept:
        notes.append(f"kept {len(kept)} existing lifecycle rule(s)")
    try:
        existing = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    except ClientError:   # NoSuchBucketPolicy
        existing = None
    try:
        merged, n_kept = merge_statements(existing, policy_documents(bucket, prefix)["bucket-policy"])
    except PolicyError as exc:
        raise EMRError(f"bucket {bucket}: {exc}") from None
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(merged))
    if n_kept:
        notes.append(f"kept {n_kept} statement(s) of the bucket's existing policy")
    if web_origins:
        try:
            existing_cors = s3.get_bucket_cors(Bucket=bucket).get("CORSRules", [])
        except ClientError:   # NoSuchCORSConfiguration
            existing_cors = []
        cors, n_kept = merge_cors(existing_cors, bucket_cors(web_origins))
        s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=cors)
        notes.append(f"CORS rule for the web app at {', '.join(web_origins)}"
                     + (f" (kept {n_kept} other rule(s))" if n_kept else ""))
    return notes


def _cleanup(created: Created, *, iam, s3, emr, cognito=None) -> list[str]:
    """Undo ``created`` (newest first); returns one line per thing removed (or that could not be)."""
    done = []

    def attempt(label, fn):
        try:
            fn()
            done.append(f"removed {label}")
        except Exception as exc:  # keep cleaning; report what is left behind
            done.append(f"could NOT remove {label}: {_first_line(exc)}")

    if created.cluster_id:
        attempt(f"cluster {created.cluster_id}", lambda: emr.terminate_job_flows(JobFlowIds=[created.cluster_id]))
    if created.identity_pool and cognito is not None:
        attempt(f"identity pool {created.identity_pool}",
                lambda: cognito.delete_identity_pool(IdentityPoolId=created.identity_pool))
    for key in reversed(created.keys):
        attempt(f"s3://{created.bucket}/{key}", lambda key=key: s3.delete_object(Bucket=created.bucket, Key=key))
    for name in created.instance_profiles:
        def drop_profile(name=name):
            for role in iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"].get("Roles", []):
                iam.remove_role_from_instance_profile(InstanceProfileName=name, RoleName=role["RoleName"])
            iam.delete_instance_profile(InstanceProfileName=name)
        attempt(f"instance profile {name}", drop_profile)
    for role in created.roles:
        def drop_role(role=role):
            for pol in iam.list_role_policies(RoleName=role)["PolicyNames"]:
                iam.delete_role_policy(RoleName=role, PolicyName=pol)
            for att in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]:
                iam.detach_role_policy(RoleName=role, PolicyArn=att["PolicyArn"])
            iam.delete_role(RoleName=role)
        attempt(f"role {role}", drop_role)
    return done


def launch(spec: ClusterSpec, *, session, models_dir: Path | None = None, say=print) -> dict:
    """Create what the run needs and start the cluster. Returns {"cluster_id", "request", "created"}."""
    from botocore.exceptions import BotoCoreError, ClientError

    validate(spec)
    request = build_request(spec)
    files = uploads(spec, models_dir)          # fails before anything exists if the model is missing
    sts = session.client("sts", region_name=spec.region)
    say(f"credentials: {check_credentials(sts)}")
    s3 = session.client("s3", region_name=spec.region)
    iam = session.client("iam", region_name=spec.region)
    emr = session.client("emr", region_name=spec.region)
    cognito = session.client("cognito-identity", region_name=spec.region)
    try:
        s3.head_bucket(Bucket=spec.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise EMRError(f"bucket {spec.bucket!r} is not usable ({code or _first_line(exc)}): create it first "
                       f"(in {spec.region}); nothing was created") from None
    created = Created(bucket=spec.bucket)
    try:
        say("IAM roles and instance profile (least privilege)")
        _ensure_roles(iam, spec, created)
        pool_id = _ensure_device_access(iam, cognito, spec, created)
        say(f"devices' identity pool {pool_id} (each device writes only under its own client= folder)")
        for key, content in files.items():
            body = content if isinstance(content, bytes) else Path(content).read_bytes()
            s3.put_object(Bucket=spec.bucket, Key=key, Body=body)
            created.keys.append(key)
        say(f"uploaded {len(files)} objects (code, model, bootstrap) under s3://{spec.bucket}/{spec.prefix}/")
        say(f"hardening bucket {spec.bucket} (public access block, SSE-S3, TLS-only and no-overwrite policy, "
            f"multipart uploads aborted after {MULTIPART_DAYS} days)")
        for note in harden_bucket(s3, spec.bucket, spec.prefix, spec.web_origins):
            say(note)
        cluster_id = emr.run_job_flow(**request)["JobFlowId"]
        created.cluster_id = cluster_id
    except (ClientError, BotoCoreError, OSError) as exc:
        undone = _cleanup(created, iam=iam, s3=s3, emr=emr, cognito=cognito)
        raise EMRError(f"launch failed ({_first_line(exc)}); cleaned up: "
                       + ("; ".join(undone) if undone else "nothing had been created")) from None
    say(f"cluster {cluster_id} starting; it terminates itself after its {len(request['Steps'])} step(s)")
    return {"cluster_id": cluster_id, "request": request, "created": asdict(created), "identity_pool": pool_id,
            "web_config": web_config(spec, pool_id)}


def status(emr, cluster_id: str) -> dict:
    try:
        cluster = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    except Exception as exc:
        raise EMRError(f"cluster {cluster_id}: {_first_line(exc)}") from None
    steps = emr.list_steps(ClusterId=cluster_id)["Steps"]
    return {"id": cluster_id, "name": cluster["Name"], "state": cluster["Status"]["State"],
            "reason": cluster["Status"].get("StateChangeReason", {}).get("Message", ""),
            "steps": [{"name": s["Name"], "state": s["Status"]["State"]} for s in reversed(steps)]}


def terminate(emr, cluster_id: str) -> None:
    try:
        emr.terminate_job_flows(JobFlowIds=[cluster_id])
    except Exception as exc:
        raise EMRError(f"cluster {cluster_id}: {_first_line(exc)}") from None
