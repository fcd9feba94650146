"""The loop on one machine: ``./run web`` with no bucket serves the phones' web app against a local stack.

    ./run web                         the local stack (started or reused), a first projection published if none is,
                                      the app on http://127.0.0.1:8000/ contributing to it; Ctrl-C stops
    ./run web --refresh-every 60      the same, and the daily refresh's chain every 60 minutes
    ./run web refresh                 the refresh chain once (featurize -> pca --incremental -> publish -> report)
    ./run web stack [--stop]          where the local stack is and what it holds (--stop: stop a left-over one)
    ./run web serve --bucket B ...    a real bucket (see ``./run web serve --help``); build, vectorize: as before

The local stack is the demo's server (moto on 127.0.0.1, :mod:`demo.s3server`): S3 and Cognito on one port, its
objects and identities kept in ``.cache/local-stack/data`` (``FRUITS_LOCAL_STACK``) (write-through; they survive a restart). The refresh is the
chain the EMR Serverless schedule runs (:func:`bootstrap.emr.job_chain`), here in local mode.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from contract.errors import EXIT_HELD, FruitsError, add_command, main_parser, one_line, run_cli
from demo.s3server import TEST_CREDENTIALS, LocalS3, free_port

ROOT = Path(__file__).resolve().parent.parent


def stack_folder() -> Path:
    """Where the local stack keeps its data: ``FRUITS_LOCAL_STACK``, else ``.cache/local-stack`` in the checkout."""
    return Path(os.environ.get("FRUITS_LOCAL_STACK") or ROOT / ".cache" / "local-stack")

BUCKET, PREFIX, REGION = "fruits-local", "fruits", "us-east-1"
POOL_NAME = "fruits_devices"
SEED_CLIENT = "operator-seed"          # a keyed device folder: the trusted tier (cloud_pca.trust)
SEED_PHOTOS = (ROOT / "data" / "fruits360" / "Training", ROOT / "data" / "grocery" / "train")  # lab + shop: the first fit
SEED_WITHOUT = ("Plum",)               # left out of the first fit: a fruit a person can teach the page
PUBLISH_K = 32
LOCK_WAIT_S = 60.0                     # a second process waits this long for the first to start the folder's server


class StackError(FruitsError, RuntimeError):
    """The local stack cannot start or be reached; says why."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def _answers(url: str) -> bool:
    import urllib.request

    if not url.startswith("http://127.0.0.1:"):
        return False
    try:
        urllib.request.urlopen(url + "/moto-api/", timeout=2).close()
        return True
    except OSError:
        return False


