"""Where everything lives under a dataset root ``s3://BUCKET/PREFIX``, and who writes and reads it.

One table (:data:`AREAS`). The key functions below, the edge upload, the job, the EMR request
(``bootstrap/emr.py``) and the IAM and bucket policies (``bootstrap/policies.py``) are all derived from it;
a test walks every key any writer produces and checks that exactly the intended principals may write it.

============  ======================================================================================  ==========  =============
area          keys below the root                                                                     written by  read by
============  ======================================================================================  ==========  =============
vectors       ``vectors/model=<sha256>/day=<YYYY-MM-DD>/client=<device>/part-<content>.parquet``      device      emr
projected     ``projected/model=<sha256>/projection=<id>/day=<YYYY-MM-DD>/client=<device>/part-..``   device      emr
raw           ``raw/client=<device>/label=<label>/<image_id>.<ext>``                                  device      emr
published     ``models/projection-<id>.npz``, ``models/index-<id>.npz``, ``models/catalog-<id>.json``,   emr         device, emr
              ``models/projection-latest-<sha256>.json``
models        ``models/<name>.tflite``, ``models/<name>.json`` (card), ``models/catalog.json``         operator    device, emr
pca           ``pca/run=<id>/...``, ``pca/featurized/run=<id>/...``,                                  emr         emr, operator
              ``pca/state/model=<sha256>/...``
code          ``code/fruits-code.zip``, ``code/fruits_job.py``                                        operator    emr
bootstrap     ``bootstrap/emr-bootstrap.sh``, ``bootstrap/requirements-emr.txt``                      operator    emr
logs          ``logs/<cluster id>/...``                                                               emr         operator
============  ======================================================================================  ==========  =============

Principals: ``device`` (a phone with per-device Cognito credentials, or a laptop's static key), ``emr``
(the cluster's instance profile), ``operator`` (a person with the account's admin rights, running
``fruits-cloud emr launch``; no policy is generated for them). A device writes only under its own
``client=<id>/`` folder (with Cognito: ``<id>`` is its identity id, enforced by the IAM policy variable) and
only new keys (``If-None-Match: *``, enforced by the bucket policy).

Vectors are filed under the UTC day they are sent (``day=``, the device's clock; a page's queue re-files what waited
offline under the day it goes). A daily refresh lists only the days since its last one (``cloud_pca.incremental``):
with content-named keys alone, finding the new objects meant listing every object ever uploaded, each day.
"""
from __future__ import annotations

import hashlib
import re
from datetime import date, datetime, timedelta, timezone
from dataclasses import dataclass
from typing import Iterable
from urllib.parse import quote, unquote

from contract.errors import ContractError

DEVICE, EMR, OPERATOR = "device", "emr", "operator"
PRINCIPALS = (DEVICE, EMR, OPERATOR)
NO_LABEL = "_"
CODE_ZIP = "fruits-code.zip"
ENTRY_SCRIPT = "fruits_job.py"
BOOTSTRAP_SCRIPT = "emr-bootstrap.sh"
BOOTSTRAP_REQUIREMENTS = "requirements-emr.txt"

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_CLIENT_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ROOT_RE = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
_RUN_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_PROJECTION_RE = re.compile(r"^[0-9a-f]{16}$")
_DAY_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DAY_FOLDER = "day="


class LayoutError(ContractError):
    """A name that cannot be part of a key (a bad root, run id, client id or fingerprint); says which rule."""


@dataclass(frozen=True)
class Area:
    """One kind of object under the root: its keys (as IAM resource globs), writers and readers.

    ``globs`` are relative to the root; placeholders: ``{sha256}`` 64, ``{content}`` 32, ``{projection}`` 16,
    ``{image_id}`` 64 and ``{day}`` 10 characters (IAM's ``?`` matches exactly one; the job checks a day's digits),
    ``{device}`` the writing device's own id (an IAM policy variable for Cognito identities), anything else ``*``.
    """

    name: str
    folder: str
    globs: tuple[str, ...]
    writers: tuple[str, ...]
    readers: tuple[str, ...]
    listers: tuple[str, ...] = ()
    scratch: tuple[str, ...] = ()    # committer temporaries the writer must delete (Spark's _temporary/)
    doc: str = ""


