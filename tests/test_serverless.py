"""EMR Serverless (issue 24): the same job chain as the cluster's steps, as job runs in order with a job runtime
role of exactly the instance profile's rights; a daily schedule whose roles can start only that chain; against
moto (emr-serverless, scheduler, stepfunctions, iam, sts, s3), in-process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from bootstrap import emr, policies, serverless
from bootstrap.policies import Request, allowed

BUCKET = "fruits-serverless-test"
IMAGE = "123456789012.dkr.ecr.eu-west-3.amazonaws.com/fruits:emr-7.5.0"


def spec(**kw):
    kw = {"images": True, "incremental": True, "evaluate": True, "publish_k": 16, "image_uri": IMAGE, **kw}
    return emr.ClusterSpec(bucket=BUCKET, prefix="team", run_id="r1", **kw)


@pytest.fixture
def aws(mocked_aws):
    mocked_aws.client("s3").create_bucket(Bucket=BUCKET,
                                   CreateBucketConfiguration={"LocationConstraint": "eu-west-3"})
    return mocked_aws


def test_job_runs_are_the_cluster_steps():
    """One definition: each job run's entry point and arguments are the cluster step's, after spark-submit."""
    s = spec()
    steps = emr.build_request(s)["Steps"]
    runs = serverless.job_runs(s, "app", "arn:aws:iam::1:role/r")
    assert [r["name"] for r in runs] == [st["Name"] for st in steps] == [
        "fruits: featurize raw photos", "fruits: StandardScaler + PCA", "fruits: evaluate (accuracy vs bytes per image)",
        "fruits: publish projection + index for the devices", "fruits: report"]
    for run, step in zip(runs, steps):
        args = step["HadoopJarStep"]["Args"]
        entry = args.index(run["jobDriver"]["sparkSubmit"]["entryPoint"])
        assert run["jobDriver"]["sparkSubmit"]["entryPointArguments"] == args[entry + 1:]
        assert run["configurationOverrides"]["monitoringConfiguration"]["s3MonitoringConfiguration"]["logUri"] == \
            f"s3://{BUCKET}/team/logs/serverless/"
    featurize, pca = runs[0]["jobDriver"]["sparkSubmit"]["entryPointArguments"], runs[1]["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    assert "--incremental" in featurize and f"s3://{BUCKET}/team/pca/featurized/run=incremental" in featurize
    assert pca[pca.index("--input") + 3] == f"s3://{BUCKET}/team/pca/featurized/run=incremental/vectors/"
    assert "--incremental" in pca and "--reproject" in pca


def test_the_job_role_has_exactly_the_instance_profiles_rights():
    role = serverless.job_role(spec(), "123456789012")
    docs = policies.policy_documents(BUCKET, "team")
    assert role["PolicyDocument"] == docs["emr-instance-profile"]
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert trust == [{"Effect": "Allow", "Principal": {"Service": "emr-serverless.amazonaws.com"},
                      "Action": "sts:AssumeRole", "Condition": {"StringEquals": {"aws:SourceAccount": "123456789012"}}}]
    # The evaluator's access matrix of the two documents, key by key and action by action: equal.
    for area, key in policies.example_keys("team").items():
        for request in (Request.object("s3:GetObject", BUCKET, key), Request.put(BUCKET, key),
                        Request.object("s3:DeleteObject", BUCKET, key), Request.list(BUCKET, key.rsplit("/", 1)[0] + "/")):
            assert allowed(role["PolicyDocument"], docs["bucket-policy"], request) == \
                allowed(docs["emr-instance-profile"], docs["bucket-policy"], request), (area, request.action)


def test_schedule_roles_start_only_that_chain():
    s = spec()
    app, job_role = "00abc", "arn:aws:iam::123456789012:role/fruits-emr-serverless-job-role"
    sm = serverless.state_machine_role(s, "123456789012", app, job_role)["PolicyDocument"]
    arn = f"arn:aws:emr-serverless:eu-west-3:123456789012:/applications/{app}"
    assert allowed(sm, {}, Request("emr-serverless:StartJobRun", arn))
    assert allowed(sm, {}, Request("emr-serverless:GetJobRun", f"{arn}/jobruns/00run"))
    assert not allowed(sm, {}, Request("emr-serverless:StartJobRun", arn.replace(app, "00other")))
    assert allowed(sm, {}, Request("iam:PassRole", job_role, {"iam:PassedToService": "emr-serverless.amazonaws.com"}))
    assert not allowed(sm, {}, Request("iam:PassRole", job_role.replace("job-role", "admin"),
                                       {"iam:PassedToService": "emr-serverless.amazonaws.com"}))
    assert policies.wildcard_findings(sm) == []
    sched = serverless.scheduler_role("123456789012", "arn:aws:states:eu-west-3:123456789012:stateMachine:fruits-daily-refresh")
    assert allowed(sched["PolicyDocument"], {}, Request("states:StartExecution",
                                                         "arn:aws:states:eu-west-3:123456789012:stateMachine:fruits-daily-refresh"))
    assert not allowed(sched["PolicyDocument"], {}, Request("states:StartExecution",
                                                             "arn:aws:states:eu-west-3:123456789012:stateMachine:other"))
    definition = serverless.state_machine_definition(s, app, job_role)
    states = definition["States"]
    tasks = [st for name, st in states.items() if st["Type"] == "Task" and name != serverless.HELD_REPORT]
    assert len(tasks) == 5 and all(t["Resource"] == "arn:aws:states:::emr-serverless:startJobRun.sync" for t in tasks)
    assert [t["Catch"][0]["Next"] for t in tasks] == ["Chain stopped"] * 3 + [serverless.HELD_REPORT, "Chain stopped"]
    assert tasks[-1].get("End") is True
    # a publish held for the operator (or failed) still gets its report, then the execution fails saying so
    after = states[serverless.HELD_REPORT]
    assert after["Parameters"] == tasks[-1]["Parameters"] and after["Next"] == "Publish held or failed"
    assert states["Publish held or failed"] == {**states["Publish held or failed"], "Type": "Fail",
                                                "Error": "FruitsPublishHeld"}
    pca_args = tasks[1]["Parameters"]["JobDriver"]["SparkSubmit"]["EntryPointArguments.$"]
    assert "States.Format('{}', $$.Execution.Name)" in pca_args and "'r1'" not in pca_args, "a run id per day"
    with pytest.raises(emr.EMRError, match="HH:MM"):
        serverless.schedule_request("25:00", "x", "y")


def test_plan_shows_everything_and_creates_nothing(aws, capsys):
    from bootstrap.cli import main as cloud_main

    assert cloud_main(["emr", "serverless", "plan", "--bucket", BUCKET, "--prefix", "team", "--images",
                       "--incremental", "--publish", "16", "--image-uri", IMAGE, "--daily", "03:30"]) == 0
    out = capsys.readouterr().out
    assert '"imageUri": "' + IMAGE in out and "cron(30 3 * * ? *)" in out and "startJobRun.sync" in out
    assert "| 100,000,000 | incremental |" in out and "ESTIMATED" in out
    assert aws.client("emr-serverless").list_applications()["applications"] == []
    assert [r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]] == []


def test_launch_runs_the_chain_in_order_with_the_generated_role(aws):
    sent = []   # moto keeps no image configuration: the request itself is checked
    aws.events.register("provide-client-params.emr-serverless.CreateApplication",
                        lambda params, **_: sent.append(json.loads(json.dumps(params))))
    out = serverless.launch(spec(), session=aws, say=lambda m: None, poll_s=0)
    client = aws.client("emr-serverless")
    app = client.get_application(applicationId=out["application_id"])["application"]
    assert app["releaseLabel"] == "emr-7.5.0" and app["type"].upper() == "SPARK"
    assert sent == [serverless.application_request(spec())] and sent[0]["imageConfiguration"] == {"imageUri": IMAGE}
    assert sent[0]["autoStopConfiguration"] == {"enabled": True, "idleTimeoutMinutes": serverless.IDLE_STOP_MINUTES}
    assert [r["state"] for r in out["job_runs"]] == ["SUCCESS"] * 5
    iam = aws.client("iam")
    doc = iam.get_role_policy(RoleName=serverless.ROLE_JOB, PolicyName=serverless.JOB_POLICY)["PolicyDocument"]
    assert doc == policies.policy_documents(BUCKET, "team")["emr-instance-profile"]
    role_arn = iam.get_role(RoleName=serverless.ROLE_JOB)["Role"]["Arn"]
    planned = serverless.job_runs(spec(), out["application_id"], role_arn)
    for r, want in zip(out["job_runs"], planned):
        run = client.get_job_run(applicationId=out["application_id"], jobRunId=r["job_run_id"])["jobRun"]
        assert run["executionRole"] == role_arn and run["name"] == want["name"]
        assert run["jobDriver"]["sparkSubmit"]["entryPointArguments"] == want["jobDriver"]["sparkSubmit"]["entryPointArguments"]
    keys = {o["Key"] for o in aws.client("s3").list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert {"team/code/fruits-code.zip", "team/code/fruits_job.py", "team/models/mobilenetv2_160_int8.tflite"} <= keys
    assert not any(k.startswith("team/bootstrap/") for k in keys), "no bootstrap action: the image has the libraries"
    assert "DenyKeysOffTheLayout" in aws.client("s3").get_bucket_policy(Bucket=BUCKET)["Policy"]
    # In-process moto takes every request as plain http, so the TLS-only bucket policy would refuse the second
    # upload here (S3 over https does not): the policy goes before running again.
    aws.client("s3").delete_bucket_policy(Bucket=BUCKET)
    again = serverless.launch(spec(), session=aws, say=lambda m: None, poll_s=0)
    assert again["application_id"] == out["application_id"], "the application is reused by name"


def test_a_failed_job_run_stops_the_chain_and_names_it(aws, monkeypatch):
    from moto.emrserverless import models

    started = []
    original = models.EMRServerlessBackend.start_job_run

    def start(self, *a, **k):
        run = original(self, *a, **k)
        started.append(run)
        if len(started) == 2:
            run.state, run.state_details = "FAILED", "Job failed, ExitCode: 1"
        return run

    monkeypatch.setattr(models.EMRServerlessBackend, "start_job_run", start)
    with pytest.raises(emr.EMRError) as err:
        serverless.launch(spec(), session=aws, say=lambda m: None, poll_s=0)
    text = str(err.value)
    second = started[1]
    assert f"job run {second.id} (fruits: StandardScaler + PCA) ended FAILED" in text
    assert f"logs: s3://{BUCKET}/team/logs/serverless/applications/" in text and f"/jobs/{second.id}/" in text
    assert "fruits: evaluate" in text and "not started" in text
    assert len(started) == 2, "the chain stopped at the failed run"


def test_schedule_creates_exactly_the_daily_chain_and_unschedule_removes_it(aws):
    out = serverless.schedule(spec(), session=aws, daily="03:00", say=lambda m: None)
    sfn, iam, sched = aws.client("stepfunctions"), aws.client("iam"), aws.client("scheduler")
    machine = sfn.describe_state_machine(stateMachineArn=out["state_machine_arn"])
    role_arn = iam.get_role(RoleName=serverless.ROLE_JOB)["Role"]["Arn"]
    assert json.loads(machine["definition"]) == serverless.state_machine_definition(spec(), out["application_id"], role_arn)
    assert iam.get_role_policy(RoleName=serverless.ROLE_STATE_MACHINE, PolicyName="fruits-start-the-chain-job-runs")[
        "PolicyDocument"] == serverless.state_machine_role(spec(), out["account"], out["application_id"], role_arn)["PolicyDocument"]
    schedule = sched.get_schedule(Name=serverless.SCHEDULE)
    assert schedule["ScheduleExpression"] == "cron(0 3 * * ? *)" and schedule["Target"]["Arn"] == out["state_machine_arn"]
    sched_role = iam.get_role_policy(RoleName=serverless.ROLE_SCHEDULER, PolicyName="fruits-start-the-daily-chain")
    assert sched_role["PolicyDocument"]["Statement"][0]["Resource"] == out["state_machine_arn"]
    serverless.unschedule(spec(), session=aws, say=lambda m: None)
    assert sfn.list_state_machines()["stateMachines"] == []
    assert sched.list_schedules()["Schedules"] == []
    names = {r["RoleName"] for r in iam.list_roles()["Roles"]}
    assert serverless.ROLE_SCHEDULER not in names and serverless.ROLE_STATE_MACHINE not in names
    assert serverless.ROLE_JOB in names, "the application and its job role stay for launch"


def test_what_was_created_is_removed_when_a_later_creation_fails(aws):
    from botocore.exceptions import ClientError

    def refuse(**_):
        raise ClientError({"Error": {"Code": "AccessDeniedException", "Message": "no scheduler for you"}}, "CreateSchedule")

    aws.events.register("before-call.scheduler.CreateSchedule", refuse)
    with pytest.raises(emr.EMRError, match="AccessDeniedException.*cleaned up: removed schedule|cleaned up") as err:
        serverless.schedule(spec(), session=aws, daily="03:00", say=lambda m: None)
    text = str(err.value)
    assert "removed state machine" in text and "removed application" in text and f"removed role {serverless.ROLE_JOB}" in text
    assert aws.client("stepfunctions").list_state_machines()["stateMachines"] == []
    assert aws.client("iam").list_roles()["Roles"] == []
    apps = aws.client("emr-serverless").list_applications()["applications"]
    assert all(a["state"] == "TERMINATED" for a in apps)


def test_launch_refuses_without_an_image_before_creating_anything(aws):
    with pytest.raises(emr.EMRError, match="--image-uri is required"):
        serverless.launch(spec(image_uri=None), session=aws, say=lambda m: None)
    with pytest.raises(emr.EMRError, match="not an ECR image"):
        serverless.launch(spec(image_uri="docker.io/fruits:1"), session=aws, say=lambda m: None)
    assert aws.client("iam").list_roles()["Roles"] == []


def test_the_image_is_built_from_the_bootstrap_requirements():
    here = Path(serverless.__file__).resolve().parent
    assert (here / "emr-serverless.Dockerfile").read_text() == serverless.dockerfile(), \
        "run: python -m bootstrap.serverless dockerfile > bootstrap/emr-serverless.Dockerfile"
    text = serverless.dockerfile()
    assert "COPY requirements-emr.txt" in text and "-r /tmp/requirements-emr.txt" in text
    assert f"ENV PYSPARK_PYTHON={emr.NODE_PYTHON}" in text and "emr-serverless/spark/emr-7.5.0" in text


@pytest.mark.slow
def test_the_requirements_resolve_and_the_job_imports_in_a_clean_virtualenv(tmp_path):
    """What can be checked of the image here (no Docker engine): the pinned list installs, wheels only, into a
    clean virtualenv, and the job's code zip imports with it, Spark's Python bindings standing in for the
    image's own (EMR provides Spark; the list must not)."""
    import pyspark
    import py4j

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    req = Path(emr.REQUIREMENTS)
    proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--only-binary=:all:", "-r", str(req)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    spark_site = tmp_path / "emr-spark"
    spark_site.mkdir()
    for module in (pyspark, py4j):
        os.symlink(Path(module.__file__).parent, spark_site / module.__name__)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "emr-spark.pth").write_text(str(spark_site) + "\n")
    (tmp_path / "code.zip").write_bytes(emr.code_zip())
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import cloud_pca.cli, cloud_pca.job, cloud_pca.featurize, "
             "cloud_pca.report; js = cloud_pca.report.plotly_js(); assert 'plotly' in js[:200]; "
             "import ai_edge_litert, pi_heif, PIL, pyarrow, pandas; print('ok')")
    proc = subprocess.run([str(python), "-c", probe, str(tmp_path / "code.zip")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
    with zipfile.ZipFile(tmp_path / "code.zip") as z:
        assert "cloud_pca/report.py" in z.namelist()


def test_unschedule_says_what_existed_and_what_was_removed(aws, capsys):
    """Nothing scheduled: each piece is "not there", no botocore error text; then a schedule: each "removed"
    (before: "removed state machine" for what did not exist, and raw botocore errors)."""
    lines = serverless.unschedule(spec(), session=aws, say=lambda m: None)
    assert lines == [f"schedule {serverless.SCHEDULE}: not there (nothing to remove)",
                     f"state machine {serverless.STATE_MACHINE}: not there (nothing to remove)",
                     f"role {serverless.ROLE_SCHEDULER}: not there (nothing to remove)",
                     f"role {serverless.ROLE_STATE_MACHINE}: not there (nothing to remove)"]
    serverless.schedule(spec(), session=aws, daily="03:00", say=lambda m: None)
    lines = serverless.unschedule(spec(), session=aws, say=lambda m: None)
    assert all(line.endswith(": removed") for line in lines) and len(lines) == 4, lines


@pytest.mark.parametrize("args, message", [
    (["emr", "plan", "--bucket", "b", "--new-per-day", "-5"], "--new-per-day=-5 must be at least 0"),
    (["emr", "plan", "--bucket", "b", "--vectors", "0"], "--vectors=0 must be at least 1"),
    (["emr", "plan", "--bucket", "b", "--publish", "0"], "--publish=0 must be between 1 and 1280"),
    (["emr", "serverless", "plan", "--bucket", "b", "--poll", "0"], "--poll=0 must be between 1 and 3600"),
    (["emr", "plan", "--bucket", "b", "--hours", "-1"], "--hours=-1 must be at least"),
    (["evaluate", "--input", "/x", "--output", "/y", "--max-rows", "0"], "--max-rows=0 must be at least 2"),
])
def test_numeric_options_are_checked_for_their_range(args, message, capsys):
    from bootstrap.cli import main

    assert main(["--quiet", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err


def test_status_lists_what_the_runs_trust_model_set_aside(aws, capsys):
    """The operator sees a hostile device's quarantined and held-back objects next to the job runs (issue 32)."""
    from bootstrap.cli import main as emr_main
    from contract import layout

    bad = "team/vectors/model=" + "0" * 64 + "/day=2026-12-02/client=eu-west-3:00000000-0000-4000-8000-0000000000ff/part-x.parquet"
    record = {"quarantined": 1, "held_back": 1, "screened": 2, "near_copies": 5, "conflicts": 0,
              "quarantined_objects": [{"file": f"s3://{BUCKET}/{bad}", "reason": "not a Parquet file (0 bytes)"}],
              "held_back_objects": [{"file": f"s3://{BUCKET}/team/vectors/b.parquet", "reason": "held back: 5000 rows"}]}
    aws.client("s3").put_object(Bucket=BUCKET, Key=layout.run_prefix("team", "r1") + "summary.json",
                                Body=json.dumps({"contributions": record}).encode())
    emrs = aws.client("emr-serverless")
    app = emrs.create_application(name="fruits", releaseLabel="emr-7.5.0", type="SPARK")["applicationId"]
    emrs.start_job_run(applicationId=app, executionRoleArn="arn:aws:iam::123456789012:role/r", name="fruits: pca",
                       jobDriver={"sparkSubmit": {"entryPoint": "s3://b/main.py"}})   # moto lists runs only then
    assert emr_main(["emr", "serverless", "status", "--region", "eu-west-3", "--application-id", app,
                     "--bucket", BUCKET, "--prefix", "team", "--run-id", "r1"]) == 0
    text = capsys.readouterr().out
    assert "fruits: pca" in text
    assert "run r1: 1 object(s) quarantined, 1 held back; rows set aside: 2 screened, 5 near-copies" in text
    assert f"quarantined s3://{BUCKET}/{bad}: not a Parquet file (0 bytes)" in text
    assert "held back" in text.split("quarantined s3://")[1]
    assert emr_main(["emr", "serverless", "status", "--region", "eu-west-3", "--application-id", app,
                     "--bucket", BUCKET, "--prefix", "team", "--run-id", "nope"]) == 1
    assert "the run has not written its summary yet?" in capsys.readouterr().err