@dataclass
class LocalStack:
    """``with LocalStack() as stack:`` the server running on ``stack.endpoint``, reused when one already runs on the
    folder (another ``./run web``, a refresh), else started, and then stopped at the end."""

    folder: Path = field(default_factory=stack_folder)
    say: object = field(default=lambda m: None)
    endpoint: str = ""
    started: LocalS3 | None = None

    @property
    def info_path(self) -> Path:
        return self.folder / "server.json"

    def running(self) -> dict | None:
        """The server already running on this folder: {pid, port, endpoint}, or None."""
        try:
            info = json.loads(self.info_path.read_text())
        except (OSError, ValueError):
            return None
        if isinstance(info, dict) and info.get("pid") and _alive(int(info["pid"])) and _answers(info.get("endpoint", "")):
            return info
        return None

    def __enter__(self) -> "LocalStack":
        for k, v in TEST_CREDENTIALS.items():   # moto takes any keys; never a real account's
            os.environ.setdefault(k, v)
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        self.folder.mkdir(parents=True, exist_ok=True)
        # One stack per data folder: the process that starts its server holds the folder's lock for as long as the
        # server runs; another one waits for it to answer and reuses it (two servers on one folder would each write
        # their own view of the bucket over the other's).
        deadline = time.monotonic() + LOCK_WAIT_S
        while True:
            info = self.running()
            if info:
                self._unlock()
                self.endpoint = info["endpoint"]
                self.say(f"[stack] reusing the local stack at {self.endpoint} (pid {info['pid']})")
                return self
            if self._lock():
                if self.running():
                    continue          # started by the holder before us: reuse it
                break
            if time.monotonic() > deadline:
                raise StackError(f"another process holds the local stack's folder {self.folder} (its lock file "
                                 f"{self.folder / 'stack.lock'}) and its server did not answer within "
                                 f"{LOCK_WAIT_S:.0f} s: stop that process, or use another folder (FRUITS_LOCAL_STACK)")
            time.sleep(0.5)
        try:
            self._start()
        except BaseException:
            self._unlock()
            raise
        return self

    def _lock(self) -> bool:
        import fcntl

        if getattr(self, "_lock_file", None) is not None:
            return True
        f = open(self.folder / "stack.lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.close()
            return False
        self._lock_file = f
        return True

    def _unlock(self) -> None:
        f = getattr(self, "_lock_file", None)
        if f is not None:
            f.close()             # (closing releases the lock)
            self._lock_file = None

    def _start(self) -> None:
        from demo.s3server import DamagedStore, Persisted

        data = self.folder / "data"
        if data.is_dir():
            try:
                Persisted(data).check()   # a damaged file is one error here, before anything is served or written
            except DamagedStore as exc:
                raise StackError(str(exc)) from None
        try:
            port = int(json.loads(self.info_path.read_text()).get("port", 0)) or free_port()
        except (OSError, ValueError):
            port = free_port()
        try:
            self.started = LocalS3(port, mode="process", state=self.folder / "data").start()
        except RuntimeError:
            try:      # the port taken (another program): any free one
                self.started = LocalS3(free_port(), mode="process", state=self.folder / "data").start()
            except RuntimeError as exc:
                raise StackError(f"the local stack's server did not start on {self.folder / 'data'}: {exc}") from None
        self.endpoint = self.started.endpoint_url
        self.info_path.write_text(json.dumps({"pid": self.started._proc.pid, "port": self.started.port,
                                              "endpoint": self.endpoint, "data": str(self.folder / "data")}))
        self.say(f"[stack] started the local stack (S3 + Cognito, moto) at {self.endpoint}; its data: "
                 f"{self.folder / 'data'}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def lost(self) -> bool:
        """Whether the server this stack used has stopped (killed, or stopped by the ./run web that started it)."""
        if self.started is not None and self.started._proc is not None:
            return self.started._proc.poll() is not None
        return not _answers(self.endpoint)

    def stop(self) -> None:
        if self.started is not None:
            self.started.stop()
            self.started = None
            self.info_path.write_text(json.dumps({"port": int(self.endpoint.rsplit(":", 1)[1])}))   # the port again
        self._unlock()

    # ------------------------------------------------------------------------------------------------ clients
    def client(self, service: str):
        import boto3

        return boto3.Session(**{k.lower(): v for k, v in TEST_CREDENTIALS.items() if k != "AWS_DEFAULT_REGION"},
                             region_name=REGION).client(service, endpoint_url=self.endpoint)

    @property
    def root(self) -> str:
        return f"s3://{BUCKET}/{PREFIX}"

    def ensure(self, web_origins: list[str]) -> str:
        """The bucket (CORS for ``web_origins``), the model and its card under ``models/``, the operator's fruit catalog
        (the project's, when there is none: ``models/catalog.json``, which the next publish copies) and the devices'
        identity pool; returns the pool id (the same across restarts)."""
        from bootstrap.emr import CATALOG
        from bootstrap.policies import bucket_cors
        from contract.layout import catalog_source_key, model_key
        from models import model_path

        s3 = self.client("s3")
        if BUCKET not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
            s3.create_bucket(Bucket=BUCKET)
        if web_origins:
            s3.put_bucket_cors(Bucket=BUCKET, CORSConfiguration=bucket_cors(web_origins))
        model = model_path()
        for path, key in ((model, model_key(PREFIX, model.name)),
                          (model.with_suffix(".json"), model_key(PREFIX, model.with_suffix(".json").name)),
                          (CATALOG, catalog_source_key(PREFIX))):
            try:
                s3.head_object(Bucket=BUCKET, Key=key)
            except s3.exceptions.ClientError:
                s3.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        cognito = self.client("cognito-identity")
        pools = [p for p in cognito.list_identity_pools(MaxResults=60)["IdentityPools"]
                 if p["IdentityPoolName"] == POOL_NAME]
        if pools:
            return pools[0]["IdentityPoolId"]
        return cognito.create_identity_pool(IdentityPoolName=POOL_NAME,
                                            AllowUnauthenticatedIdentities=True)["IdentityPoolId"]

    def config(self, pool: str) -> dict:
        from web.server import page_config

        return page_config(bucket=BUCKET, prefix=PREFIX, identity_pool=pool, endpoint_url=self.endpoint,
                           region=REGION)

    def published(self) -> dict | None:
        """The pointer to the projection published for the committed model, or None."""
        from contract.card import load_model_card
        from contract.layout import latest_projection_key
        from models import model_path

        sha = load_model_card(model_path()).sha256
        try:
            body = self.client("s3").get_object(Bucket=BUCKET, Key=latest_projection_key(PREFIX, sha))["Body"].read()
        except Exception:
            return None
        return json.loads(body)

    def holds(self) -> dict:
        """Objects and bytes per area of the dataset, and the identities of the pool."""
        s3, out = self.client("s3"), {}
        for area in ("vectors", "raw", "models", "pca"):
            n = size = 0
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{PREFIX}/{area}/"):
                for o in page.get("Contents", []):
                    n, size = n + 1, size + o["Size"]
            out[area] = (n, size)
        cognito = self.client("cognito-identity")
        pools = [p for p in cognito.list_identity_pools(MaxResults=60)["IdentityPools"]
                 if p["IdentityPoolName"] == POOL_NAME]
        out["identities"] = (len(cognito.list_identities(IdentityPoolId=pools[0]["IdentityPoolId"], MaxResults=60)
                                 ["Identities"]) if pools else 0)
        return out

    # ------------------------------------------------------------------------------------------------ the loop
    def seed(self, *, photos=SEED_PHOTOS, without: tuple[str, ...] = SEED_WITHOUT) -> None:
        """Real photos (folders of fruit folders; the project's lab frames and shop photos by default) vectorized by
        the Python edge and sent as the operator's keyed device (the trusted tier): what the first projection is fitted
        on. Fruits in ``without`` are left out, for the page to teach."""
        import tempfile

        from edge_client.cli import main as edge_main

        photos = [Path(photos)] if isinstance(photos, (str, Path)) else [Path(p) for p in photos]
        for folder in photos:
            if not folder.is_dir():
                raise StackError(f"--seed-photos {folder}: not a folder of fruit folders")
        fruits = [(i, d.name) for i, folder in enumerate(photos) for d in sorted(folder.iterdir())
                  if d.is_dir() and d.name not in without]
        if not fruits:
            raise StackError(f"--seed-photos {', '.join(map(str, photos))}: no fruit folders" + (" left" if without else ""))
        names = sorted({f for _, f in fruits})
        self.say(f"[stack] nothing published yet: fitting a first projection on the photos of {len(names)} fruits in "
                 f"{', '.join(map(str, photos))} ({', '.join(names)}" + (f"; not {', '.join(without)}" if without else "")
                 + f"), sent as the operator's device '{SEED_CLIENT}'")
        with tempfile.TemporaryDirectory(prefix="fruits-seed-") as tmp:
            chosen = Path(tmp) / "photos"        # the fruits' folders linked under one root: labels from folder names
            for i, fruit in fruits:
                (chosen / str(i)).mkdir(parents=True, exist_ok=True)
                (chosen / str(i) / fruit).symlink_to((photos[i] / fruit).resolve(), target_is_directory=True)
            code = edge_main(["--quiet", "sync", str(chosen), self.root, "--endpoint-url", self.endpoint,
                              "--client-id", SEED_CLIENT, "--manifest", str(Path(tmp) / "m.sqlite")])
            if code != 0:
                raise StackError(f"uploading the seed photos' vectors failed (fruits-edge exit {code})")

    def refresh(self, *, run_id: str | None = None) -> dict:
        """The refresh chain (:func:`bootstrap.emr.job_chain`, incremental, with publish and report) in local mode, in
        this process; returns {run_id, steps: [(name, seconds)], summary, published}."""
        from bootstrap.emr import ClusterSpec, job_chain
        from cloud_pca.cli import main as cloud_main

        s3 = self.client("s3")
        raw = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/raw/", MaxKeys=1).get("KeyCount", 0) > 0
        run_id = run_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        spec = ClusterSpec(bucket=BUCKET, prefix=PREFIX, images=raw, incremental=True, publish_k=PUBLISH_K,
                           run_id=run_id)
        steps, held = [], None
        for step in job_chain(spec):
            self.say(f"[refresh] {step.name}")
            t = time.perf_counter()
            said = io.StringIO()          # the step's own "Error: ..." becomes part of the one line said below
            try:
                with contextlib.redirect_stderr(said):
                    code = cloud_main(["--quiet", "--endpoint-url", self.endpoint, *step.args])
            finally:
                kept = [line for line in said.getvalue().splitlines() if not line.startswith("Error: ")]
                if kept:
                    print("\n".join(kept), file=sys.stderr)
            steps.append((step.name, time.perf_counter() - t))
            if code == EXIT_HELD and step.args[0] == "publish":   # the report still shows why; then it says HELD
                held = step
                continue
            if code != 0:
                errors = [line[len("Error: "):] for line in said.getvalue().splitlines() if line.startswith("Error: ")]
                raise StackError(f"the refresh stopped at '{step.name}' (exit {code}"
                                 + (f": {errors[-1]}" if errors else "") + "); the projection in force is unchanged")
        from contract.layout import run_prefix

        summary = json.loads(s3.get_object(Bucket=BUCKET, Key=run_prefix(PREFIX, run_id) + "summary.json")["Body"]
                             .read())
        record = None
        if held is not None:
            record = json.loads(s3.get_object(Bucket=BUCKET, Key=run_prefix(PREFIX, run_id) + "publish.json")["Body"]
                                .read())
        return {"run_id": run_id, "steps": steps, "summary": summary, "published": self.published(), "held": record,
                "report": f"{self.root}/{run_prefix('', run_id).lstrip('/')}report.html"}


# ---------------------------------------------------------------------------------------------------- the CLI
def _say(args):
    return (lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))


def build_parser():
    parser = main_parser("./run web", __doc__.split("\n\n", 1)[1].replace("``", ""))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    s = add_command(sub, "local", help="serve the app against the local stack (the default)",
                    example="./run web --refresh-every 60")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--refresh-every", type=float, metavar="MINUTES",
                   help="run the refresh chain every so many minutes while serving")
    s.add_argument("--seed-photos", type=Path, action="append",
                   help="photos of the first fit, a folder per fruit (repeatable; default: the project's real lab "
                        "frames and shop photos)")
    s.add_argument("--seed-without", action="append", metavar="FRUIT",
                   help=f"a fruit folder to leave out of the first fit (repeatable; default: {', '.join(SEED_WITHOUT)})")
    r = add_command(sub, "refresh", help="run the refresh chain once against the local stack",
                    example="./run web refresh")
    r.add_argument("--run-id")
    a = add_command(sub, "accept", help="accept a label no trusted row has: one phone with earned weight may then "
                                        "teach it (fruits-cloud contributions --accept-label)",
                    example="./run web accept Plum")
    a.add_argument("label", nargs="+")
    st = add_command(sub, "stack", help="where the local stack is and what it holds", example="./run web stack")
    st.add_argument("--stop", action="store_true", help="stop a local stack left running")
    return parser