AREAS: tuple[Area, ...] = (
    Area("vectors", "vectors", ("vectors/model={sha256}/day={day}/client={device}/part-{content}.parquet",),
         writers=(DEVICE,), readers=(EMR,), listers=(EMR,), doc="1280-d vectors uploaded by devices"),
    Area("projected", "projected",
         ("projected/model={sha256}/projection={projection}/day={day}/client={device}/part-{content}.parquet",),
         writers=(DEVICE,), readers=(EMR,), listers=(EMR,), doc="k-d projections uploaded by devices"),
    Area("raw", "raw", ("raw/client={device}/label=*/{image_id}.*", "raw/client={device}/label=*/{image_id}"),
         writers=(DEVICE,), readers=(EMR,), listers=(EMR,), doc="photos of devices that cannot vectorize"),
    # "published" before "models": its keys are more specific (area_of takes the first match).
    Area("published", "models", ("models/projection-*.npz", "models/index-*.npz", "models/catalog-*.json",
                                 "models/projection-latest-*.json"),
         writers=(EMR,), readers=(DEVICE, EMR), doc="projection + reference index + the catalog they were published with"),
    Area("models", "models", ("models/*.tflite", "models/*.json"),
         writers=(OPERATOR,), readers=(DEVICE, EMR), listers=(EMR,),
         doc="the .tflite models and their cards; the operator's fruit catalog (catalog.json)"),
    Area("pca", "pca", ("pca/*",), writers=(EMR,), readers=(EMR, OPERATOR), listers=(EMR,),
         scratch=("pca/*/_temporary/*",), doc="PCA runs, featurized vectors, incremental state"),
    Area("code", "code", (f"code/{CODE_ZIP}", f"code/{ENTRY_SCRIPT}"), writers=(OPERATOR,), readers=(EMR,),
         listers=(EMR,), doc="the job's code for spark-submit"),
    Area("bootstrap", "bootstrap", (f"bootstrap/{BOOTSTRAP_SCRIPT}", f"bootstrap/{BOOTSTRAP_REQUIREMENTS}"),
         writers=(OPERATOR,), readers=(EMR,), listers=(EMR,), doc="the EMR bootstrap action"),
    Area("logs", "logs", ("logs/*",), writers=(EMR,), readers=(OPERATOR,), doc="EMR's step and node logs"),
)


def area(name: str) -> Area:
    for a in AREAS:
        if a.name == name:
            return a
    raise LayoutError(f"no area {name!r}; areas: {', '.join(a.name for a in AREAS)}")


MAX_KEY_BYTES = 1024     # S3 refuses longer keys (moto does not): checked by every key function here


def _shape_regex(glob: str) -> re.Pattern:
    """A glob's exact shape as a regex, as IAM matches it (:func:`expand_glob`): a fixed-length placeholder is that
    many characters (IAM's ``?``: any character), the device one or more, any other ``*`` one or more, never a ``/``
    (the policies deny keys deeper than the shape). So the job reads exactly the keys a device may write: a key IAM
    allows and the job refused (``part-`` and 32 dots) made every run fail; its rows are now checked like any."""
    out = "^"
    for token in re.split(r"(\{sha256\}|\{image_id\}|\{content\}|\{projection\}|\{device\}|\{day\}|\*)", glob):
        out += {"{sha256}": "[^/]{64}", "{image_id}": "[^/]{64}", "{content}": "[^/]{32}",
                "{projection}": "[^/]{16}", "{device}": "[^/]{1,128}", "{day}": r"\d{4}-\d{2}-\d{2}",
                "*": "[^/]+"}.get(token, re.escape(token))
    return re.compile(out + "$")


def expand_glob(glob: str, device: str = "*") -> str:
    """An area glob with its placeholders expanded to IAM wildcards (``?`` per fixed character)."""
    return (glob.replace("{sha256}", "?" * 64).replace("{image_id}", "?" * 64).replace("{content}", "?" * 32)
            .replace("{projection}", "?" * 16).replace("{day}", "?" * 10).replace("{device}", device))


