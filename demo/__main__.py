"""The whole architecture on one machine, no cloud account: photos -> devices -> S3 -> Spark -> report.

    ./run demo [--photos DIR [--test DIR]] [--never-sent 3] [--raw-fraction 0.2] [--out out/demo]
    ./run demo --synthetic [--per-class N]                              # synthetic photos (controlled, easy)
    ./run demo --s3 s3://my-bucket/fruits-demo [--endpoint-url URL]     # any real S3 instead

1. photos: the project's real lab and shop photos (``data/fruits360/Training`` and ``data/grocery/train`` are sent;
   ``Test/`` and ``val/`` are identified at the end, split so that no film or photo session is on both sides: the lab
   frames of one film, ``r_``, are never sent and only they are identified; a few fruits are never sent, so their
   photos show "unknown"), or ``--photos`` (folders of labelled photos), or ``--synthetic``;
2. a local S3-compatible server on 127.0.0.1 (moto, a child process; always stopped at the end);
3. three kinds of devices: ``fruits-edge sync`` (Python, vectorizes on the device, uploads only vectors), a
   phone's web app in headless Chromium (LiteRT.js in the page, its own Cognito identity; where Chromium is
   installed), and ``fruits-edge upload-raw`` (devices that cannot vectorize);
4. Spark local mode reads both through ``s3a://``, featurizes the raw photos with the same TFLite model,
   fits StandardScaler + PCA, writes results and plots to the bucket;
5. publish a 32-component projection and index; a device identifies the test photos from them (known fruits
   and never-sent ones, with figures); results are copied to ``OUT/results`` and summarized in ``OUT/report.html``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

from demo.s3server import TEST_CREDENTIALS, LocalS3, prefix_bytes

BUCKET = "fruits-demo"
REAL = Path(__file__).resolve().parent.parent / "data" / "fruits360"
SHOP = Path(__file__).resolve().parent.parent / "data" / "grocery"
TEST_OF = {"Training": "Test", "train": "val"}       # a photos folder's held-out sibling


def stage(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def split_photos(src: Path, dirs: dict[str, Path], raw_fraction: float, browser_fraction: float = 0.0,
                 held_per_class: int = 2, never_sent: tuple[str, ...] = (), keep=None) -> dict[str, int]:
    """Every class folder split four ways: ``held_per_class`` photos held out (identified at the end, never
    uploaded); of the rest, about ``raw_fraction`` to the raw-upload devices, ``browser_fraction`` to the web app's
    phone, the others to the Python edge. ``dirs``: a folder for each of "edge", "browser", "raw", "held". Classes in
    ``never_sent`` go to "held" whole. ``keep``: which file names are dealt at all (a film-disjoint split)."""
    from featurizer.preprocess import IMAGE_EXTENSIONS

    counts = {"edge": 0, "browser": 0, "raw": 0, "held": 0}
    per_class: dict[str, int] = {}
    cycle = 20                       # photos are dealt in rounds of 20: so many of each kind per round
    n_raw = round(raw_fraction * cycle)
    n_browser = round(browser_fraction * cycle)
    for path in sorted(src.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS or keep and not keep(path.name):
            continue
        rel = path.relative_to(src)
        seen = per_class.get(str(rel.parent), 0)
        per_class[str(rel.parent)] = seen + 1
        if rel.parent.name in never_sent or seen < held_per_class and rel.parent != Path("."):
            kind = "held"
        else:
            turn = (counts["edge"] + counts["browser"] + counts["raw"]) % cycle
            kind = "raw" if turn < n_raw else "browser" if turn < n_raw + n_browser else "edge"
        target = dirs[kind] / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        counts[kind] += 1
    return counts


def set_name(folder: Path) -> str:
    """A set of photos by its folder's last two names: "fruits360-Test" (lab frames), "grocery-val" (shop photos)."""
    return f"{folder.parent.name}-{folder.name}"