def _summary_line(result: dict) -> str:
    s, p = result["summary"], result["published"] or {}
    inc = s.get("incremental") or {}
    took = sum(t for _, t in result["steps"])
    if result.get("held"):
        t = result["held"].get("turn") or {}
        drivers = [d["device"] for d in t.get("drivers", []) if d.get("anonymous")][:3]
        return (f"HELD: refresh {result['run_id']} not published, the projection {p.get('projection_id', '?')} stays: "
                f"{t.get('why', 'held for the operator')}" + (f"; pulled by {', '.join(drivers)}" if drivers else "")
                + f". Look: fruits-cloud contributions --run {result['report'].rsplit('/', 1)[0]}; publish it: "
                  f"fruits-cloud publish --accept-turn. Report: {result['report']}")
    return (f"refresh {result['run_id']}: {inc.get('rows_added', 0)} new rows ({inc.get('rows_total', s.get('projected'))}"
            f" in all), k={s.get('k')}; published projection {p.get('projection_id', '?')} (k={p.get('k', '?')}) in "
            f"{took:.1f} s; the page uses it on its next visit. Report: {result['report']}")


def cmd_refresh(args) -> int:
    say = _say(args)
    with LocalStack(say=say) as stack:
        try:
            stack.ensure([])
            if stack.published() is None and not _has_vectors(stack):
                stack.seed()
            result = stack.refresh(run_id=args.run_id)
            print(_summary_line(result))
            if result.get("held"):
                return EXIT_HELD
        except Exception as exc:
            if stack.lost():   # the server stopped under the refresh (Ctrl-C on ./run web, killed): one line
                raise StackError(f"the local stack at {stack.endpoint} stopped during the refresh ({one_line(exc)[:300]}); "
                                 f"nothing new was published: start it again (./run web) and run ./run web refresh") \
                    from None
            raise
    return 0