# ------------------------------------------------------------------------------------------ validation
def check_sha256(value, name: str = "model_sha256") -> str:
    if not isinstance(value, str) or not SHA256_RE.match(value):
        raise LayoutError(f"{name}={value!r} is not a sha256 (64 lowercase hex characters)")
    return value


def check_client_id(client_id) -> str:
    if not isinstance(client_id, str) or not _CLIENT_RE.match(client_id):
        raise LayoutError(f"client_id={client_id!r} must be 1-128 characters of A-Z a-z 0-9 . _ : -")
    return client_id


def check_root(root: str) -> str:
    """A dataset root (the PREFIX of ``s3://BUCKET/PREFIX``): folders of letters, digits and . _ -, no
    ``.`` or ``..`` folder, no empty folder. Returned without slashes at the ends; "" is the bucket's root.

    >>> check_root("/team-a/2026/")
    'team-a/2026'
    """
    stripped = (root or "").strip("/")
    if stripped and (not _ROOT_RE.match(stripped) or any(p in (".", "..") for p in stripped.split("/"))):
        raise LayoutError(f"prefix {root!r}: use folders of letters, digits and . _ - separated by '/' "
                          f"(no '.' or '..' folder, no empty folder)")
    return stripped


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_RE.match(run_id) or run_id in (".", ".."):
        raise LayoutError(f"run id {run_id!r}: 1-100 characters of letters, digits and . _ - (no '/')")
    return run_id


def check_projection_id(projection_id: str) -> str:
    if not isinstance(projection_id, str) or not _PROJECTION_RE.match(projection_id):
        raise LayoutError(f"projection id {projection_id!r} is not 16 lowercase hex characters")
    return projection_id


# ------------------------------------------------------------------------------------------------ keys
def check_day(day) -> str:
    """A day of the layout's ``day=`` folders: ``YYYY-MM-DD``, a real date."""
    if not isinstance(day, str) or not _DAY_RE.match(day):
        raise LayoutError(f"day {day!r} is not YYYY-MM-DD")
    try:
        date.fromisoformat(day)
    except ValueError:
        raise LayoutError(f"day {day!r} is not a date") from None
    return day


def upload_day(now: datetime | None = None) -> str:
    """The ``day=`` folder an object sent now is filed under: the UTC date.

    >>> upload_day(datetime(2026, 12, 2, 23, 59, tzinfo=timezone.utc))
    '2026-12-02'
    """
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date().isoformat()


def days_between(first: str, last: str) -> list[str]:
    """The days from ``first`` to ``last``, both included (none when ``last`` is before ``first``).

    >>> days_between("2026-12-30", "2027-01-01")
    ['2026-12-30', '2026-12-31', '2027-01-01']
    """
    a, b = date.fromisoformat(check_day(first)), date.fromisoformat(check_day(last))
    return [(a + timedelta(days=i)).isoformat() for i in range((b - a).days + 1)]


def shift_day(day: str, days: int) -> str:
    """``day`` moved by ``days`` (negative: earlier)."""
    return (date.fromisoformat(check_day(day)) + timedelta(days=days)).isoformat()


def day_of(path: str) -> str | None:
    """The day a key is filed under (its ``day=`` folder), or None.

    >>> day_of("s3a://b/t/vectors/model=" + "a" * 64 + "/day=2026-12-02/client=p/part-x.parquet")
    '2026-12-02'
    """
    for part in path.split("/"):
        if part.startswith(DAY_FOLDER) and _DAY_RE.match(part[len(DAY_FOLDER):]):
            return part[len(DAY_FOLDER):]
    return None


def day_segment(area_name: str) -> int | None:
    """The index of the ``day=`` segment in an area's keys (0: the area's folder), or None when it has none.

    >>> day_segment("vectors"), day_segment("projected"), day_segment("raw")
    (2, 3, None)
    """
    for part_glob in area(area_name).globs:
        parts = part_glob.split("/")
        if "day={day}" in parts:
            return parts.index("day={day}")
    return None


def join(root: str, *parts: str) -> str:
    """``root/part/part`` without empty or doubled slashes."""
    return "/".join(p.strip("/") for p in (root, *parts) if p and p.strip("/"))


def folder(root: str, name: str) -> str:
    """The folder of an area under ``root``, ending with '/'."""
    return join(check_root(root), area(name).folder) + "/"