def identify_held_out(held: Path, s3, bucket: str, root: str, endpoint: str | None, never: list[str]) -> dict:
    """Photos never uploaded (lab frames of a film never sent, the shop's val photos, and fruits never sent),
    identified on the 'device' from what the cloud published, as `fruits-edge identify` does; with figures, per fruit,
    per set (``held/<set>/``: lab frames, shop photos) and in all, at the label and the species level."""
    from edge_client.project import Published, figures, identify_photos
    from edge_client.vectorize import find_photos
    from featurizer.runtime import Model
    from models import model_path

    model = Model(model_path(), threads=1)
    projection, index, catalog = Published(f"s3://{bucket}/{root}", client=s3,
                                           endpoint_url=endpoint).published(model.sha256)
    answers = identify_photos(find_photos([held]), model, projection, index)
    pairs = [(a.truth, a.answer.answer) for a in answers if a.answer is not None and a.truth]
    species = dict(zip(index.labels, index.species))

    def species_of(label: str) -> str:
        return species.get(label) or (catalog.species(label) if catalog else None) or label.split()[0]

    where = {a.path: Path(a.path).relative_to(held).parts for a in answers}
    per_set = {}
    if answers and all(len(parts) > 2 for parts in where.values()):    # held/<set>/<fruit>/<photo>
        for name in sorted({parts[0] for parts in where.values()}):
            rows = [(a.truth, a.answer.answer, a.answer.candidates) for a in answers
                    if a.answer is not None and a.truth and where[a.path][0] == name]
            per_set[name] = figures(rows, set(index.labels), species_of)
    per_fruit = []
    for fruit in sorted({t for t, _ in pairs}):
        got = [a for t, a in pairs if t == fruit]
        per_fruit.append({"fruit": catalog.name(fruit, with_label=True) if catalog else fruit,
                          "sent": "yes" if fruit in index.labels else "never", "photos": len(got),
                          "named right": sum(a == fruit for a in got),
                          "wrong name": sum(a not in (fruit, "unknown") and not a.startswith("not sure: ") for a in got),
                          "unknown": got.count("unknown"), "not sure": sum(a.startswith("not sure: ") for a in got)})
    return {"figures": figures(pairs, set(index.labels), species_of), "per_set": per_set, "per_fruit": per_fruit,
            "k": projection.k,
            "projection_id": projection.projection_id, "index_id": index.index_id, "classes": len(index.labels),
            "never_sent": never, "calibration": index.calibration, "photos": len(pairs),
            "rows": [{"photo": a.path.rsplit("/", 2)[-2] + "/" + a.path.rsplit("/", 1)[-1], "answer": a.answer.answer,
                      "score": round(a.answer.score, 3)} for a in answers if a.answer is not None]}


def write_report(spark, run_uri: str, out: Path, storage: dict, stage_s: dict, identified: dict | None = None) -> Path:
    """The run's report, made by ``fruits-cloud report`` (the same code, so the same page an EMR run gets), with
    the demo's own facts after it: what each kind of device sent and stored, and the held-out photos identified."""
    from cloud_pca.report import write_report as run_report

    def demo_sections(page) -> None:
        page.heading("The demo's devices: what each kind sent and stored")
        page.table(storage["devices"])
        page.table([
            {"path": "Python edge and web app: vectors (zstd Parquet)", "objects": storage["vector_objects"],
             "bytes": storage["vector_bytes"],
             "bytes per image": round(storage["vector_bytes"] / max(1, storage["edge_images"]))},
            {"path": "raw photos (JPEG)", "objects": storage["raw_objects"], "bytes": storage["raw_bytes"],
             "bytes per image": round(storage["raw_bytes"] / max(1, storage["raw_objects"]))}])
        page.text("Each kind made its vectors with the same .tflite (one fingerprint): the Python edge with LiteRT, "
                  "the phone's web app with LiteRT.js in the page, the server from raw photos with LiteRT in Spark. "
                  "For 100x100 thumbnails a vector is about as big as the photo; the saving of uploading vectors is "
                  "for phone photos (see ./run bench compare).", note=True)
        if identified is not None:
            f = identified["figures"]["label"]
            page.heading("Identification on the device (fruits-edge identify)")
            page.text(f"{identified['photos']} photos never uploaded, identified from the published "
                      f"{identified['k']}-component projection {identified['projection_id']} and index "
                      f"{identified['index_id']} ({identified['classes']} fruits). Fruits it knows "
                      f"({f['known_photos']} photos): named right {_pct(f['named_right'])}, wrong {_pct(f['wrong'])}, "
                      f"unknown {_pct(f['unknown'])}, not sure {_pct(f['not_sure'])}; of named answers "
                      f"{_pct(f['precision'])} right. Fruits never sent ({', '.join(identified['never_sent']) or 'none'}"
                      f"; {f['never_sent_photos']} photos): answered unknown or not sure {_pct(f['never_sent_refused'])}.")
            page.table(identified["per_fruit"])
        page.heading("The demo's stages (seconds)")
        page.table([{"stage": k, "seconds": round(v, 2)} for k, v in stage_s.items()])

    return Path(run_report(spark, run_uri, str(out / "report.html"), extra=demo_sections))


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


