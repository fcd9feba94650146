"""The manual's pictures, made from the real things (never drawn by hand), so that they stay true when the code changes:

- ``architecture.png``: who writes and reads each area of the bucket, from the layout table every policy is generated
  from (``contract.layout.AREAS``), and the daily chain's jobs (``bootstrap.emr.job_chain``);
- ``phone-<engine>-<lang>.png``: the web app at a phone's size in Chromium, Firefox and WebKit, in English and French,
  answering a real photo from a projection, index and catalog published on this machine by the real chain (pca,
  publish) from the project's photos, through the local S3 and Cognito server;
- ``report-3d.png``: the report's 3-D view of the photos (``fruits-cloud report`` on that run), in Chromium.

    ./run docs pictures [--engines chromium,firefox,webkit] [--only architecture]

Written into ``docs/img/``.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
IMG = ROOT / "docs" / "img"
PHONE = {"width": 390, "height": 844}


def architecture(out: Path) -> Path:
    """Boxes for the writers and readers of the layout table, the bucket's areas between them, arrows as the table
    says (who writes, who reads), the chain's jobs inside the cloud job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    from bootstrap.emr import ClusterSpec, job_chain
    from contract.layout import AREAS, DEVICE, EMR, OPERATOR

    areas = [a for a in AREAS if a.name not in ("logs", "bootstrap", "code")]
    fig, ax = plt.subplots(figsize=(11, 6.2), dpi=110)
    ax.set_xlim(0, 11)
    ax.set_ylim(0, 6.2)
    ax.axis("off")

    def box(x, y, w, h, title, lines=(), color="#e8f1e6", size=10.5):
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.12", fc=color,
                                    ec="#2f7d32", lw=1.2))
        ax.text(x + w / 2, y + h - 0.12, title, ha="center", va="top", fontsize=size, weight="bold", color="#1d2a1e")
        for i, line in enumerate(lines):
            ax.text(x + w / 2, y + h - 0.42 - i * 0.24, line, ha="center", va="top", fontsize=8.2, color="#33443a")
        return (x, y, w, h)

    devices = box(0.2, 3.5, 2.6, 2.4, "Devices", ["phones: the web app", "(LiteRT.js in the page)",
                                                   "laptops, Raspberry Pi:", "fruits-edge (LiteRT)",
                                                   "one .tflite, one fingerprint"])
    operator = box(0.2, 0.4, 2.6, 2.0, "Operator", ["fruits-cloud emr launch,", "catalog publish,",
                                                     "contributions, accept", "(the policies it generates)"],
                   color="#f3f1e6")
    chain = [s.name.replace("fruits: ", "") for s in job_chain(ClusterSpec(bucket="b", prefix="p", images=True,
                                                                             incremental=True, publish_k=32))]
    emr = box(8.2, 1.6, 2.6, 3.6, "Spark job (EMR)", ["the daily chain:", *chain])
    ys = [5.0 - i * (4.4 / max(1, len(areas) - 1)) for i in range(len(areas))]
    centers = {}
    for a, y in zip(areas, ys):
        doc = a.doc.split(";")[0].split(":")[0]
        doc = doc if len(doc) <= 48 else doc[:48].rsplit(" ", 1)[0] + "…"
        centers[a.name] = box(3.6, y - 0.33, 3.8, 0.7, f"{a.globs[0].split('/')[0]}/  ({a.name})", [doc],
                              color="#ffffff", size=9.5)
    who = {DEVICE: devices, EMR: emr, OPERATOR: operator}

    def arrow(src, dst, color, style="-|>"):
        (x1, y1, w1, h1), (x2, y2, w2, h2) = src, dst
        start = (x1 + w1, y1 + h1 / 2) if x1 < x2 else (x1, y1 + h1 / 2)
        end = (x2, y2 + h2 / 2) if x1 < x2 else (x2 + w2, y2 + h2 / 2)
        ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color, lw=1.0,
                                     alpha=0.75, connectionstyle="arc3,rad=0.04"))

    for a in areas:
        for w in a.writers:
            arrow(who[w], centers[a.name], "#2f7d32")
        for r in a.readers:
            if r in who and r not in a.writers:
                arrow(centers[a.name], who[r], "#a4580b")
    ax.text(0.2, 6.05, "writes", color="#2f7d32", fontsize=9, weight="bold")
    ax.text(0.9, 6.05, "reads", color="#a4580b", fontsize=9, weight="bold")
    ax.text(1.55, 6.05, "(from contract/layout.py's table, which the IAM and bucket policies are generated from)",
            fontsize=8.2, color="#5d6b5e")
    fig.tight_layout()
    fig.savefig(out, facecolor="white")
    plt.close(fig)
    return out