def content_key(fingerprint: str, image_ids: Iterable[str]) -> str:
    """Name of an object by what it holds: a fingerprint and the sorted image ids (32 hex characters)."""
    h = hashlib.sha256(fingerprint.encode())
    for image_id in sorted(image_ids):
        h.update(b"\n" + image_id.encode())
    return h.hexdigest()[:32]


def vectors_prefix(root: str, model_sha256: str | None = None) -> str:
    """Key prefix of the vectors (of one model when ``model_sha256`` is given), ending with '/'."""
    if model_sha256 is None:
        return folder(root, "vectors")
    return folder(root, "vectors") + f"model={check_sha256(model_sha256)}/"


def vectors_object_key(root: str, model_sha256: str, client_id: str, image_ids: Iterable[str],
                       day: str | None = None) -> str:
    """The key of one vectors object, named by its content, filed under ``day`` (default: today, UTC).

    >>> key = vectors_object_key("team", "a" * 64, "phone-1", ["x"], day="2026-12-02")
    >>> key.split("/")[:2], key.split("/")[3:5], len(key.rsplit("part-", 1)[1])
    (['team', 'vectors'], ['day=2026-12-02', 'client=phone-1'], 40)
    """
    return check_key_length(vectors_prefix(root, model_sha256) + f"day={check_day(day or upload_day())}/"
                            + f"client={check_client_id(client_id)}/part-{content_key(model_sha256, image_ids)}.parquet")


def projected_prefix(root: str, model_sha256: str | None = None, projection_id: str | None = None) -> str:
    out = folder(root, "projected")
    if model_sha256:
        out += f"model={check_sha256(model_sha256)}/"
        if projection_id:
            out += f"projection={check_projection_id(projection_id)}/"
    return out


def projected_object_key(root: str, model_sha256: str, projection_id: str, client_id: str,
                         image_ids: Iterable[str], day: str | None = None) -> str:
    return check_key_length(projected_prefix(root, model_sha256, projection_id) + f"day={check_day(day or upload_day())}/"
                            f"client={check_client_id(client_id)}/"
                            f"part-{content_key(model_sha256 + projection_id, image_ids)}.parquet")


def raw_prefix(root: str) -> str:
    return folder(root, "raw")


def raw_object_key(root: str, client_id: str, label: str | None, image_id: str, ext: str) -> str:
    """The key of one raw photo: ``raw/client=<id>/label=<url-quoted label or _>/<image_id><ext>``.

    The label is in the key (not only in object metadata) because Spark's ``binaryFile`` reader sees paths,
    not metadata; :func:`label_from_path` reads it back. ``_`` (no label) is quoted when it is a label.

    >>> raw_object_key("team", "phone-1", "Apple Red", "ab" * 32, ".jpg")[:46]
    'team/raw/client=phone-1/label=Apple%20Red/abab'
    """
    check_sha256(image_id, "image_id")
    if label is None or label == "":
        value = NO_LABEL
    else:
        value = quote(label, safe="")
        value = "%5F" if value == NO_LABEL else value
    ext = ext.lower()
    if ext and not re.fullmatch(r"\.[a-z0-9]{1,10}", ext):
        raise LayoutError(f"photo extension {ext!r} is not a short alphanumeric extension")
    return check_key_length(folder(root, "raw") + f"client={check_client_id(client_id)}/label={value}/{image_id}{ext}")


def label_from_path(path: str) -> str | None:
    """The label of a photo from its path: a ``label=`` folder (raw upload layout) or else the parent folder
    (Fruits-360 layout: ``Training/<label>/<file>``); ``None`` when there is no parent folder.

    >>> label_from_path("s3://b/t/raw/client=p/label=Apple%20Red/ab.jpg"), label_from_path("Lime/1_100.jpg")
    ('Apple Red', 'Lime')
    """
    parts = [p for p in path.replace("\\", "/").split("/") if p]
    for part in reversed(parts[:-1]):
        if part.startswith("label="):
            value = part[len("label="):]
            if value == NO_LABEL:
                return None
            label = unquote(value)
            # A label is one folder name: its '/' stay encoded ("a%2Fb"), and "." or ".." stay as they came.
            return value if label in (".", "..") else label.replace("/", "%2F")
    return parts[-2] if len(parts) >= 2 else None


