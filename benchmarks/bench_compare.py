"""Edge versus cloud: the two ways of getting vectors into the PCA job, on the same photos and model, in one
run on this machine, with a cost model per million images.

    ./run bench compare [--thumbs 1000] [--phone 40] [--pca-sizes 10000,50000,100000] [--reuse-pca]
                        [--reuse-incremental]

- edge:  ``vectorize`` on the device (2 threads) + upload of the vectors (zstd Parquet, conditional PUTs);
- cloud: upload of the raw photos + Spark featurization (local[2], pandas UDF, same TFLite model).
Both against a local S3 server (moto, in this process) whose HTTP requests are counted, Spark's included.
Photos: 100x100 thumbnails (Fruits-360-like) and 12-megapixel phone photos (synthesized at that size).

Costs per million images use the measured rates and bootstrap/prices.json (the team's billed EC2/EMR
prices; S3 list prices). The PCA cost as N grows comes from ``bench_pca.py`` (10k, 50k, 100k measured;
1M and 100M extrapolated from the measured slope and marked so), the daily refresh (incremental against full
refit) from ``bench_incremental.py``. Output: ``out/benchmarks/compare.{csv,
json,md,html}`` with tables and plots.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

from common import Recorder
from demo.s3server import TEST_CREDENTIALS, LocalS3, prefix_bytes

BUCKET = "bench-compare"
VCPUS = 4                     # m5.xlarge
CORES_HERE = 2


class RequestLog(logging.Handler):
    """Counts the local S3 server's HTTP requests (werkzeug's access log), by method and top-level prefix."""

    LINE = re.compile(r'"([A-Z]+) /([^ ?]*)')

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.counts: Counter = Counter()

    def emit(self, record):
        m = self.LINE.search(record.getMessage())
        if m:
            method, path = m.groups()
            parts = path.split("/")
            self.counts[(method, parts[2] if len(parts) > 2 else "")] += 1

    def take(self) -> Counter:
        out, self.counts = self.counts, Counter()
        return out


def make_phone_photos(root: Path, n: int, seed: int = 11) -> Path:
    from models.synthetic import CLASSES, phone_photo

    rng = np.random.RandomState(seed)
    for i in range(n):
        fruit = CLASSES[i % len(CLASSES)]
        d = root / "Training" / fruit.name
        d.mkdir(parents=True, exist_ok=True)
        phone_photo(rng, fruit).save(d / f"{i}_12mp.jpg", quality=90)
    return root / "Training"


def measure_kind(kind: str, photos_root: Path, tmp: Path, server, log: RequestLog, spark, model: Path) -> list[dict]:
    """Edge and cloud paths on one set of photos; returns two measurement rows."""
    from cloud_pca.featurize import featurize
    from featurizer.preprocess import preprocess
    from edge_client.manifest import Manifest
    from edge_client.upload import s3_client, upload_raw, upload_vectors
    from edge_client.vectorize import find_photos, vectorize

    photos = find_photos([photos_root])
    n = len(photos)
    sizes = [p.path.stat().st_size for p in photos]
    client = s3_client(endpoint_url=server.endpoint_url)
    root = f"{kind}"
    sample = [p.path.read_bytes() for p in photos[: min(n, 30)]]
    t = time.perf_counter()
    for data in sample:
        preprocess(data, 160)
    decode_ms = (time.perf_counter() - t) / len(sample) * 1e3

    # edge: vectorize on the "device", upload the vectors
    log.take()
    out = tmp / f"{kind}.parquet"
    t = time.perf_counter()
    vs = vectorize(photos, out, model_path=model, threads=CORES_HERE, progress=False)
    us = upload_vectors(client, [out], BUCKET, root, manifest=Manifest(tmp / f"{kind}-edge.sqlite"),
                        endpoint_url=server.endpoint_url, progress=False)
    edge_wall = time.perf_counter() - t
    edge_req = log.take()
    edge = {"measure": "path", "kind": kind, "path": "edge", "images": n, "median_photo_bytes": statistics.median(sizes),
            "decode_preprocess_ms": round(decode_ms, 2),
            "bytes_sent_per_image": us.bytes_put / n,
            "bytes_stored_per_image": prefix_bytes(client, BUCKET, f"{root}/vectors/")[1] / n,
            **request_rates(edge_req, n), "images_per_s_per_core": vs.ok / vs.seconds / CORES_HERE,
            "wall_s": edge_wall, "compute_s": vs.seconds}

    # cloud: upload the photos, featurize them in Spark (cold = first run, warm = second)
    t = time.perf_counter()
    rs = upload_raw(client, photos, BUCKET, root, manifest=Manifest(tmp / f"{kind}-raw.sqlite"),
                    client_id="bench-phone", endpoint_url=server.endpoint_url, progress=False)
    upload_s = time.perf_counter() - t
    up_req = log.take()
    uri = f"s3a://{BUCKET}/{root}/raw/"
    t = time.perf_counter()
    feat = featurize(spark, uri, model_path=str(model))
    cold_s = time.perf_counter() - t
    feat_req = log.take()
    assert feat.counts["ok"] == n, feat.counts
    feat.unpersist()
    t = time.perf_counter()
    featurize(spark, uri, model_path=str(model)).unpersist()
    warm_s = time.perf_counter() - t
    log.take()
    # The same photos from local disk: the featurization's own rate. The local S3 server (moto, in this
    # process, one request at a time) is slower than S3 is for a cluster, so this rate prices EMR.
    featurize(spark, str(photos_root), model_path=str(model)).unpersist()
    t = time.perf_counter()
    featurize(spark, str(photos_root), model_path=str(model)).unpersist()
    local_s = time.perf_counter() - t
    cloud = {"measure": "path", "kind": kind, "path": "cloud", "images": n,
             "median_photo_bytes": statistics.median(sizes), "decode_preprocess_ms": round(decode_ms, 2),
             "bytes_sent_per_image": rs.bytes_put / n,
             "bytes_stored_per_image": (prefix_bytes(client, BUCKET, f"{root}/raw/")[1] + n * edge["bytes_stored_per_image"]) / n,
             **request_rates(up_req + feat_req, n),
             "images_per_s_per_core": n / local_s / CORES_HERE,
             "images_per_s_per_core_via_local_s3": n / warm_s / CORES_HERE,
             "images_per_s_per_core_via_local_s3_cold": n / cold_s / CORES_HERE,
             "wall_s": upload_s + cold_s, "compute_s": local_s}
    return [edge, cloud]


def request_rates(counts: Counter, n: int) -> dict:
    put = sum(v for (method, _), v in counts.items() if method in ("PUT", "POST", "DELETE"))
    total = sum(counts.values())
    return {"s3_requests_per_1000": total / n * 1000, "put_class_per_1000": put / n * 1000,
            "get_class_per_1000": (total - put) / n * 1000}


def cost_per_million(row: dict, prices: dict) -> list[dict]:
    """Per million images of this kind and path, for each region and market."""
    s3 = prices["s3"]
    m = 1_000_000
    out = []
    for region in ("eu-west-3", "us-east-1"):
        for market in ("on_demand", "spot"):
            ec2 = prices["ec2_on_demand_per_hour" if market == "on_demand" else "ec2_spot_per_hour"]["m5.xlarge"][region]
            fee = prices["emr_fee_per_hour"]["m5.xlarge"][region]
            if row["path"] == "edge":
                hours = 0.0   # vectorized on the devices: their compute is not on our bill
            else:
                hours = m / (row["images_per_s_per_core"] * VCPUS) / 3600
            puts = row["put_class_per_1000"] * 1000   # PUT, POST, DELETE
            gets = row["get_class_per_1000"] * 1000   # GET, HEAD (LIST priced as GET: few, a slight underestimate)
            out.append({
                "measure": "cost_per_million", "kind": row["kind"], "path": row["path"], "region": region,
                "market": market, "upload_gb": row["bytes_sent_per_image"] * m / 1e9,
                "upload_usd": row["bytes_sent_per_image"] * m / 1e9 * s3["transfer_in_per_gb"],
                "storage_usd_month": row["bytes_stored_per_image"] * m / 1e9 * s3["storage_per_gb_month"],
                "requests_usd": puts / 1000 * s3["put_per_1000"] + gets / 1000 * s3["get_per_1000"],
                "emr_instance_hours": hours, "emr_usd": hours * (ec2 + fee),
            })
            out[-1]["total_usd"] = out[-1]["upload_usd"] + out[-1]["storage_usd_month"] + out[-1]["requests_usd"] \
                + out[-1]["emr_usd"]
    return out


def pca_costs(pca_rows: list[dict], prices: dict) -> list[dict]:
    """The PCA job's cost at the sizes bench_pca measured (local[2]), and at 1M and 100M rows extrapolated linearly
    from the largest measured size (marked so)."""
    out = []
    price = prices["ec2_on_demand_per_hour"]["m5.xlarge"]["eu-west-3"] + prices["emr_fee_per_hour"]["m5.xlarge"]["eu-west-3"]
    measured = [r for r in pca_rows if r.get("measure") == "job" and r.get("mode") == "local" and r.get("seconds")]

    def row(n, seconds, extrapolated):
        core_s = seconds * CORES_HERE
        return {"measure": "pca_cost", "n": int(n), "solver": "gram (the job)", "seconds_2_cores": float(seconds),
                "extrapolated": extrapolated, "m5_xlarge_hours": core_s / VCPUS / 3600,
                "usd_eu_west_3_on_demand": core_s / VCPUS / 3600 * price}

    for r in measured:
        out.append(row(r["n"], float(r["seconds"]), False))
    if measured:
        big = max(measured, key=lambda r: r["n"])
        for n in (1_000_000, 100_000_000):
            if n > big["n"]:
                out.append(row(n, float(big["seconds"]) * n / big["n"], True))
    return out


def plots(rows: list[dict], costs: list[dict]) -> list[tuple[str, bytes]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cloud_pca.plots import png

    pngs = []
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    kinds = sorted({r["kind"] for r in rows}, reverse=True)
    for ax, key, title in ((axes[0], "bytes_sent_per_image", "bytes uploaded per image"),
                           (axes[1], "images_per_s_per_core", "images/s per core (vectorization)")):
        x = np.arange(len(kinds))
        for i, (path, color) in enumerate((("edge", "#2a7ab0"), ("cloud", "#d9822b"))):
            vals = [next(r[key] for r in rows if r["kind"] == k and r["path"] == path) for k in kinds]
            ax.bar(x + (i - 0.5) * 0.38, vals, 0.38, label=path, color=color)
        ax.set_xticks(x, kinds)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.legend()
    pngs.append(("bytes_and_throughput.png", png(fig)))

    fig, ax = plt.subplots(figsize=(10, 4))
    sel = [c for c in costs if c["region"] == "eu-west-3"]
    labels = [f"{c['kind']}\n{c['path']} {c['market'].replace('_', '-')}" for c in sel]
    bottom = np.zeros(len(sel))
    for key, color in (("storage_usd_month", "#88b04b"), ("requests_usd", "#955251"), ("emr_usd", "#d9822b")):
        vals = np.array([c[key] for c in sel])
        ax.bar(labels, vals, bottom=bottom, label=key, color=color)
        bottom += vals
    ax.set_ylabel("USD per million images (eu-west-3)")
    ax.set_title("cost per million images: storage (1 month) + requests + EMR featurization")
    ax.legend()
    pngs.append(("cost_per_million.png", png(fig)))
    return pngs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--thumbs", type=int, default=1000, help="100x100 thumbnails")
    ap.add_argument("--phone", type=int, default=40, help="12-megapixel phone photos")
    ap.add_argument("--pca-sizes", default="10000,50000,100000")
    ap.add_argument("--reuse-pca", action="store_true", help="use out/benchmarks/pca.json from an earlier run")
    ap.add_argument("--reuse-incremental", action="store_true",
                    help="use out/benchmarks/incremental.json (bench_incremental.py) from an earlier run")
    ap.add_argument("--smoke", action="store_true", help="10 thumbnails, 1 phone photo, the PCA and refresh "
                                                            "benchmarks' smoke sizes: that it runs and writes its results")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "benchmarks")
    args = ap.parse_args()
    smoke = ["--smoke"] if args.smoke else []
    if args.smoke:
        args.thumbs, args.phone = 10, 1
    for k, v in TEST_CREDENTIALS.items():  # the local server takes any; never real credentials
        os.environ[k] = v
    from bootstrap.emr import load_prices
    from cloud_pca.spark import get_spark
    from cloud_pca.report import Report
    from models.synthetic import generate
    from models import model_path

    prices = load_prices()
    model = model_path()
    rec = Recorder("compare", args.out)
    started = time.perf_counter()
    log = RequestLog()
    with tempfile.TemporaryDirectory(prefix="fruits-bench-compare-") as tmp_name, LocalS3(mode="thread") as server:
        wz = logging.getLogger("werkzeug")
        wz.setLevel(logging.INFO)
        wz.handlers = [log]   # count the access log instead of printing it
        wz.propagate = False
        tmp = Path(tmp_name)
        spark = get_spark("fruits-bench-compare", master="local[2]", s3_endpoint=server.endpoint_url)
        import boto3

        boto3.client("s3", endpoint_url=server.endpoint_url, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        rows = []
        print(f"photos: {args.thumbs} thumbnails, {args.phone} phone photos (12 MP); model {model.name}", flush=True)
        thumbs = generate(tmp / "thumbs", per_class=max(1, args.thumbs // 10), n_classes=10, seed=21)
        rows += measure_kind("thumbnail", thumbs, tmp, server, log, spark, model)
        print("  thumbnails measured", flush=True)
        phone = make_phone_photos(tmp / "phone", args.phone)
        rows += measure_kind("phone_12mp", phone, tmp, server, log, spark, model)
        print("  phone photos measured", flush=True)
        spark.stop()

    pca_json = args.out / "pca.json"
    if not args.reuse_pca or not pca_json.exists():
        print(f"PCA scaling ({args.pca_sizes}); several minutes", flush=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_pca.py"), "--sizes", args.pca_sizes,
                        "--modes", "local", "--out", str(args.out), *smoke], check=True)
    pca_rows = json.loads(pca_json.read_text())
    inc_json = args.out / "incremental.json"
    if not args.reuse_incremental or not inc_json.exists():
        print("daily refresh, incremental against full (bench_incremental.py); several minutes", flush=True)
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_incremental.py"), "--out", str(args.out),
                        *smoke], check=True)
    refresh = [r for r in json.loads(inc_json.read_text()) if r["measure"] in ("daily_refresh", "daily_refresh_cost")]

    costs = [c for r in rows for c in cost_per_million(r, prices)]
    pcas = pca_costs(pca_rows, prices)
    for r in rows + costs + pcas + refresh:
        rec.add(**{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()})
    csv_path = rec.save()

    table = [{"photos": r["kind"], "path": r["path"], "median photo B": int(r["median_photo_bytes"]),
              "decode ms": r["decode_preprocess_ms"],
              "sent B/img": round(r["bytes_sent_per_image"]), "stored B/img": round(r["bytes_stored_per_image"]),
              "S3 req/1000": round(r["s3_requests_per_1000"], 1),
              "img/s/core": round(r["images_per_s_per_core"], 1),
              "img/s/core via local S3": round(r.get("images_per_s_per_core_via_local_s3", r["images_per_s_per_core"]), 1),
              "wall s": round(r["wall_s"], 1)} for r in rows]
    ratios = []
    for kind in ("thumbnail", "phone_12mp"):
        e = next(r for r in rows if r["kind"] == kind and r["path"] == "edge")
        c = next(r for r in rows if r["kind"] == kind and r["path"] == "cloud")
        ratios.append({"photos": kind, "upload bytes cloud/edge": round(c["bytes_sent_per_image"] / e["bytes_sent_per_image"], 1),
                       "S3 requests cloud/edge": round(c["s3_requests_per_1000"] / e["s3_requests_per_1000"], 1),
                       "per-core rate edge/cloud": round(e["images_per_s_per_core"] / c["images_per_s_per_core"], 2)})
    cost_table = [{"photos": c["kind"], "path": c["path"], "region": c["region"], "market": c["market"],
                   "upload GB": round(c["upload_gb"], 2), "storage $/month": round(c["storage_usd_month"], 3),
                   "requests $": round(c["requests_usd"], 3), "EMR h": round(c["emr_instance_hours"], 2),
                   "EMR $": round(c["emr_usd"], 2), "total $": round(c["total_usd"], 2)} for c in costs]
    pca_table = [{"N": p["n"], "solver": p["solver"], "seconds (2 cores)": round(p["seconds_2_cores"], 1),
                  "m5.xlarge h": round(p["m5_xlarge_hours"], 4), "$ eu-west-3": round(p["usd_eu_west_3_on_demand"], 4),
                  "": "EXTRAPOLATED" if p["extrapolated"] else "measured"} for p in pcas]

    refresh_measured = [{"existing N": r["existing"], "new": r["new"], "incremental s": r["incremental_s"],
                         "full refit s": r["full_s"], "incremental / full": r["ratio"],
                         "MB read incremental": round(r["incremental_bytes_read"] / 1e6, 1),
                         "MB read full": round(r["full_bytes_read"] / 1e6, 1)}
                        for r in refresh if r["measure"] == "daily_refresh"]
    refresh_cost = [{"vectors": f"{r['vectors']:,}", "new a day": f"{r['new_per_day']:,}", "mode": r["mode"],
                     "seconds (2 cores)": r["seconds_on_2_cores"], "m5.xlarge h": r["m5_xlarge_hours"],
                     "$ a day (compute)": r["usd_compute"], "$ a day (transient cluster)": r["usd_with_cluster_setup"],
                     "": "EXTRAPOLATED"} for r in refresh if r["measure"] == "daily_refresh_cost"]

    print()
    for t in (table, ratios, refresh_cost):
        cols = list(t[0])
        print(" | ".join(cols))
        for r in t:
            print(" | ".join(str(r[c]) for c in cols))
        print()

    page = Report("Fruits!: edge vectorization versus cloud featurization",
                  f"one run on this machine ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}; "
                  f"model {model.name}; local S3 (moto) with every HTTP request counted")
    page.heading("Headline ratios (same photos, same model, same run)")
    page.table(ratios)
    page.heading("Measurements")
    page.table(table)
    page.text("sent: bytes PUT to S3 per image; stored: what stays in S3 per image (cloud path: the photo plus the "
              "vector the featurization writes); img/s/core: vectorization rate per core (edge: vectorize with 2 "
              "threads; cloud: warm Spark featurization on local[2] of the same photos on local disk); via local S3: "
              "the cloud path reading through s3a:// from the local moto server, which serves one request at a "
              "time in this process and is the bottleneck here; wall: vectorize+upload (edge) or "
              "upload+cold featurization through s3a:// (cloud).", note=True)
    page.images(plots(rows, costs) + ([("pca.png", (args.out / "pca.png").read_bytes())]
                                      if (args.out / "pca.png").exists() else []))
    page.heading("Cost per million images")
    page.table(cost_table)
    page.text(f"Prices: bootstrap/prices.json (EC2/EMR: the team's billed m5.xlarge prices; S3: list prices). "
              f"EMR hours = 1M / (measured img/s per core x {VCPUS} vCPU of an m5.xlarge), assuming one m5.xlarge "
              f"vCPU does what one core here does; device compute is not on our bill; S3 transfer in is free. "
              f"Requests: the counted PUT/POST at the PUT price, GET/HEAD at the GET price.", note=True)
    page.heading("PCA cost as N grows (same for both paths)")
    page.table(pca_table)
    page.text("Measured on 2 cores here (bench_pca.py); 1M and 100M rows are a linear extrapolation of the measured "
              "slope, marked EXTRAPOLATED; m5.xlarge hours = core-seconds / 4 vCPU.", note=True)
    page.heading("Daily refresh: incremental PCA against a full refit (same for both paths)")
    page.table(refresh_measured)
    page.table(refresh_cost)
    page.text("Measured in one Spark session, local[2] (bench_incremental.py): the incremental run reads the new "
              "file's features and the counted image ids only. 1M and 100M are EXTRAPOLATED: full = a + b*N fitted "
              "on the measured sizes; incremental = its measured time plus the id scan's slope; m5.xlarge hours = "
              "core-seconds / 4 vCPU, eu-west-3 on demand + EMR fee; a transient cluster adds its setup time. "
              "`fruits-cloud emr plan --new-per-day N` prints the same comparison for a chosen cluster.", note=True)
    from bootstrap.emr import ClusterSpec
    from bootstrap.serverless import cost_table as serverless_table

    side = serverless_table(ClusterSpec(bucket="fruits-data", images=True, incremental=True, evaluate=True,
                                        publish_k=32), new_per_day=50_000)
    head = [c.strip() for c in side[0].strip("|").split("|")]
    side_rows = [dict(zip(head, (c.strip() for c in line.strip("|").split("|")))) for line in side[2:]]
    page.heading("Daily refresh: transient EMR cluster against EMR Serverless (ESTIMATED)")
    page.table(side_rows)
    page.text("fruits-cloud emr plan / emr serverless plan print the same table: list prices from "
              "bootstrap/prices.json (dated, ESTIMATED), the dev machine's per-vCPU rates extrapolated; each chain "
              "runs featurize -> pca -> evaluate -> publish -> report. A transient cluster pays ~15 min of setup "
              "every day; EMR Serverless bills job runs per second (1-minute minimum per worker).", note=True)
    print("\n".join(side))
    html_path = page.write(args.out / "compare.html", markdown=True)
    print(f"wrote {csv_path}, {html_path}, {html_path.with_suffix('.md')} in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
