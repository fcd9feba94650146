"""bootstrap/: least-privilege policies (evaluated, linted, enforced by a local S3), the EMR request and its
launch against moto, the bootstrap action and the job code on the nodes' Python."""
from __future__ import annotations

import ast
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bootstrap import emr, policies
from bootstrap.requirements import REQUIREMENTS_EMR, emr_requirements
from demo.s3server import LocalS3

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "fruits-test-bucket"


# ------------------------------------------------------------------------------------------- policies
def test_no_wildcard_s3_allow_and_the_checker_catches_one():
    docs = policies.policy_documents(BUCKET, "team")
    for name in ("emr-instance-profile", "device-identity", "edge-uploader", "bucket-policy"):
        assert policies.wildcard_findings(docs[name]) == [], name
    bad = {"Statement": [{"Sid": "Old", "Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]}
    assert len(policies.wildcard_findings(bad)) == 2
    sneaky = {"Statement": [{"Sid": "Get", "Effect": "Allow", "Action": "s3:Get*", "Resource": "arn:aws:s3:::*"}]}
    assert len(policies.wildcard_findings(sneaky)) == 2


def test_access_matrix_is_the_layout_tables(tmp_path):
    """Computed by evaluating the documents for one key of each area, made by the layout's key functions."""
    matrix = policies.access_matrix(BUCKET, "team")
    assert matrix["emr-instance-profile"] == {
        "vectors": "read+list", "projected": "read+list", "raw": "read+list", "published": "read+write+list",
        "models": "read+list", "pca": "read+write+list", "code": "read+list", "bootstrap": "read+list",
        "logs": "write", "other": ""}
    device = {"vectors": "write", "projected": "write", "raw": "write", "published": "read", "models": "read",
              "pca": "", "code": "", "bootstrap": "", "logs": "", "other": ""}
    assert matrix["device (its own client= folder)"] == device
    assert matrix["device (another device's folder)"] == {**device, "vectors": "", "projected": "", "raw": ""}
    assert matrix["laptop uploader (static key)"] == device
    # The manual's page on AWS shows exactly this matrix.
    page = (ROOT / "docs" / "aws.md").read_text()
    assert policies.matrix_markdown(policies.EXAMPLE_BUCKET, "fruits") in page, \
        "docs/aws.md: paste `python -m bootstrap.policies --prefix fruits` 's matrix"
    docs = policies.policy_documents(BUCKET, "team")
    key = f"arn:aws:s3:::{BUCKET}/team/vectors/x.parquet"
    assert policies.allowed(docs["emr-instance-profile"], docs["bucket-policy"], "s3:GetObject", key)
    assert not policies.allowed(docs["emr-instance-profile"], docs["bucket-policy"], "s3:GetObject", key,
                                {"aws:SecureTransport": "false"}), "requests without TLS are denied"
    assert not policies.allowed(docs["emr-instance-profile"], docs["bucket-policy"], "s3:ListBucket",
                                f"arn:aws:s3:::{BUCKET}", {"s3:prefix": ""}), "no listing of the whole bucket"
    scratch = policies.Request.object("s3:DeleteObject", BUCKET, "team/pca/run=r/projections/_temporary/0/part-0")
    assert policies.allowed(docs["emr-instance-profile"], docs["bucket-policy"], scratch), \
        "Spark's committer may remove its own temporaries"
    for key in ("team/pca/run=r/summary.json", "team/logs/j-1/x", "team/vectors/model=a/x.parquet"):
        assert not policies.allowed(docs["emr-instance-profile"], docs["bucket-policy"],
                                    policies.Request.object("s3:DeleteObject", BUCKET, key)), key


def test_committed_policy_files_are_what_the_function_makes():
    docs = policies.policy_documents(policies.EXAMPLE_BUCKET)
    for name, doc in docs.items():
        assert json.loads((policies.POLICY_DIR / f"{name}.json").read_text()) == doc, name
    assert json.loads((policies.POLICY_DIR / "bucket-settings.json").read_text()) == policies.bucket_settings()
    assert json.loads((policies.POLICY_DIR / "bucket-cors.json").read_text()) == \
        policies.bucket_cors([policies.EXAMPLE_WEB_ORIGIN])


def test_web_app_cors_rule_is_narrow_and_merged():
    """The rule lets the app's origins PUT and GET with the SDK's headers (tests/test_web.py checks them against
    what a real page sends), nothing else; plain http only for loopback; other rules of the bucket are kept."""
    rule = policies.bucket_cors(["https://fruits.example.com/"])["CORSRules"][0]
    assert rule["AllowedOrigins"] == ["https://fruits.example.com"] and rule["AllowedMethods"] == ["GET", "PUT"]
    assert "*" not in "".join(rule["AllowedHeaders"]) and "if-none-match" in rule["AllowedHeaders"]
    assert rule["ExposeHeaders"] == ["ETag"]
    for bad, why in (("http://192.168.1.5:8000", "secure features over https"), ("https://x.com/app", "no path"),
                     ("*", "scheme://host")):
        with pytest.raises(policies.PolicyError, match=why):
            policies.bucket_cors([bad])
    theirs = {"ID": "other-app", "AllowedOrigins": ["https://other.example"], "AllowedMethods": ["GET"]}
    old_ours = {"ID": policies.CORS_RULE_ID, "AllowedOrigins": ["https://old.example"], "AllowedMethods": ["PUT"]}
    merged, kept = policies.merge_cors([theirs, old_ours], policies.bucket_cors(["https://new.example"]))
    assert kept == 1 and merged["CORSRules"][0] == theirs
    assert merged["CORSRules"][1]["AllowedOrigins"] == ["https://new.example"] and len(merged["CORSRules"]) == 2


def parliament_findings(doc: dict) -> list[tuple[str, str]]:
    """parliament's findings, on what parliament can parse: it splits ARNs on ':' and only knows ${aws:...}
    variables, so the Cognito variable is shown to it as ${aws:userid} (same place, same role). Its IAM data
    knows s3:if-none-match but predates s3:ObjectCreationOperation (S3's conditional writes, 2024): that one
    finding is expected (our evaluator checks the condition)."""
    from parliament import analyze_policy_string

    text = json.dumps(doc).replace(policies.DEVICE_VARIABLE, "${aws:userid}")
    return [(f.issue, str(f.detail)) for f in analyze_policy_string(text).findings]


NEWER_THAN_PARLIAMENT = ("s3:ObjectCreationOperation",)


def test_parliament_finds_nothing_but_the_condition_keys_newer_than_its_data():
    docs = policies.policy_documents(BUCKET, "team")
    for name in ("emr-instance-profile", "device-identity", "edge-uploader", "bucket-policy"):
        findings = parliament_findings(docs[name])
        unexplained = [f for f in findings if not (f[0] == "UNKNOWN_CONDITION_FOR_ACTION"
                                                   and any(k in f[1] for k in NEWER_THAN_PARLIAMENT))]
        assert unexplained == [], name
    assert len(parliament_findings(docs["bucket-policy"])) == 1    # the new key, nothing else
    # The linter is live: a broad or misspelt policy does get findings.
    broad = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObjct", "Resource": "*"}]}
    assert parliament_findings(broad)


@pytest.mark.parametrize("name", ["", "Bad_Name", "ab", "a..b", "192.168.1.1", "x" * 64])
def test_invalid_bucket_names_are_refused(name):
    with pytest.raises(policies.PolicyError, match="bucket"):
        policies.policy_documents(name)


def test_edge_credentials_can_upload_but_not_list_read_or_write_elsewhere(tmp_path, vectors_file, monkeypatch):
    """The laptop uploader's policy, enforced by a local S3 with IAM checks on (moto, matching '?' as AWS
    does): `fruits-edge upload` works with it, twice (412 = done); the same keys cannot list the bucket, read
    the vectors back, write under pca/, or write a key of another shape under vectors/."""
    import boto3
    from botocore.exceptions import ClientError

    from edge_client.cli import main as edge_main

    # The first 8 requests are free (setting up); from then on the server checks every request.
    with LocalS3(mode="process", env={"INITIAL_NO_AUTH_ACTION_COUNT": "8"}) as server:
        kw = {"endpoint_url": server.endpoint_url, "region_name": "us-east-1"}
        root = boto3.client("s3", aws_access_key_id="testing", aws_secret_access_key="testing", **kw)
        iam = boto3.client("iam", aws_access_key_id="testing", aws_secret_access_key="testing", **kw)
        root.create_bucket(Bucket=BUCKET)                                           # 1
        root.put_object(Bucket=BUCKET, Key="team/models/card.json", Body=b"{}")      # 2
        iam.create_user(UserName="phone")                                           # 3
        doc = policies.policy_documents(BUCKET, "team")["edge-uploader"]
        iam.put_user_policy(UserName="phone", PolicyName="edge", PolicyDocument=json.dumps(doc))  # 4
        key = iam.create_access_key(UserName="phone")["AccessKey"]                   # 5
        iam.create_user(UserName="admin")                                           # 6
        admin_doc = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=json.dumps(admin_doc))  # 7
        admin_key = iam.create_access_key(UserName="admin")["AccessKey"]            # 8
        root = boto3.client("s3", aws_access_key_id=admin_key["AccessKeyId"],
                            aws_secret_access_key=admin_key["SecretAccessKey"], **kw)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        phone = boto3.Session().client("s3", **kw)   # the env credentials now (the default session caches its first)
        assert phone.get_object(Bucket=BUCKET, Key="team/models/card.json")["Body"].read() == b"{}"
        for manifest in ("m.sqlite", "m2.sqlite"):   # the second: a fresh manifest, S3 refuses the key (412)
            assert edge_main(["--quiet", "upload", str(vectors_file), f"s3://{BUCKET}/team", "--endpoint-url",
                              server.endpoint_url, "--manifest", str(tmp_path / manifest)]) == 0
        refused = [
            lambda: phone.list_objects_v2(Bucket=BUCKET, Prefix="team/vectors/"),
            lambda: phone.get_object(Bucket=BUCKET, Key=keys[0]),
            lambda: phone.put_object(Bucket=BUCKET, Key="team/pca/run=x/summary.json", Body=b"{}"),
            lambda: phone.put_object(Bucket=BUCKET, Key="team/vectors/junk.parquet", Body=b"x"),
            lambda: phone.put_object(Bucket=BUCKET, Key="team/vectors/../pca/x", Body=b"x"),
            lambda: phone.delete_object(Bucket=BUCKET, Key=keys[0]),
        ]
        keys = [o["Key"] for o in root.list_objects_v2(Bucket=BUCKET, Prefix="team/vectors/")["Contents"]]
        assert len(keys) == 1
        for attempt in refused:
            with pytest.raises(ClientError, match="AccessDenied"):
                attempt()


# --------------------------------------------------------------------------- the nodes: bootstrap, code
def run_bootstrap(tmp_path, requirements: str, python: str):
    """The bootstrap action itself, with stand-ins for what only an EMR node has: `aws` (copies the given
    requirements), `sudo` (records its command, runs nothing), `dnf`. Returns (exit code, output, commands)."""
    stubs = tmp_path / "bin"
    stubs.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "calls.log"
    (tmp_path / "requirements.txt").write_text(requirements)
    (stubs / "aws").write_text(f'#!/bin/sh\necho "aws $*" >> {log}\ncp {tmp_path / "requirements.txt"} "$5"\n')
    (stubs / "sudo").write_text(f'#!/bin/sh\necho "sudo $*" >> {log}\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "FRUITS_NODE_PYTHON": python}
    proc = subprocess.run(["bash", str(emr.BOOTSTRAP_SCRIPT), "s3://b/p/bootstrap/requirements-emr.txt"],
                          capture_output=True, text=True, env=env, timeout=120)
    calls = log.read_text().splitlines() if log.exists() else []
    return proc.returncode, proc.stdout + proc.stderr, calls


def test_bootstrap_action_installs_the_pins_and_leaves_spark_alone(tmp_path):
    """Run as a node would: python3.11 is installed when missing, the pinned requirements are fetched and
    installed with wheels only, the libraries import; a requirements file with pyspark is refused."""
    assert emr.BOOTSTRAP_SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    pins = REQUIREMENTS_EMR.read_text()
    code, out, calls = run_bootstrap(tmp_path, pins, sys.executable)   # a node whose python3.11 is there
    assert code == 0, out
    assert calls[0] == "aws s3 cp --only-show-errors s3://b/p/bootstrap/requirements-emr.txt " + calls[0].split()[-1]
    assert calls[1] == f"sudo {sys.executable} -m pip install --quiet --no-cache-dir pip==24.3.1"
    assert calls[2].startswith(f"sudo {sys.executable} -m pip install --quiet --no-cache-dir --only-binary=:all: -r ")
    assert "[fruits-bootstrap] ok:" in out and len(calls) == 3, "no dnf: python3.11 was found"
    code, out, calls = run_bootstrap(tmp_path / "fresh", pins, str(tmp_path / "no" / "python3.11"))
    assert calls[0] == "sudo dnf install -y -q python3.11 python3.11-pip" and code != 0  # the stub installs nothing
    code, out, calls = run_bootstrap(tmp_path / "spark", pins + "pyspark==3.5.9\n", sys.executable)
    assert code == 1 and "refusing: the requirements list pyspark or py4j" in out
    assert not any("pip install" in c for c in calls), "nothing installed"
    # The pins are the constraints' closure of the emr group, without Spark.
    assert pins == emr_requirements(), "run: python -m bootstrap.requirements > bootstrap/requirements-emr.txt"
    lines = [ln for ln in pins.splitlines() if ln and not ln.startswith("#")]
    assert all("==" in ln for ln in lines) and not any(ln.startswith(("pyspark", "py4j")) for ln in lines)
    assert {"numpy", "pandas", "pyarrow", "ai-edge-litert", "pillow", "pi-heif"} <= {ln.split("==")[0] for ln in lines}


def test_job_code_parses_as_python_311_and_imports_from_the_zip(tmp_path):
    """What the nodes run: the --py-files zip, on Python 3.11 (the version the bootstrap installs)."""
    data = emr.code_zip()
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        names = z.namelist()
        for name in names:
            if name.endswith(".py"):
                ast.parse(z.read(name), filename=name, feature_version=(3, 11))
    assert "cloud_pca/job.py" in names and "featurizer/preprocess.py" in names and "contract/vectors.py" in names
    assert not any(n.startswith(("tests/", "models/", "bootstrap/")) for n in names)
    (tmp_path / "code.zip").write_bytes(data)
    # the package's data too: the label rules read their Unicode table from the zip (an open() of a path inside the
    # zip failed every publish on the cluster with NotADirectoryError)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import cloud_pca.cli, cloud_pca.job, cloud_pca.featurize; "
             "assert cloud_pca.job.__file__.startswith(sys.argv[1]), cloud_pca.job.__file__; "
             "from contract.labels import check_label, control_in; "
             "assert control_in('a\\u200bb') and check_label('Apple') == ('Apple', None)")
    proc = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "code.zip")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr  # cloud_pca.cli must not need bootstrap/ (not on the nodes)


# ------------------------------------------------------------------------------------------ EMR (moto)
@pytest.fixture
def aws(monkeypatch, request):
    from botocore.awsrequest import AWSResponse

    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")  # AWS managed policies (the EMR service role's)
    session = request.getfixturevalue("mocked_aws")                 # started after moto's setting
    # moto has no SetIdentityPoolRoles: that one call is recorded here instead of sent (the rest is moto's).
    session.pool_roles = []

    def set_roles(params=None, **_):
        session.pool_roles.append(json.loads(params["body"]))
        return AWSResponse("", 200, {}, None), {}

    session.events.register("before-call.cognito-identity.SetIdentityPoolRoles", set_roles)
    session.client("s3").create_bucket(Bucket=BUCKET,
                                   CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    return session


def spec(**kw):
    return emr.ClusterSpec(bucket=BUCKET, prefix="team", run_id="r1", **kw)


def test_launch_creates_exactly_the_planned_cluster(aws):
    planned = emr.build_request(spec(images=True, core_nodes=2, task_nodes=3))
    out = emr.launch(spec(images=True, core_nodes=2, task_nodes=3), session=aws, say=lambda m: None)
    assert out["request"] == planned, "plan and launch agree"
    client = aws.client("emr", region_name="eu-west-3")
    cluster = client.describe_cluster(ClusterId=out["cluster_id"])["Cluster"]
    assert cluster["ReleaseLabel"] == "emr-7.5.0" and [a["Name"] for a in cluster["Applications"]] == ["Spark"]
    assert cluster["AutoTerminate"] is True, "transient: terminates when the steps end"
    assert cluster["ServiceRole"] == emr.ROLE_SERVICE and cluster["LogUri"] == f"s3://{BUCKET}/team/logs/"
    groups = {g["InstanceGroupType"]: g for g in client.list_instance_groups(ClusterId=out["cluster_id"])["InstanceGroups"]}
    assert groups["MASTER"]["Market"] == "ON_DEMAND" and groups["CORE"]["Market"] == "ON_DEMAND"
    assert groups["TASK"]["Market"] == "SPOT" and groups["TASK"]["RequestedInstanceCount"] == 3
    steps = list(reversed(client.list_steps(ClusterId=out["cluster_id"])["Steps"]))
    assert [s["Name"] for s in steps] == ["fruits: featurize raw photos", "fruits: StandardScaler + PCA",
                                         "fruits: report"]
    assert [s["Config"]["Args"] for s in steps] == [s["HadoopJarStep"]["Args"] for s in planned["Steps"]]
    assert all(s["ActionOnFailure"] == "TERMINATE_CLUSTER" for s in steps)
    assert planned["AutoTerminationPolicy"] == {"IdleTimeout": 3600}
    assert {"Classification": "export", "Properties": {"PYSPARK_PYTHON": "/usr/bin/python3.11"}} in \
        planned["Configurations"][0]["Configurations"]
    # Roles and the least-privilege policy, exactly the generated document.
    iam = aws.client("iam")
    doc = iam.get_role_policy(RoleName=emr.ROLE_INSTANCE, PolicyName="fruits-s3-least-privilege")["PolicyDocument"]
    assert doc == policies.policy_documents(BUCKET, "team")["emr-instance-profile"]
    # The devices' identity pool and role: each device writes new objects under its own client= folder only.
    pools = aws.client("cognito-identity").list_identity_pools(MaxResults=10)["IdentityPools"]
    assert [p["IdentityPoolName"] for p in pools] == [emr.IDENTITY_POOL] and out["identity_pool"] == pools[0]["IdentityPoolId"]
    pool_docs = policies.policy_documents(BUCKET, "team", pool_id=out["identity_pool"])
    role = iam.get_role(RoleName=emr.ROLE_DEVICE)["Role"]
    assert role["AssumeRolePolicyDocument"] == pool_docs["device-trust"]
    assert iam.get_role_policy(RoleName=emr.ROLE_DEVICE, PolicyName=emr.DEVICE_POLICY)["PolicyDocument"] == \
        pool_docs["device-identity"]
    assert aws.pool_roles == [{"IdentityPoolId": out["identity_pool"], "Roles": {"unauthenticated": role["Arn"]}}]
    profile = iam.get_instance_profile(InstanceProfileName=emr.INSTANCE_PROFILE)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [emr.ROLE_INSTANCE]
    # The bucket is hardened and holds the code, model and bootstrap.
    s3 = aws.client("s3", region_name="eu-west-3")
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())
    rule = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    sids = [st["Sid"] for st in json.loads(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])["Statement"]]
    assert sids == ["DenyWithoutTLS", "DenyCreationWithoutIfNoneMatch", "DenyKeysOffTheLayout"]
    lifecycle = s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert [r["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] for r in lifecycle] == [policies.MULTIPART_DAYS]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {"team/code/fruits-code.zip", "team/code/fruits_job.py", "team/bootstrap/emr-bootstrap.sh",
                    "team/bootstrap/requirements-emr.txt", "team/models/mobilenetv2_160_int8.tflite",
                    "team/models/mobilenetv2_160_int8.json", "team/models/catalog.json"}   # the operator's catalog
    assert out["web_config"] == {"bucket": BUCKET, "prefix": "team", "region": "eu-west-3",
                                 "identityPoolId": out["identity_pool"]}
    st = emr.status(client, out["cluster_id"])
    assert st["state"] in ("STARTING", "RUNNING", "WAITING") and len(st["steps"]) == 3
    emr.terminate(client, out["cluster_id"])
    assert emr.status(client, out["cluster_id"])["state"].startswith("TERMINAT")


def test_launch_with_a_web_origin_puts_the_cors_rule_and_keeps_others(aws):
    s3 = aws.client("s3", region_name="eu-west-3")
    theirs = {"ID": "other-app", "AllowedOrigins": ["https://other.example"], "AllowedMethods": ["GET"],
              "AllowedHeaders": ["authorization"]}
    s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration={"CORSRules": [theirs]})
    out = emr.launch(spec(web_origins=["https://fruits.example.com"]), session=aws, say=lambda m: None)
    rules = s3.get_bucket_cors(Bucket=BUCKET)["CORSRules"]
    assert [r.get("ID") for r in rules] == ["other-app", policies.CORS_RULE_ID]
    assert rules[1]["AllowedOrigins"] == ["https://fruits.example.com"]
    emr.terminate(aws.client("emr", region_name="eu-west-3"), out["cluster_id"])
    with pytest.raises(emr.EMRError, match="secure features over https"):
        emr.validate(spec(web_origins=["http://10.0.0.2"]))