_INTERRUPTED = []


def _interrupt(signum, frame):
    _INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def pick_never_sent(sources: list[Path], n: int) -> list[str]:
    """``n`` fruits of the photo folders never sent: the classes the model's fine-tuning held out (its card names
    them: photos the backbone never saw, so "unknown" is earned, as in ``./run bench identify``), taken in turn from
    each folder (lab, then shop), in a seeded order; the rest, if the card names too few, of the other fruits."""
    import numpy as np

    from contract.card import load_model_card
    from edge_client.project import never_sent
    from models import model_path

    held = set((load_model_card(model_path()).weights.get("fine_tuned") or {}).get("held_out") or [])
    folders = [sorted(d.name for d in src.iterdir() if d.is_dir()) for src in sources]
    pools = [list(np.random.RandomState(i).permutation([f for f in names if f in held])) for i, names in
             enumerate(folders)]
    if n <= 0 or not any(pools):
        return never_sent(sorted({f for names in folders for f in names}), n)
    chosen: list[str] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            while pool and pool[0] in chosen:
                pool.pop(0)
            if pool and len(chosen) < n:
                chosen.append(str(pool.pop(0)))
    rest = sorted({f for names in folders for f in names} - set(chosen))
    return sorted(chosen + never_sent(rest, n - len(chosen)))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="./run demo", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, action="append",
                    help="a folder of labelled photos, a folder per fruit (repeatable; default: the project's real photos, "
                         "lab frames data/fruits360/Training and shop photos data/grocery/train)")
    ap.add_argument("--test", type=Path, action="append",
                    help="photos to identify at the end, never uploaded (repeatable; default: the Test or val folder "
                         "beside each --photos, else 2 photos of each fruit held out of --photos)")
    ap.add_argument("--never-sent", type=int, default=3,
                    help="fruits of --photos never sent, so that identifying their photos shows 'unknown' (default 3: "
                         "classes the model's fine-tuning held out, taken in turn from each --photos folder)")
    ap.add_argument("--synthetic", action="store_true", help="synthetic photos instead (10 fruits; easy: use them for "
                                                             "the pipeline, not for accuracy)")
    ap.add_argument("--per-class", type=int, default=100, help="with --synthetic: photos per class")
    ap.add_argument("--raw-fraction", type=float, default=0.2, help="share of photos uploaded raw (default 0.2)")
    ap.add_argument("--browser-fraction", type=float, default=0.2,
                    help="share of photos vectorized by the web app in headless Chromium (default 0.2; 0 where "
                         "Chromium is missing, and with --s3, which has no identity pool for it)")
    ap.add_argument("--out", type=Path, default=Path("out/demo"))
    ap.add_argument("--solver", default="gram", choices=("gram", "spark"))
    ap.add_argument("--master", help="Spark master: local[2] (default) or a cluster, e.g. spark://127.0.0.1:7077 "
                                     "from `./run cluster start`")
    ap.add_argument("--s3", help="use this S3 location (s3://BUCKET/PREFIX) instead of a local server")
    ap.add_argument("--endpoint-url", help="with --s3: an S3-compatible endpoint (default AWS)")
    return ap


