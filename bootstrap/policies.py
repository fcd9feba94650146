"""Least-privilege IAM and bucket policies, all generated from the layout table (:data:`contract.layout.AREAS`)
by :func:`policy_documents`, for a bucket and a dataset root.

Documents:

- ``emr-instance-profile``: the cluster's nodes read the areas the table lets ``emr`` read, write the areas it
  writes (``pca/``, ``logs/``, the published projection under ``models/``), list their folders, and may
  delete nothing but Spark's committer scratch (``pca/*/_temporary/*``);
- ``device-identity``: the role of a Cognito identity pool's (unauthenticated) device identities: ``PutObject``
  only under ``.../client=${cognito-identity.amazonaws.com:sub}/`` of ``vectors/``, ``projected/`` and
  ``raw/``, with keys of the exact shape the edge client writes (IAM's ``?`` is one character: a 64-character
  fingerprint, a 32-character content name); ``GetObject`` of models and published projections; no list;
- ``edge-uploader``: the same for a laptop's static key, without the per-device folder (a static key is
  shared: it is the less safe choice, see docs/aws.md);
- ``bucket-policy``: every request without TLS denied; in the device areas, a creation without
  ``If-None-Match`` (``PutObject`` or ``CompleteMultipartUpload``; the multipart parts are exempted with
  ``s3:ObjectCreationOperation``) denied for everyone: no overwrite, ever; and a key with more ``/`` than its
  area's shape (``//``, ``/../``, ``/./`` inside a fixed-length name) denied for everyone (also in the devices'
  own policies);
- trust policies: EC2 and EMR for the cluster's roles, Cognito (this pool, unauthenticated) for the devices'.

No Allow statement uses a wildcard action or ``Resource: "*"``; the only ``s3:*`` is in the Deny of non-TLS
requests. :func:`allowed` evaluates the documents for one request (actions, resources with ``*``/``?`` and
policy variables, Principal, the condition operators they use) to check intent in tests; AWS's evaluator
is the authority.

    python -m bootstrap.policies --bucket fruits-data --prefix fruits               # documents + matrix
    python -m bootstrap.policies --bucket fruits-data-example --write bootstrap/policies/
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from contract import layout
from contract.errors import FruitsError

EXAMPLE_BUCKET = "fruits-data-example"
POLICY_DIR = Path(__file__).resolve().parent / "policies"
DEVICE_VARIABLE = "${cognito-identity.amazonaws.com:sub}"
POOL_PLACEHOLDER = "REGION:IDENTITY-POOL-ID"
MULTIPART_DAYS = 3          # incomplete multipart uploads are aborted after this many days
DOCUMENTS = {               # document -> the layout principal it grants for
    "emr-instance-profile": layout.EMR, "device-identity": layout.DEVICE, "edge-uploader": layout.DEVICE}

_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


class PolicyError(FruitsError, ValueError):
    """A bucket name or prefix the policies cannot be made for."""


def check_bucket_name(bucket: str) -> str:
    """S3's naming rules; the message says which one is broken."""
    if not bucket:
        raise PolicyError("--bucket is required (an S3 bucket name)")
    if not _BUCKET_RE.match(bucket):
        raise PolicyError(f"bucket name {bucket!r} is invalid: 3-63 characters of a-z 0-9 . -, starting and "
                          "ending with a letter or digit")
    if ".." in bucket or re.match(r"^\d+\.\d+\.\d+\.\d+$", bucket) or bucket.startswith("xn--") \
            or bucket.endswith(("-s3alias", "--ol-s3")):
        raise PolicyError(f"bucket name {bucket!r} is invalid: no '..', not an IP address, no xn-- prefix, "
                          "no -s3alias / --ol-s3 suffix")
    return bucket


# ---------------------------------------------------------------------------------------- documents
def _arns(bucket: str, root: str, globs, device: str) -> list[str]:
    return [f"arn:aws:s3:::{bucket}/{layout.join(root, layout.expand_glob(g, device))}" for g in globs]