def test_plan_creates_nothing(aws, capsys):
    from bootstrap.cli import main as cloud_main

    assert cloud_main(["emr", "plan", "--bucket", BUCKET, "--prefix", "team", "--vectors", "1000000"]) == 0
    printed = capsys.readouterr().out
    request = json.loads(printed[: printed.index("\ndevices' credentials")])
    assert request["ReleaseLabel"].startswith("emr-7.") and "total" in printed
    devices = json.loads(printed[printed.index("(created by launch):\n") + 21: printed.index("\ncost estimate")])
    assert devices["Role"]["Policy"]["PolicyDocument"] == policies.policy_documents(BUCKET, "team")["device-identity"]
    assert aws.client("cognito-identity").list_identity_pools(MaxResults=10)["IdentityPools"] == []
    assert aws.client("emr", region_name="eu-west-3").list_clusters()["Clusters"] == []
    assert aws.client("iam").list_roles()["Roles"] == []
    assert "Contents" not in aws.client("s3", region_name="eu-west-3").list_objects_v2(Bucket=BUCKET)


@pytest.mark.parametrize("args, message", [
    (["--bucket", "Bad_Bucket"], "bucket name 'Bad_Bucket' is invalid"),
    (["--bucket", BUCKET, "--prefix", "../x"], "prefix '../x': use folders of letters"),
    (["--bucket", BUCKET, "--run-id", "../../x"], "run id '../../x'"),
    (["--bucket", BUCKET, "--k", "0"], "--k=0 must be between 1 and 1280"),
    (["--bucket", BUCKET, "--variance", "1.5"], "--variance=1.5 must be between 1e-09 and 1"),
    (["--bucket", BUCKET, "--region", "mars-1"], "region 'mars-1' is not an AWS region"),
    (["--bucket", BUCKET, "--instance-type", "m5.mega"], "instance type 'm5.mega' is unknown"),
    (["--bucket", BUCKET, "--release", "emr-6.15.0"], "does not ship Spark 3.5"),
    (["--bucket", "no-such-bucket-here"], "bucket 'no-such-bucket-here' is not usable"),
])
def test_bad_launch_input_is_one_line_and_creates_nothing(aws, capsys, args, message):
    from bootstrap.cli import main as cloud_main

    assert cloud_main(["--quiet", "emr", "launch", *args]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and message in err and "\n" not in err
    assert aws.client("iam").list_roles()["Roles"] == []
    assert aws.client("emr", region_name="eu-west-3").list_clusters()["Clusters"] == []


def test_no_credentials_is_one_clear_line(monkeypatch, tmp_path):
    import boto3

    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(emr.EMRError, match="no AWS credentials found"):
        emr.launch(spec(), session=boto3.Session(region_name="eu-west-3"), say=lambda m: None)


@pytest.mark.parametrize("fail_at", ["PutObject", "RunJobFlow"])
def test_failed_launch_removes_what_it_created(aws, fail_at):
    from botocore.exceptions import ClientError

    calls = {"n": 0}

    def refuse(**_):
        calls["n"] += 1
        if fail_at == "RunJobFlow" or calls["n"] == 3:  # the third upload, or starting the cluster
            raise ClientError({"Error": {"Code": "ServiceUnavailable", "Message": "no capacity"}}, fail_at)

    class Failing:
        """The real (moto) session, except that one call fails."""

        def client(self, name, **kw):
            client = aws.client(name, **kw)
            service = {"s3": "s3", "emr": "emr"}.get(name)
            if service and fail_at in {"s3": ("PutObject",), "emr": ("RunJobFlow",)}[service]:
                client.meta.events.register(f"before-call.{service}.{fail_at}", refuse)
            return client

    with pytest.raises(emr.EMRError) as info:
        emr.launch(spec(), session=Failing(), say=lambda m: None)
    msg = str(info.value)
    assert msg.startswith("launch failed (") and "no capacity" in msg
    assert f"removed role {emr.ROLE_INSTANCE}" in msg and f"removed role {emr.ROLE_SERVICE}" in msg
    assert f"removed role {emr.ROLE_DEVICE}" in msg and "removed identity pool" in msg
    assert f"removed instance profile {emr.INSTANCE_PROFILE}" in msg
    assert aws.client("cognito-identity").list_identity_pools(MaxResults=10)["IdentityPools"] == []
    assert aws.client("iam").list_roles()["Roles"] == []
    assert aws.client("emr", region_name="eu-west-3").list_clusters()["Clusters"] == []
    if fail_at == "PutObject":
        assert msg.count(f"removed s3://{BUCKET}/team/") == 2 and "could NOT" not in msg
        assert "Contents" not in aws.client("s3", region_name="eu-west-3").list_objects_v2(Bucket=BUCKET)
    # (After RunJobFlow fails, the bucket already has its TLS-only policy, which moto evaluates without
    # the aws:SecureTransport key and so denies the deletes; on AWS they go through over HTTPS.)


def test_cost_estimate_uses_the_billed_prices():
    s = spec(core_nodes=2, task_nodes=2)
    paris = emr.estimate_cost(s, vectors=1_000_000, hours=1.0)
    assert paris.ec2_on_demand == pytest.approx(3 * 0.224) and paris.ec2_spot == pytest.approx(2 * 0.064)
    assert paris.emr_fee == pytest.approx(5 * 0.048)
    s.region = "us-east-1"
    virginia = emr.estimate_cost(s, vectors=1_000_000, hours=1.0)
    assert virginia.ec2_on_demand == pytest.approx(3 * 0.192) and virginia.total < paris.total


def test_a_held_publish_fails_its_step_and_the_report_still_runs():
    """publish exits with EXIT_HELD when the operator must look first: its step fails (the step list shows it) but
    the report after it runs (CONTINUE), every other step still ends the cluster on failure."""
    request = emr.build_request(spec(publish_k=32, incremental=True))
    actions = {s["Name"]: s["ActionOnFailure"] for s in request["Steps"]}
    assert actions == {"fruits: StandardScaler + PCA": "TERMINATE_CLUSTER",
                       "fruits: publish projection + index for the devices": "CONTINUE",
                       "fruits: report": "TERMINATE_CLUSTER"}