def published_root(tmp: Path) -> tuple[Path, object]:
    """The project's lab and shop training photos, vectorized by the Python edge, fitted (pca) and published with the
    catalog, as the daily chain does: (the root, the projection)."""
    from cloud_pca.catalog import seed_bytes
    from cloud_pca.job import JobConfig, run
    from cloud_pca.publish import publish
    from cloud_pca.spark import get_spark
    from edge_client.vectorize import find_photos, vectorize
    from models import model_path

    (tmp / "in").mkdir(parents=True)
    vectorize(find_photos([ROOT / "data" / "fruits360" / "Training", ROOT / "data" / "grocery" / "train"]),
              tmp / "in" / "v.parquet", model_path=model_path(), progress=False, client_id="operator-pictures")
    spark = get_spark("fruits-pictures", master="local[2]")
    try:
        result = run(spark, JobConfig(inputs=[f"file://{tmp}/in"], output=f"file://{tmp}/root/pca", variance=0.95,
                                      run_id="pictures", plots=False))
        (tmp / "root" / "models").mkdir(parents=True, exist_ok=True)
        (tmp / "root" / "models" / "catalog.json").write_bytes(seed_bytes())
        done = publish(spark, result.run_uri, f"file://{tmp}/root", k=min(32, result.summary["k"]))
        from cloud_pca.report import write_report

        write_report(spark, result.run_uri, str(tmp / "report.html"))
    finally:
        spark.stop()
    return tmp / "root", done.projection


def phones(root: Path, projection, engines: list[str], photo: Path, lang_photos: dict) -> list[Path]:
    """The app at a phone's size in each engine and language, answering ``photo``."""
    import os

    import boto3

    from bootstrap.policies import bucket_cors
    from demo.s3server import TEST_CREDENTIALS, LocalS3
    from web.build import build
    from web.device import browser
    from web.server import WebServer, page_config

    written = []
    os.environ.update(TEST_CREDENTIALS, AWS_EC2_METADATA_DISABLED="true")   # the local server takes any; never real ones
    with LocalS3(mode="process") as s3server:
        s3 = boto3.client("s3", endpoint_url=s3server.endpoint_url, region_name="us-east-1")
        s3.create_bucket(Bucket="pictures")
        for f in (root / "models").iterdir():
            s3.put_object(Bucket="pictures", Key=f"team/models/{f.name}", Body=f.read_bytes())
        pool = boto3.client("cognito-identity", endpoint_url=s3server.endpoint_url, region_name="us-east-1") \
            .create_identity_pool(IdentityPoolName="pictures", AllowUnauthenticatedIdentities=True)["IdentityPoolId"]
        config = page_config(bucket="pictures", prefix="team", identity_pool=pool, endpoint_url=s3server.endpoint_url)
        with WebServer(build(), config) as server:
            s3.put_bucket_cors(Bucket="pictures", CORSConfiguration=bucket_cors([server.url.rstrip("/")]))
            for engine in engines:
                with tempfile.TemporaryDirectory() as profile, browser(engine, profile, viewport=PHONE) as b:
                    for lang in ("en", "fr"):
                        phone = b.open(server.url)
                        phone.evaluate("(l) => { const s = document.getElementById('lang'); s.value = l; "
                                       "s.dispatchEvent(new Event('change')); }", lang)
                        assert phone.wait_published() == projection.projection_id
                        phone.pick([lang_photos.get(lang, photo)])
                        phone.wait_for("!document.getElementById('take').disabled", 60, "the pick to finish")
                        out = IMG / f"phone-{engine}-{lang}.png"
                        phone.screenshot(out, full_page=False)
                        written.append(out)
                        phone.close()
    return written


def report_3d(report: Path) -> Path:
    """The report's 3-D view, in Chromium."""
    from web.device import browser

    out = IMG / "report-3d.png"
    with tempfile.TemporaryDirectory() as profile, browser("chromium", profile,
                                                           viewport={"width": 1000, "height": 760}) as b:
        page = b.open(report.resolve().as_uri(), timeout_s=60, ready=False)
        page.wait_for("document.getElementById('pca3d') && document.getElementById('pca3d').data", 60, "the 3-D view")
        page.evaluate("() => document.getElementById('pca3d').scrollIntoView({block: 'start'})")
        time.sleep(2)   # WebGL draws after the layout settles
        page.screenshot(out, full_page=False)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engines", default="chromium,firefox,webkit")
    ap.add_argument("--only", choices=("architecture", "phones", "report"))
    args = ap.parse_args(argv)
    IMG.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "architecture"):
        print(architecture(IMG / "architecture.png"))
    if args.only == "architecture":
        return 0
    with tempfile.TemporaryDirectory(prefix="fruits-pictures-") as t:
        root, projection = published_root(Path(t))
        if args.only in (None, "report"):
            print(report_3d(Path(t) / "report.html"))
        if args.only in (None, "phones"):
            kaki = sorted((ROOT / "data" / "fruits360" / "Test" / "Kaki").iterdir())[0]
            shop = sorted((ROOT / "data" / "grocery" / "val" / "Mango").iterdir())[0]
            for out in phones(root, projection, args.engines.split(","), kaki, {"fr": kaki, "en": shop}):
                print(out)
            shutil.copy(IMG / "phone-chromium-fr.png", IMG / "phone-fr.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