def _has_vectors(stack: LocalStack) -> bool:
    return stack.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}/vectors/", MaxKeys=1).get("KeyCount",
                                                                                                        0) > 0


def cmd_accept(args) -> int:
    from cloud_pca.cli import main as cloud_main
    from contract.layout import pca_prefix

    with LocalStack(say=_say(args)) as stack:
        stack.ensure([])
        return cloud_main(["--quiet", "--endpoint-url", stack.endpoint, "contributions", "--output",
                           f"s3://{BUCKET}/{pca_prefix(PREFIX).rstrip('/')}",
                           *[x for label in args.label for x in ("--accept-label", label)]])


def cmd_stack(args) -> int:
    stack = LocalStack(say=_say(args))
    info = stack.running()
    if args.stop:
        if not info:
            print("no local stack is running")
            return 0
        import signal

        os.kill(int(info["pid"]), signal.SIGTERM)
        stack.info_path.write_text(json.dumps({"port": info["port"]}))
        print(f"stopped the local stack (pid {info['pid']})")
        return 0
    with stack:
        held = stack.holds()
        print(f"local stack at {stack.endpoint}, data in {stack.folder / 'data'}")
        for area in ("vectors", "raw", "models", "pca"):
            n, size = held[area]
            print(f"  s3://{BUCKET}/{PREFIX}/{area}/: {n} objects, {size / 1e6:.1f} MB")
        print(f"  identity pool {POOL_NAME}: {held['identities']} device identities")
        p = stack.published()
        print(f"  published: {p['projection_id']} (k={p['k']}, from run {p.get('run')})" if p else "  nothing published")
    return 0