def _grants(bucket: str, root: str, principal: str, device: str) -> list[dict]:
    """The Allow statements of one principal, from the table."""
    bucket_arn = f"arn:aws:s3:::{bucket}"
    reads = [a for a in layout.AREAS if principal in a.readers]
    writes = [a for a in layout.AREAS if principal in a.writers]
    lists = [a for a in layout.AREAS if principal in a.listers]
    sid = "".join(w.capitalize() for w in principal.split("-"))
    out = []
    if reads:   # a reader reads the whole folder (writes are held to exact key shapes, reads need not be)
        folders = sorted({a.folder for a in reads})
        out.append({"Sid": f"{sid}Reads", "Effect": "Allow", "Action": ["s3:GetObject"],
                    "Resource": [f"arn:aws:s3:::{bucket}/{layout.join(root, f)}/*" for f in folders]})
    if writes:
        actions = ["s3:PutObject", "s3:AbortMultipartUpload"]
        if principal == layout.EMR:
            actions.append("s3:ListMultipartUploadParts")
        out.append({"Sid": f"{sid}Writes", "Effect": "Allow", "Action": actions,
                    "Resource": [r for a in writes for r in _arns(bucket, root, a.globs, device)]})
    scratch = [g for a in writes for g in a.scratch]
    if scratch:
        out.append({"Sid": f"{sid}DeletesCommitterScratchOnly", "Effect": "Allow", "Action": ["s3:DeleteObject"],
                    "Resource": _arns(bucket, root, scratch, device)})
    if lists:
        folders = sorted({layout.join(root, a.folder) for a in lists})
        out.append({"Sid": f"{sid}ListsItsFolders", "Effect": "Allow", "Action": ["s3:ListBucket"],
                    "Resource": [bucket_arn],
                    "Condition": {"StringLike": {"s3:prefix": [v for f in folders for v in (f"{f}/", f"{f}/*")]}}})
        out.append({"Sid": f"{sid}FindsTheBucket", "Effect": "Allow", "Action": ["s3:GetBucketLocation"],
                    "Resource": [bucket_arn]})
    return out


def _off_layout(bucket: str, root: str, sid: str, principal: bool) -> dict:
    """Deny creating a key deeper than its area's shape: IAM's ``*`` and ``?`` also match ``/``, so a device's
    allowed globs would take ``part-//...`` or ``part-/../../client=OTHER/...``, which a Hadoop reader
    collapses or resolves into other paths. Every device key has exactly ``depth`` slashes below its area;
    ``folder/*/*/.../*`` with one more matches every key with more (``//``, ``/../`` and ``/./`` included)."""
    resources = []
    for a in layout.AREAS:
        if layout.DEVICE in a.writers:
            deepest = max(layout.depth(g) for g in a.globs)
            resources.append(f"arn:aws:s3:::{bucket}/{layout.join(root, a.folder)}" + "/*" * (deepest + 1))
    st = {"Sid": sid, "Effect": "Deny", "Action": ["s3:PutObject"], "Resource": resources}
    return {"Sid": sid, "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject", "Resource": resources} \
        if principal else st