def parse_args(argv):
    args = build_parser().parse_args(argv)
    if not 0 <= args.raw_fraction < 1:
        raise SystemExit(f"Error: --raw-fraction {args.raw_fraction} must be in [0, 1)")
    if not 0 <= args.browser_fraction < 1 or args.raw_fraction + args.browser_fraction >= 1:
        raise SystemExit(f"Error: --browser-fraction {args.browser_fraction} must be in [0, 1), and with "
                         f"--raw-fraction leave some photos to the Python edge")
    if args.synthetic and args.photos:
        raise SystemExit("Error: give --photos or --synthetic, not both")
    if not args.synthetic and args.photos is None:
        args.photos = [REAL / "Training", SHOP / "train"]
    for folder in args.photos or []:
        if not folder.is_dir():
            raise SystemExit(f"Error: --photos {folder} is not a folder")
    if args.test is None and args.photos:
        siblings = [p.parent / TEST_OF[p.name] for p in args.photos if p.name in TEST_OF]
        if siblings and all(s.is_dir() for s in siblings) and len(siblings) == len(args.photos):
            args.test = siblings
    for folder in args.test or []:
        if not folder.is_dir():
            raise SystemExit(f"Error: --test {folder} is not a folder")
    if args.never_sent < 0:
        raise SystemExit(f"Error: --never-sent {args.never_sent} must be at least 0")
    return args