def model_key(root: str, filename: str) -> str:
    """A model file (``.tflite``) or its card (``.json``) under ``models/``."""
    if "/" in filename or not filename.endswith((".tflite", ".json")):
        raise LayoutError(f"model file {filename!r}: a .tflite or .json file name (no folders)")
    return folder(root, "models") + filename


def projection_key(root: str, projection_id: str) -> str:
    return folder(root, "published") + f"projection-{check_projection_id(projection_id)}.npz"


def index_key(root: str, projection_id: str) -> str:
    return folder(root, "published") + f"index-{check_projection_id(projection_id)}.npz"


def catalog_key(root: str, catalog_id: str) -> str:
    """The catalog as one publish used it (content-named, next to the projection and index it was published with)."""
    return folder(root, "published") + f"catalog-{check_projection_id(catalog_id)}.json"


def catalog_source_key(root: str) -> str:
    """The operator's fruit catalog, which ``publish`` checks and copies (:func:`catalog_key`)."""
    return folder(root, "models") + "catalog.json"


def latest_projection_key(root: str, model_sha256: str) -> str:
    return folder(root, "published") + f"projection-latest-{check_sha256(model_sha256)}.json"


def pca_prefix(root: str) -> str:
    return folder(root, "pca")


def run_prefix(root: str, run_id: str) -> str:
    """``pca/run=<id>/``: one PCA run's outputs."""
    return folder(root, "pca") + f"run={check_run_id(run_id)}/"


def featurized_prefix(root: str, run_id: str) -> str:
    """``pca/featurized/run=<id>/``: a dataset root of its own for the server-side featurization's vectors."""
    return folder(root, "pca") + f"featurized/run={check_run_id(run_id)}/"


def state_prefix(root: str, model_sha256: str) -> str:
    """``pca/state/model=<sha>/``: the incremental PCA's moments for one model."""
    return folder(root, "pca") + f"state/model={check_sha256(model_sha256)}/"


def code_key(root: str, name: str) -> str:
    if name not in (CODE_ZIP, ENTRY_SCRIPT):
        raise LayoutError(f"code/ holds {CODE_ZIP} and {ENTRY_SCRIPT}, not {name!r}")
    return folder(root, "code") + name


def bootstrap_key(root: str, name: str) -> str:
    if name not in (BOOTSTRAP_SCRIPT, BOOTSTRAP_REQUIREMENTS):
        raise LayoutError(f"bootstrap/ holds {BOOTSTRAP_SCRIPT} and {BOOTSTRAP_REQUIREMENTS}, not {name!r}")
    return folder(root, "bootstrap") + name


def logs_prefix(root: str) -> str:
    return folder(root, "logs")


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def depth(glob: str) -> int:
    """How many '/' a key of the glob holds below the root: a device's key with more is not the layout's."""
    return glob.count("/")


def device_area_at(under: str) -> tuple[Area, list[str], int] | None:
    """The area devices write that the folder ``under`` is (or lies in), the folder's path segments and the index of
    the area's folder among them; None for any other folder (the job's outputs under ``pca/``, a local folder).

    >>> a, parts, at = device_area_at("s3a://b/team/vectors/model=x/")
    >>> a.name, parts[at:]
    ('vectors', ['vectors', 'model=x'])
    """
    from urllib.parse import urlparse

    base = [p for p in urlparse(under).path.split("/") if p]
    at = None
    for i, name in enumerate(base):
        if "pca" in base[:i]:                       # pca/featurized/...: the job's output, not a device's
            break
        if any(DEVICE in a.writers and a.folder == name for a in AREAS):
            at = i
    if at is None:
        return None
    return next(a for a in AREAS if DEVICE in a.writers and a.folder == base[at]), base, at