def policy_documents(bucket: str, prefix: str = "", *, pool_id: str = POOL_PLACEHOLDER) -> dict[str, dict]:
    """Every policy document, by name (see the module docstring)."""
    check_bucket_name(bucket)
    try:
        root = layout.check_root(prefix)
    except FruitsError as exc:
        raise PolicyError(str(exc)) from None
    bucket_arn = f"arn:aws:s3:::{bucket}"
    device_areas = [a for a in layout.AREAS if layout.DEVICE in a.writers]
    bucket_policy = {"Version": "2012-10-17", "Statement": [
        {"Sid": "DenyWithoutTLS", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
         "Resource": [bucket_arn, f"{bucket_arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
        # No overwrite in the device areas, whoever asks: a creation must carry If-None-Match. The parts of a
        # multipart upload (CreateMultipartUpload, UploadPart) take no conditional header: exempted by
        # s3:ObjectCreationOperation, which is true only for the operations that create the object.
        {"Sid": "DenyCreationWithoutIfNoneMatch", "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
         "Resource": [f"{bucket_arn}/{layout.join(root, a.folder)}/*" for a in device_areas],
         "Condition": {"Null": {"s3:if-none-match": "true"}, "Bool": {"s3:ObjectCreationOperation": "true"}}},
        _off_layout(bucket, root, "DenyKeysOffTheLayout", principal=True),
    ]}
    trust = {
        "emr-ec2-trust": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "emr-service-trust": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "elasticmapreduce.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
        "device-trust": {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Federated": "cognito-identity.amazonaws.com"},
             "Action": "sts:AssumeRoleWithWebIdentity",
             "Condition": {"StringEquals": {"cognito-identity.amazonaws.com:aud": pool_id},
                           "ForAnyValue:StringLike": {"cognito-identity.amazonaws.com:amr": "unauthenticated"}}}]},
    }
    return {
        "emr-instance-profile": {"Version": "2012-10-17", "Statement": _grants(bucket, root, layout.EMR, "*")},
        "device-identity": {"Version": "2012-10-17", "Statement": _grants(bucket, root, layout.DEVICE, DEVICE_VARIABLE)
                            + [_off_layout(bucket, root, "DeviceKeysOfTheLayoutShapeOnly", principal=False)]},
        "edge-uploader": {"Version": "2012-10-17", "Statement": _grants(bucket, root, layout.DEVICE, "*")
                          + [_off_layout(bucket, root, "DeviceKeysOfTheLayoutShapeOnly", principal=False)]},
        "bucket-policy": bucket_policy, **trust,
    }