class Demo:
    """The demo's stages, in order; every process a stage starts is stopped by ``stack`` (also on failure)."""

    def __init__(self, args, stack: ExitStack):
        self.args, self.stack = args, stack
        self.out = args.out.resolve()
        self.stage_s: dict[str, float] = {}
        self.bucket, self.root = BUCKET, "team"
        self.endpoint = None
        self.s3 = self.spark = None
        self.never: list[str] = []

    def timed(self, name: str, fn):
        t = time.perf_counter()
        result = fn()
        self.stage_s[name] = time.perf_counter() - t
        return result

    def photos(self) -> dict[str, int]:
        from featurizer.preprocess import film_split
        from web.device import have_browser

        if self.args.photos:
            sources = [p.resolve() for p in self.args.photos]
            stage(f"1/5 photos: {', '.join(map(str, sources))}" + (
                f"; identified at the end: {', '.join(str(p.resolve()) for p in self.args.test)}" if self.args.test
                else ""))
        else:
            from models.synthetic import generate

            stage(f"1/5 generating {self.args.per_class * 10} synthetic fruit photos")
            sources = [generate(self.out / "photos", per_class=self.args.per_class, progress=True)]
        self.never = pick_never_sent(sources, self.args.never_sent) if self.args.photos else []
        browser = self.args.browser_fraction
        if browser and self.args.s3:
            stage("    no browser phone with --s3 (it needs an identity pool): its photos go to the Python edge")
            browser = 0.0
        elif browser and not have_browser():
            stage("    no Chromium here (./run setup installs it): the browser phone's photos go to the Python edge")
            browser = 0.0
        dev = self.out / "devices"
        counts = {"edge": 0, "browser": 0, "raw": 0, "held": 0}
        for src in sources:
            got = split_photos(src, {k: dev / k for k in ("edge", "browser", "raw", "held")}, self.args.raw_fraction,
                               browser, held_per_class=0 if self.args.test else 2, never_sent=tuple(self.never),
                               keep=film_split(src, test=False) if self.args.test else None)
            counts = {k: counts[k] + got[k] for k in counts}
        if counts["edge"] + counts["browser"] + counts["raw"] == 0:
            raise DemoError(f"no photos under {', '.join(map(str, sources))}")
        if self.args.test:     # what the device identifies: the test folders (never-sent fruits' photos in them)
            shutil.rmtree(dev / "held", ignore_errors=True)
            for test in self.args.test:     # held/<set>/<fruit>/<photo>: the figures per set
                keep = film_split(test.resolve(), test=True)   # lab frames: only the film no sent frame is of
                shutil.copytree(test.resolve(), dev / "held" / set_name(test.resolve()), ignore=None if keep is None
                                else lambda d, names: [n for n in names if (Path(d) / n).is_file() and not keep(n)])
            counts["held"] = sum(1 for p in (dev / "held").rglob("*") if p.is_file())
        stage(f"    {counts['edge']} photos on Python devices that vectorize, {counts['browser']} on a phone's web "
              f"app, {counts['raw']} on devices that upload raw photos, {counts['held']} never uploaded, to identify"
              + (f" (never sent: {', '.join(self.never)})" if self.never else ""))
        return counts

    def storage(self) -> None:
        import boto3

        if self.args.s3:
            from edge_client.upload import parse_s3_uri

            self.bucket, self.root = parse_s3_uri(self.args.s3)
            self.endpoint = self.args.endpoint_url
            stage(f"2/5 using {self.args.s3}" + (f" at {self.endpoint}" if self.endpoint else ""))
            self.s3 = boto3.client("s3", endpoint_url=self.endpoint)
            return
        for key, value in TEST_CREDENTIALS.items():  # the local server takes any; never real ones
            os.environ[key] = value
        os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
        stage("2/5 starting a local S3 server on 127.0.0.1")
        server = LocalS3(mode="process").start()
        self.stack.callback(lambda: (server.stop(), stage("local S3 server stopped")))
        self.endpoint = server.endpoint_url
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1")
        self.s3.create_bucket(Bucket=self.bucket)
        cognito = boto3.client("cognito-identity", endpoint_url=self.endpoint, region_name="us-east-1")
        self.identity_pool = cognito.create_identity_pool(IdentityPoolName="fruits_devices",
                                                          AllowUnauthenticatedIdentities=True)["IdentityPoolId"]

    def browser_phone(self) -> dict:
        """The web app as a phone: served on 127.0.0.1, opened in headless Chromium, given the photos through its
        folder input; it vectorizes them in the page and uploads with its own Cognito identity."""
        from bootstrap.policies import bucket_cors
        from web.build import build
        from web.device import Chromium
        from web.server import WebServer, page_config

        stage("    a phone's web app (headless Chromium, LiteRT.js in the page, its own Cognito identity)")
        dist = build()
        config = page_config(bucket=self.bucket, prefix=self.root, identity_pool=self.identity_pool,
                             endpoint_url=self.endpoint)
        with WebServer(dist, config) as server, Chromium() as browser:
            self.s3.put_bucket_cors(Bucket=self.bucket, CORSConfiguration=bucket_cors([server.url.rstrip("/")]))
            phone = browser.open(server.url)
            summary = phone.pick(self.out / "devices" / "browser", folder=True)
            phone.wait_uploaded()
            phone.screenshot(self.out / "browser-phone.png")
            client_id = phone.page.evaluate("fruits.clientId")
        stage(f"    the web app vectorized {summary['rows']} photos at {summary['imagesPerS']:.0f}/s in the page and "
              f"uploaded them as client {client_id}")
        return {"client_id": client_id, "rows": summary["rows"], "images_per_s": summary["imagesPerS"]}

    def devices(self, counts: dict[str, int]) -> dict:
        from edge_client.cli import main as edge_main

        common = ["--manifest", str(self.out / "upload-manifest.sqlite")] + \
            (["--endpoint-url", self.endpoint] if self.endpoint else [])
        dest = f"s3://{self.bucket}/{self.root}"
        stage("3/5 devices: fruits-edge sync (vectorize on the device, upload only the vectors)")
        code = edge_main(["sync", str(self.out / "devices" / "edge"), dest, "--client-id", "demo-phone",
                          "--keep", str(self.out / "vectors.parquet"), *common])
        if code not in (0, 3):
            raise DemoError(f"fruits-edge sync failed (exit {code})")
        browser = self.browser_phone() if counts["browser"] else None
        if counts["raw"]:
            stage("    devices without vectorization: fruits-edge upload-raw")
            code = edge_main(["upload-raw", str(self.out / "devices" / "raw"), dest, "--client-id", "demo-old-phone",
                              *common])
            if code not in (0, 3):
                raise DemoError(f"fruits-edge upload-raw failed (exit {code})")
        return {"browser": browser}

    def cloud(self, n_raw: int):
        from cloud_pca.job import JobConfig, run
        from cloud_pca.spark import get_spark
        from models import model_path

        master = self.args.master or "local[2]"
        stage(f"4/5 cloud: Spark ({master}) reads s3a://, featurizes raw photos, fits StandardScaler + PCA")
        self.spark = get_spark("fruits-demo", master=master, s3_endpoint=self.endpoint)
        spark = self.spark
        self.stack.callback(_stop_quietly, spark)
        signal.signal(signal.SIGINT, _interrupt)  # SparkContext installs its own; ours also stops everything
        base = f"s3a://{self.bucket}/{self.root}"
        return run(spark, JobConfig(inputs=[f"{base}/vectors/"], images=[f"{base}/raw/"] if n_raw else [],
                                    model_path=str(model_path()), output=f"{base}/pca", variance=0.95,
                                    solver=self.args.solver, run_id="demo", overwrite=True),
                   progress=lambda s: stage(f"    {s}"))

    def evaluate(self, result):
        from cloud_pca.evaluate import evaluate, write_evaluation

        stage("    how little must we store: fruits-cloud evaluate (held-out accuracy vs bytes per image)")
        ev = evaluate(self.spark, [f"s3a://{self.bucket}/{self.root}/vectors/"], ks=(2, 4, 8, 16, 32, 64))
        write_evaluation(self.spark, ev, f"{result.run_uri}/evaluation")   # where the EMR step writes it
        return ev

    def publish(self, result) -> None:
        from bootstrap.emr import CATALOG
        from cloud_pca.publish import publish
        from contract.layout import catalog_source_key

        self.s3.put_object(Bucket=self.bucket, Key=catalog_source_key(self.root), Body=CATALOG.read_bytes())
        k = min(32, result.summary["k"])
        stage(f"    publishing a {k}-component projection + reference index + the fruit catalog for the devices")
        publish(self.spark, result.run_uri, f"s3a://{self.bucket}/{self.root}", k=k)

    def identify(self) -> dict:
        stage("    a device identifies the photos never uploaded with fruits-edge identify")
        return identify_held_out(self.out / "devices" / "held", self.s3, self.bucket, self.root, self.endpoint,
                                 self.never)

    def copy_results(self, n_edge: int) -> dict:
        stage(f"5/5 copying results from s3://{self.bucket}/{self.root}/pca/run=demo/ and writing the report")
        prefix = f"{self.root}/pca/run=demo/"
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                target = self.out / "results" / obj["Key"][len(prefix):]
                target.parent.mkdir(parents=True, exist_ok=True)
                self.s3.download_file(self.bucket, obj["Key"], str(target))
        v_objects, v_bytes = prefix_bytes(self.s3, self.bucket, f"{self.root}/vectors/")
        r_objects, r_bytes = prefix_bytes(self.s3, self.bucket, f"{self.root}/raw/")
        return {"edge_images": n_edge, "vector_objects": v_objects, "vector_bytes": v_bytes,
                "raw_objects": r_objects, "raw_bytes": r_bytes, "devices": self.device_kinds()}

    def device_kinds(self) -> list[dict]:
        """Rows fitted per kind of device, from the run's own projections (their client_id)."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        proj = pq.read_table(self.out / "results" / "projections", columns=["client_id"])
        kinds = []
        for c in sorted(pc.value_counts(proj.column("client_id")).to_pylist(), key=lambda c: c["values"]):
            cid = c["values"]
            kind = ("server-side featurization of raw photos" if cid.startswith("server") else
                    "phone web app (LiteRT.js in Chromium)" if ":" in cid else "Python edge (fruits-edge sync)")
            kinds.append({"device kind": kind, "client_id": cid, "rows fitted": c["counts"]})
        return kinds


class DemoError(Exception):
    """A stage that failed; the message says which."""


def _stop_quietly(spark) -> None:
    try:
        spark.stop()
    except Exception:  # the JVM may already be gone after Ctrl-C
        pass


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C must reach our cleanup (stop Spark and the server) even while Java or a child runs.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    t0 = time.perf_counter()
    out = args.out.resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            demo = Demo(args, stack)
            counts = demo.timed("photos", demo.photos)
            n_edge, n_raw, n_held = counts["edge"] + counts["browser"], counts["raw"], counts["held"]
            demo.timed("s3 server", demo.storage)
            demo.timed("devices (vectorize + upload)", lambda: demo.devices(counts))
            result = demo.timed("spark job (incl. start)", lambda: demo.cloud(n_raw))
            evaluation = demo.timed("evaluate", lambda: demo.evaluate(result))
            demo.timed("publish", lambda: demo.publish(result))
            identified = demo.timed(f"identify {n_held} photos", demo.identify)
            storage = demo.timed("copy results", lambda: demo.copy_results(n_edge))
            stage("    the report: fruits-cloud report, as after any run")
            report = demo.timed("report", lambda: write_report(demo.spark, result.run_uri, out, storage, demo.stage_s,
                                                               identified))
    except KeyboardInterrupt:
        print("\nError: interrupted; Spark and the local S3 server were stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # a failed stage: say which; the stack has stopped everything
        if _INTERRUPTED:  # an error caused by the interrupt (a call cut short), not a failure of its own
            print("\nError: interrupted; Spark and the local S3 server were stopped", file=sys.stderr)
            return 130
        print(f"Error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}",
              file=sys.stderr)
        return 1
    summarize(out, result.summary, storage, evaluation, identified, report, n_edge, time.perf_counter() - t0,
              demo.stage_s)
    return 0


def summarize(out: Path, s: dict, storage: dict, evaluation, identified: dict, report: Path, n_edge: int,
              wall: float, stage_s: dict) -> None:
    from edge_client.project import lab_film_seen, share_interval

    (out / "demo-summary.json").write_text(json.dumps({**s, "storage": storage, "stages_s": stage_s,
                                                       "wall_s": wall, "identified": identified}, indent=1))
    print()
    print(f"report:   {report}")
    print(f"results:  {out / 'results'} (projections, model, plots, summary.json)")
    print(f"devices:  {n_edge} photos sent as vectors ({storage['vector_bytes'] / max(1, n_edge):.0f} B/image), "
          f"{storage['raw_objects']} sent raw ({storage['raw_bytes'] / max(1, storage['raw_objects']):.0f} B/image), "
          f"featurized by Spark")
    print("kinds:    " + "; ".join(f"{d['device kind']}: {d['rows fitted']} rows" for d in storage["devices"]))
    print(f"rows:     {s['rows_in']} in = {s['projected']} projected + {s['rejected']} rejected + "
          f"{s['duplicates']} duplicates")
    print(f"PCA:      k={s['k']} components keep {s['cumulative_explained_variance']:.1%} of the variance "
          f"of 1280-d vectors ({s['solver']} solver)")
    for clf, a in evaluation.answer.items():
        print(f"store:    {clf}: {a['sentence']}")
    print(f"identify: {identified['photos']} photos never uploaded, from a {identified['k']}-component projection "
          f"and index published to the bucket (species level: the catalog's fruit)")
    for name, figs in (identified.get("per_set") or {"all": identified["figures"]}).items():
        f = figs["species"]
        print(f"          {name}: known fruits ({f['known_photos']} photos) named right {_pct(f['named_right'])}"
              f"{share_interval(f['named_right'], f['known_photos'])}, wrong {_pct(f['wrong'])}, refused "
              f"{_pct((f['unknown'] or 0) + (f['not_sure'] or 0))}, right among the 3 candidates "
              f"{_pct(f['among_candidates'])}; never-sent fruits ({f['never_sent_photos']} photos) refused "
              f"{_pct(f['never_sent_refused'])}{share_interval(f['never_sent_refused'], f['never_sent_photos'])}")
        if name.startswith("fruits360") and lab_film_seen():
            print("          (the model's fine-tuning saw other frames of this lab film: docs/benchmarks.md has lab "
                  "figures on a film it never saw)")
    print(f"wall:     {wall:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