def device_key_problem(path: str, under: str) -> str | None:
    """Why a file listed under ``under`` is not of the layout's shape, or None when it is. Only inputs that name a
    device area (``.../vectors/``, ``.../projected/``, ``.../raw/``, or a folder inside one) are checked; other
    folders (a local photo folder, the job's own outputs under ``pca/``) may hold any names.

    A device may only write keys of these shapes, but the policy's globs cannot stop every character (IAM's
    ``*`` and ``?`` match ``/``), and a reader that turns keys into paths does not keep them: Hadoop collapses
    ``//`` and resolves ``..``, so such a key is listed as another path, which cannot be opened (or, worse, is
    another device's). Checked on the path's segments from the area's folder.

    >>> d = "s3a://b/team/vectors/"
    >>> device_key_problem(d + "model=" + "a" * 64 + "/day=2026-12-02/client=p1/part-" + "b" * 32 + ".parquet", d)
    >>> device_key_problem(d + "model=" + "a" * 64 + "/day=2026-12-02/client=p1/part-/x.parquet", d)[:49]
    "its key is not of the layout's shape for vectors "
    >>> device_key_problem("file:/home/me/photos/Lime/1.jpg", "/home/me/photos")
    """
    from urllib.parse import urlparse

    found = device_area_at(under)
    if found is None:
        return None
    a, base, at = found
    parts = [p for p in urlparse(path).path.split("/") if p]
    if parts[:at + 1] != base[:at + 1]:
        return f"listed under {under} but outside it after path normalization (a '..' in its key?)"
    rel = "/".join(parts[at:])
    if any(_shape_regex(g).match(rel) for g in a.globs):
        return None
    return (f"its key is not of the layout's shape for {a.name} ({' or '.join(a.globs)}): not as a device's client "
            f"writes it ('//' or '..' in a name is read as another path)")


_COGNITO_ID_RE = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d:[0-9a-f-]{36}$")


def is_anonymous(client_id: str | None) -> bool:
    """Whether a device is an anonymous one: a Cognito identity (``REGION:UUID``), which anyone with the app can
    create for free. Every other device folder was written with the operator's keys (a laptop uploader): trusted.
    A Cognito identity can write only its own folder (the IAM policy variable), so the folder says which it is.

    >>> is_anonymous("eu-west-3:0d1c4b2e-6f1a-4c3e-9a52-1f0e2d3c4b5a"), is_anonymous("laptop-1")
    (True, False)
    """
    return bool(client_id) and _COGNITO_ID_RE.match(client_id) is not None


def in_device_area(under: str) -> bool:
    """Whether the folder ``under`` is (or lies in) an area devices write: what is there came from devices."""
    return device_area_at(under) is not None


def device_of(path: str, under: str) -> str | None:
    """The device whose folder ``path`` lies in (its ``client=<id>`` segment), when ``under`` names a device area
    (see :func:`device_key_problem`); None elsewhere (the job's own outputs, an operator's local folder).

    >>> device_of("s3a://b/t/vectors/model=" + "a" * 64 + "/day=2026-12-02/client=phone-1/part-x.parquet",
    ...           "s3a://b/t/vectors/")
    'phone-1'
    >>> device_of("file:/home/me/v.parquet", "/home/me")
    """
    from urllib.parse import urlparse

    if not in_device_area(under):
        return None
    base = [p for p in urlparse(under).path.split("/") if p]
    for part in [p for p in urlparse(path).path.split("/") if p][len(base) - 1:]:
        if part.startswith("client="):
            return part[len("client="):]
    return None


def check_key_length(key: str) -> str:
    """A key S3 can store: at most :data:`MAX_KEY_BYTES` bytes of UTF-8."""
    n = len(key.encode("utf-8"))
    if n > MAX_KEY_BYTES:
        raise LayoutError(f"the key would be {n} bytes, over S3's limit of {MAX_KEY_BYTES} (a long label, client "
                          f"id or prefix?): {key[:80]}...")
    return key


def area_of(root: str, key: str) -> Area | None:
    """The area a key belongs to (by its globs), or ``None`` for a key no area holds.

    >>> area_of("team", vectors_object_key("team", "a" * 64, "p", ["x"])).name
    'vectors'
    """
    import fnmatch

    root = check_root(root)
    rel = key[len(root) + 1:] if root and key.startswith(root + "/") else (key if not root else None)
    if rel is None:
        return None
    for a in AREAS:
        if any(fnmatch.fnmatchcase(rel, expand_glob(g)) for g in a.globs):
            return a
    return None