def cmd_local(args) -> int:
    from web.build import build
    from web.server import WebServer

    say = _say(args)
    say("[web] building the app (npm packages from package-lock.json)")
    dist = build()
    with LocalStack(say=say) as stack:
        origin = f"http://127.0.0.1:{args.port}"
        pool = stack.ensure([origin, origin.replace("127.0.0.1", "localhost")])
        if stack.published() is None:
            if not _has_vectors(stack):
                stack.seed(photos=args.seed_photos or SEED_PHOTOS, without=tuple(args.seed_without or SEED_WITHOUT))
            code, line = refresh_process(say=say)
            if code != 0:
                raise StackError(f"the first refresh failed: {line}")
        try:
            server = WebServer(dist, stack.config(pool), host="127.0.0.1", port=args.port).start()
        except OSError as exc:
            raise FruitsError(f"cannot listen on 127.0.0.1:{args.port} ({exc.strerror or exc}); try --port") from None
        try:
            p = stack.published()
            print(f"serving {dist} on {server.url}")
            print(f"contributing to {stack.root} on the local stack {stack.endpoint} (kept in {stack.folder / 'data'}); "
                  f"identifying with projection {p['projection_id']} (k={p['k']})")
            print("refresh the model: ./run web refresh" + (f" (also every {args.refresh_every:g} minutes here)"
                                                             if args.refresh_every else ""))
            stop = threading.Event()
            if args.refresh_every:
                threading.Thread(target=_refresh_loop, args=(stack, args.refresh_every * 60, stop, say),
                                 name="refresh-every", daemon=True).start()
            try:
                while not stop.wait(3600):
                    pass
            except KeyboardInterrupt:
                pass
            finally:
                stop.set()
        finally:
            server.stop()
    return 0


def refresh_process(*, say=None, quiet: bool = False) -> tuple[int, str]:
    """``./run web refresh`` as a scheduled job runs it: a fresh process (Spark's JVM started and stopped with it), on
    the stack this process runs (it finds it in the folder). Its progress goes to our stderr unless ``quiet``; returns
    (exit code, its last line: ``HELD: ...`` with exit code :data:`contract.errors.EXIT_HELD` when nothing was
    published)."""
    import subprocess

    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "demo.stack", *(["--quiet"] if quiet else []), "refresh"], cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE if quiet else None, text=True)
    out = done.stdout.strip().splitlines()
    line = out[-1] if done.returncode in (0, EXIT_HELD) and out else \
        f"exit {done.returncode}: {((done.stderr or '').strip().splitlines() or out or [''])[-1]}"
    if say:
        say(f"[refresh] {line} ({time.perf_counter() - t:.1f} s with start-up)")
    return done.returncode, line


def _refresh_loop(stack: LocalStack, every_s: float, stop: threading.Event, say) -> None:
    """Every ``every_s`` seconds, never two at once (the next waits for the previous to end)."""
    while not stop.wait(every_s):
        refresh_process(say=say, quiet=True)


WEB_COMMANDS = ("build", "serve", "vectorize")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in WEB_COMMANDS or any(a in ("--bucket", "--config", "--host", "--https") or
                                               a.startswith(("--bucket=", "--config=", "--host="))
                                               for a in argv):
        from web.__main__ import main as web_main

        return web_main(argv)
    if not any(a in ("local", "refresh", "stack", "accept", "--help", "-h") for a in argv):
        argv = ["local", *argv]          # `./run web [options]`: the local stack (`--quiet refresh` is the refresh)
    return run_cli(build_parser(), {"local": cmd_local, "refresh": cmd_refresh, "stack": cmd_stack, "accept": cmd_accept}, argv)


if __name__ == "__main__":
    sys.exit(main())