def bucket_settings() -> dict:
    """The bucket's hardening besides its policy: block public access, encrypt at rest, owner owns objects,
    abort incomplete multipart uploads after a few days. Raw photos do not expire: they are the only copy of
    what those devices saw, and featurizing them again is how a new model reaches them (docs/aws.md, *Lifecycle*)."""
    rules = [{"ID": "fruits-abort-incomplete-multipart", "Status": "Enabled", "Filter": {"Prefix": ""},
              "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": MULTIPART_DAYS}}]
    return {
        "PublicAccessBlockConfiguration": {"BlockPublicAcls": True, "IgnorePublicAcls": True,
                                           "BlockPublicPolicy": True, "RestrictPublicBuckets": True},
        "ServerSideEncryptionConfiguration": {"Rules": [{
            "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}, "BucketKeyEnabled": True}]},
        "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
        "LifecycleConfiguration": {"Rules": rules},
    }


# The request headers the web app's S3 calls carry (AWS SDK for JavaScript v3, requestChecksumCalculation
# WHEN_REQUIRED): listed one by one, not as "x-amz-*", so that the rule is as narrow as what is sent; the browser
# tests check that every header a real PUT and GET carry is in this list.
WEB_APP_HEADERS = ("authorization", "content-type", "if-none-match", "x-amz-date", "x-amz-content-sha256",
                   "x-amz-security-token", "x-amz-user-agent", "amz-sdk-invocation-id", "amz-sdk-request")
CORS_RULE_ID = "fruits-web-app"
EXAMPLE_WEB_ORIGIN = "https://fruits.example.com"


def bucket_cors(origins) -> dict:
    """The bucket's CORS rule for the web app served from ``origins`` (``https://app.example.com``): PUT of new
    vectors (the conditional header included) and GET of the published projection, ETag exposed."""
    origins = [o.rstrip("/") for o in origins]
    for o in origins:
        if not re.match(r"^https?://[A-Za-z0-9.-]+(:\d+)?$", o):
            raise PolicyError(f"web origin {o!r} must be scheme://host[:port] (no path), e.g. https://fruits.example.com")
        if o.startswith("http://") and not re.match(r"^http://(127\.0\.0\.1|localhost)(:\d+)?$", o):
            raise PolicyError(f"web origin {o!r}: a phone only gets the page's secure features over https "
                              "(plain http is allowed for 127.0.0.1 and localhost only)")
    return {"CORSRules": [{"ID": CORS_RULE_ID, "AllowedOrigins": origins, "AllowedMethods": ["GET", "PUT"],
                           "AllowedHeaders": list(WEB_APP_HEADERS), "ExposeHeaders": ["ETag"],
                           "MaxAgeSeconds": 3600}]}


def merge_cors(existing: list[dict] | None, ours: dict) -> tuple[dict, int]:
    """Our CORS rule replaces the rule with its ID; other rules are kept. Returns the config and how many kept."""
    kept = [r for r in existing or [] if r.get("ID") != CORS_RULE_ID]
    return {"CORSRules": kept + ours["CORSRules"]}, len(kept)


def merge_statements(existing: dict | None, ours: dict) -> tuple[dict, int]:
    """``ours`` merged into an existing bucket policy: statements with our Sids are replaced, every other
    statement is kept. Returns the policy and how many statements were kept."""
    if not existing:
        return ours, 0
    if not isinstance(existing.get("Statement"), list):
        raise PolicyError("the bucket's existing policy has no Statement list; fix or remove it first")
    sids = {st.get("Sid") for st in ours["Statement"]}
    kept = [st for st in existing["Statement"] if not st.get("Sid") or st.get("Sid") not in sids]
    return {"Version": existing.get("Version", "2012-10-17"), "Statement": kept + ours["Statement"]}, len(kept)


# ----------------------------------------------------------------------------------- the evaluator
def _glob(pattern: str) -> re.Pattern:
    """IAM's glob: ``*`` any characters, ``?`` exactly one; everything else literal."""
    return re.compile("^" + re.escape(pattern).replace(r"\*", ".*").replace(r"\?", ".") + "$", re.DOTALL)


_VARIABLE = re.compile(r"\$\{([^}]+)\}")


def _substitute(pattern: str, context: dict) -> str | None:
    """Policy variables (``${cognito-identity.amazonaws.com:sub}``) from the request; None when one is missing
    (the statement then does not apply, as in AWS)."""
    missing = []

    def value(m):
        if m.group(1) not in context:
            missing.append(m.group(1))
            return ""
        return str(context[m.group(1)]).replace("*", "").replace("?", "")

    out = _VARIABLE.sub(value, pattern)
    return None if missing else out


def _as_list(v) -> list:
    return [v] if isinstance(v, str) else list(v or [])


def _matches(patterns, value: str, context: dict) -> bool:
    for p in _as_list(patterns):
        p = _substitute(p, context)
        if p is not None and _glob(p).match(value):
            return True
    return False


def _condition_holds(condition: dict | None, context: dict) -> bool:
    for op, tests in (condition or {}).items():
        if_exists = op.endswith("IfExists")
        base = op[: -len("IfExists")] if if_exists else op
        for key, expected in tests.items():
            expected = [str(e) for e in _as_list(expected)]
            if base == "Null":
                present = key in context
                if (expected[0].lower() == "true") == present:
                    return False
                continue
            if key not in context:
                if if_exists:
                    continue
                return False
            value = str(context[key])
            if base == "Bool":
                ok = value.lower() in [e.lower() for e in expected]
            elif base == "StringEquals":
                ok = value in expected
            elif base == "StringNotEquals":
                ok = value not in expected
            elif base == "StringLike":
                ok = any(_glob(e).match(value) for e in expected)
            elif base == "StringNotLike":
                ok = not any(_glob(e).match(value) for e in expected)
            else:
                raise NotImplementedError(f"condition operator {op}")
            if not ok:
                return False
    return True


def _principal_matches(principal, who: str | None) -> bool:
    if principal is None or principal == "*":
        return True
    arns = _as_list(principal.get("AWS", [])) if isinstance(principal, dict) else []
    return "*" in arns or (who is not None and who in arns)


@dataclass
class Request:
    """One S3 request as IAM sees it: action, resource ARN, and condition keys (``aws:SecureTransport`` is
    "true" unless said otherwise)."""

    action: str
    resource: str
    context: dict = field(default_factory=dict)
    principal: str | None = None

    @classmethod
    def put(cls, bucket: str, key: str, *, conditional: bool = True, creates: bool = True, **context) -> "Request":
        """A PutObject (``creates``: PutObject or CompleteMultipartUpload; else a multipart part)."""
        ctx = {"s3:ObjectCreationOperation": "true" if creates else "false", **context}
        if conditional and creates:
            ctx["s3:if-none-match"] = "*"
        return cls("s3:PutObject", f"arn:aws:s3:::{bucket}/{key}", ctx)

    @classmethod
    def object(cls, action: str, bucket: str, key: str, **context) -> "Request":
        return cls(action, f"arn:aws:s3:::{bucket}/{key}", dict(context))

    @classmethod
    def list(cls, bucket: str, prefix: str, **context) -> "Request":
        return cls("s3:ListBucket", f"arn:aws:s3:::{bucket}", {"s3:prefix": prefix, **context})


def allowed(identity: dict, bucket_policy: dict, request: Request | str, resource: str | None = None,
            context: dict | None = None) -> bool:
    """IAM's decision for one request in one account: an explicit Deny wins, else some Allow is needed.

    Covers what these documents use: Action and Resource globs (``*``, ``?``), policy variables from the
    request context, Principal of bucket-policy statements, and the Null / Bool / String* condition operators
    (with ``IfExists``). A check of intent, not a replacement for AWS's evaluator. The older call form
    ``allowed(identity, bucket_policy, action, resource, context)`` is accepted too.
    """
    if isinstance(request, str):
        request = Request(request, resource or "", dict(context or {}))
    ctx = {"aws:SecureTransport": "true", **request.context}
    statements = [(st, False) for st in identity.get("Statement", [])] + \
                 [(st, True) for st in bucket_policy.get("Statement", [])]
    allow = False
    for st, from_bucket in statements:
        if from_bucket and not _principal_matches(st.get("Principal"), request.principal):
            continue
        if not (_matches(st.get("Action", []), request.action, ctx)
                and _matches(st.get("Resource", []), request.resource, ctx)
                and _condition_holds(st.get("Condition"), ctx)):
            continue
        if st["Effect"] == "Deny":
            return False
        allow = True
    return allow


# ----------------------------------------------------------------------------------------- checks
def wildcard_findings(doc: dict) -> list[str]:
    """Allow statements with a wildcard S3 action (``s3:*``, ``s3:Get*``, ``*``) or resource (``*``, a whole
    bucket's ``arn:aws:s3:::*``); a Deny may be broad (it only takes away)."""
    found = []
    for st in doc.get("Statement", []):
        if st.get("Effect") != "Allow":
            continue
        for a in _as_list(st.get("Action", [])):
            if a == "*" or (a.lower().startswith("s3:") and "*" in a):
                found.append(f"{st.get('Sid', '?')}: wildcard action {a}")
        if "NotAction" in st or "NotResource" in st:
            found.append(f"{st.get('Sid', '?')}: NotAction/NotResource in an Allow")
        for r in _as_list(st.get("Resource", [])):
            if r == "*" or r.startswith("arn:aws:s3:::*") or r.endswith(":::" + "*"):
                found.append(f"{st.get('Sid', '?')}: wildcard resource {r}")
    return found


EXAMPLE_DEVICE = "eu-west-3:00000000-0000-4000-8000-000000000001"
OTHER_DEVICE = "eu-west-3:00000000-0000-4000-8000-000000000002"


def example_keys(root: str, device: str = EXAMPLE_DEVICE) -> dict[str, str]:
    """One key of each area (and one outside every area), made by the layout's own key functions."""
    sha, pid, iid = "b" * 64, "c" * 16, "d" * 64
    return {
        "vectors": layout.vectors_object_key(root, sha, device, [iid]),
        "projected": layout.projected_object_key(root, sha, pid, device, [iid]),
        "raw": layout.raw_object_key(root, device, "Apple Red", iid, ".jpg"),
        "published": layout.projection_key(root, pid),
        "models": layout.model_key(root, "mobilenetv2_160_fp32.tflite"),
        "pca": layout.run_prefix(root, "r1") + "summary.json",
        "code": layout.code_key(root, layout.CODE_ZIP),
        "bootstrap": layout.bootstrap_key(root, layout.BOOTSTRAP_SCRIPT),
        "logs": layout.logs_prefix(root) + "j-0000/steps/s-0000/stderr.gz",
        "other": layout.join(root, "other/x.bin"),
    }


MATRIX_ROWS = {   # row -> (document, the request's device identity, the device folder the key is in)
    "emr-instance-profile": ("emr-instance-profile", None, EXAMPLE_DEVICE),
    "device (its own client= folder)": ("device-identity", EXAMPLE_DEVICE, EXAMPLE_DEVICE),
    "device (another device's folder)": ("device-identity", EXAMPLE_DEVICE, OTHER_DEVICE),
    "laptop uploader (static key)": ("edge-uploader", None, OTHER_DEVICE),
}


def access_matrix(bucket: str, prefix: str = "") -> dict[str, dict[str, str]]:
    """For each principal and area: which of read / write (new keys only) / list the documents allow."""
    docs = policy_documents(bucket, prefix)
    root = layout.check_root(prefix)
    out: dict[str, dict[str, str]] = {}
    for row, (doc, identity, folder_owner) in MATRIX_ROWS.items():
        ctx = {"cognito-identity.amazonaws.com:sub": identity} if identity else {}
        cells = {}
        for area, key in example_keys(root, folder_owner).items():
            ops = []
            if allowed(docs[doc], docs["bucket-policy"], Request.object("s3:GetObject", bucket, key, **ctx)):
                ops.append("read")
            if allowed(docs[doc], docs["bucket-policy"], Request.put(bucket, key, **ctx)):
                ops.append("write")
            if allowed(docs[doc], docs["bucket-policy"], Request.object("s3:DeleteObject", bucket, key, **ctx)):
                ops.append("delete")
            folder = layout.join(root, area if area != "published" else "models") + "/"
            if allowed(docs[doc], docs["bucket-policy"], Request.list(bucket, folder, **ctx)):
                ops.append("list")
            cells[area] = "+".join(ops)
        out[row] = cells
    return out


def matrix_markdown(bucket: str = EXAMPLE_BUCKET, prefix: str = "fruits") -> str:
    m = access_matrix(bucket, prefix)
    areas = list(next(iter(m.values())))
    lines = ["| principal | " + " | ".join(areas) + " |", "| --- |" + " --- |" * len(areas)]
    for who, row in m.items():
        lines.append(f"| {who} | " + " | ".join(row[a] or "—" for a in areas) + " |")
    return "\n".join(lines)


def write_documents(bucket: str, out_dir: Path, prefix: str = "") -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in policy_documents(bucket, prefix).items():
        path = out_dir / f"{name}.json"
        path.write_text(json.dumps(doc, indent=2) + "\n")
        written.append(path)
    (out_dir / "bucket-settings.json").write_text(json.dumps(bucket_settings(), indent=2) + "\n")
    (out_dir / "bucket-cors.json").write_text(json.dumps(bucket_cors([EXAMPLE_WEB_ORIGIN]), indent=2) + "\n")
    return written + [out_dir / "bucket-settings.json", out_dir / "bucket-cors.json"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Print or write the policy documents for a bucket.")
    ap.add_argument("--bucket", default=EXAMPLE_BUCKET)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--write", metavar="DIR", help="write one JSON file per document into DIR")
    args = ap.parse_args(argv)
    try:
        if args.write:
            for path in write_documents(args.bucket, Path(args.write), args.prefix):
                print(path)
        else:
            print(json.dumps(policy_documents(args.bucket, args.prefix), indent=2))
            print("\n" + matrix_markdown(args.bucket, args.prefix))
    except FruitsError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
